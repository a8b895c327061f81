//! Files that travel with orders (issue 14, `order --file`): the Boss keeps
//! one sealed copy under `files/orders/`, the agent downloads it over v2
//! (`G`/`B`, then `N`) into `received/`, sealed, resuming from its own
//! synced offset, and hands the plaintext out only after every tag and the
//! SHA-256 check (`orders --save`). Real binary, real TCP, separate homes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use spyctl::net::protocol::ErrorCode;
use spyctl::net::v2::Frame;
use spyctl::net::v2_client::V2Client;

use crate::identities::{AGENT, count, enroll, enrolled, join, one_line};
use crate::resume_files::{AtLimit, proxy};
use crate::support::*;

/// Written all through every test file: found nowhere it must not be.
const MARKER: &[u8] = b"ORDER-FILE-PLAINTEXT-MARKER";
/// The file's name: it travels sealed, so it must not appear either.
const NAME: &str = "operation-nightjar-NAMEMARKER.bin";

/// A scratch directory (outside every home) holding a file of `len` bytes,
/// the marker written every 4 KiB.
fn source(scratch: &TestHome, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut data = random_bytes(len, seed);
    for at in (0..len.saturating_sub(MARKER.len())).step_by(4096) {
        data[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    let path = scratch.path().join(NAME);
    std::fs::write(&path, &data).expect("write the source");
    (path, data)
}

fn json(out: std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).expect("json")
}

fn order_with_file(home: &TestHome, target: &[&str], file: &Path) -> Value {
    let mut args = vec!["--json", "order", "--file", file.to_str().expect("utf-8")];
    args.extend_from_slice(target);
    json(home.run(&args))
}

fn fetch(agent: &TestHome, addr: &str) -> Value {
    json(agent.run(&["--json", "orders", "--addr", addr]))
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if meta.is_file() && file_contains(&path, needle) {
            found.push(path);
        }
    }
    found
}

fn save(agent: &TestHome, order: &str, out: &Path) -> std::process::Output {
    agent.run(&["orders", "--save", order, "--out", out.to_str().expect("utf-8")])
}

#[test]
fn a_file_travels_with_an_order_sealed_at_both_ends_and_saves_byte_for_byte() {
    let (home, boss, agent) = enrolled();
    let scratch = TestHome::new();
    let (path, data) = source(&scratch, 300_000, 41);
    let queued = order_with_file(&home, &[&AGENT.to_string(), "Read this, then burn it"], &path);
    let order = queued["queued"][0]["order"].as_str().expect("order id").to_string();
    assert_eq!(queued["file"]["size"], data.len(), "{queued}");
    assert_eq!(queued["file"]["name"], NAME, "{queued}");
    assert_eq!(count(&home, "SELECT count(*) FROM OrderFiles"), 1);
    assert_eq!(files_containing(home.path(), MARKER), Vec::<PathBuf>::new(), "the Boss's copy is sealed");
    let got = fetch(&agent, &boss.addr);
    assert_eq!(got["files"][0]["state"], "complete", "{got}");
    assert_eq!(got["files"][0]["name"], NAME, "{got}");
    assert_eq!(got["files"][0]["download"]["bytes_fetched"], data.len(), "{got}");
    assert_eq!(count(&home, "SELECT count(*) FROM OrderAttachments WHERE DeliveredAt IS NOT NULL"), 1, "N recorded");
    let out = scratch.path().join("saved.bin");
    ok(save(&agent, &order, &out));
    assert_eq!(std::fs::read(&out).expect("saved"), data, "the plaintext out is the file in");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777, 0o600);
    let again = one_line(save(&agent, &order, &out));
    assert!(again.contains("refusing to overwrite"), "{again}");
    assert_eq!(std::fs::read(&out).expect("saved"), data, "left as it was");
    // Listed offline with its state, and nothing fetched twice.
    let listed = json(agent.run(&["--json", "orders", "--offline"]));
    assert_eq!(listed["files"][0]["state"], "complete", "{listed}");
    let second = fetch(&agent, &boss.addr);
    assert!(second["files"][0]["download"].is_null(), "a complete, acknowledged file is not fetched again: {second}");
    boss.stop();
    // Nothing of the file, or its name, in plaintext anywhere in either home.
    for (needle, what) in [(MARKER, "the file's bytes"), (NAME.as_bytes(), "the file's name")] {
        assert_eq!(files_containing(home.path(), needle), Vec::<PathBuf>::new(), "{what} in the Boss's home");
        assert_eq!(files_containing(agent.path(), needle), Vec::<PathBuf>::new(), "{what} in the agent's home");
    }
    assert!(home.path().join("files/orders").read_dir().expect("files/orders").count() == 1);
}

#[test]
fn a_download_cut_midway_resumes_from_the_agents_offset_and_refetches_at_most_one_window() {
    let (home, boss, agent) = enrolled();
    let scratch = TestHome::new();
    let (path, data) = source(&scratch, 8 << 20, 42);
    let queued = order_with_file(&home, &[&AGENT.to_string()], &path);
    let order = queued["queued"][0]["order"].as_str().expect("order id").to_string();
    // Towards the Boss, a download is small frames: the handshake (~190
    // bytes), O and K (~110), then ~107 bytes per G. 1,200 bytes cut the
    // first connection after about eight windows of the eighteen.
    let cut = proxy(&boss.addr, 1_200, AtLimit::Cut);
    let got = fetch(&agent, &cut);
    let download = &got["files"][0]["download"];
    assert_eq!(got["files"][0]["state"], "complete", "{got}");
    assert!(download["interruptions"].as_u64().is_some_and(|n| n >= 1), "{got}");
    let fetched = download["bytes_fetched"].as_u64().expect("bytes_fetched");
    let window = 8 * 60 * 1024;
    eprintln!("cut download: {fetched} bytes fetched for a {} byte file", data.len());
    assert!(fetched <= (data.len() + window) as u64, "{fetched}: more than one window fetched twice");
    let out = scratch.path().join("saved.bin");
    ok(save(&agent, &order, &out));
    assert_eq!(std::fs::read(&out).expect("saved"), data);
    boss.stop();
}

/// Plaintext bytes a partial copy holds in whole segments (a 25-byte
/// header, then 4 + 61,440 + 16 bytes per full chunk), read from its size.
fn held(part: &Path) -> u64 {
    let len = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    len.saturating_sub(25) / (4 + 61_440 + 16) * 61_440
}

#[test]
fn a_download_resumes_after_a_kill_9_of_the_agent_and_of_the_boss() {
    let (home, boss, agent) = enrolled();
    let scratch = TestHome::new();
    let (path, data) = source(&scratch, 8 << 20, 47);
    let queued = order_with_file(&home, &[&AGENT.to_string()], &path);
    let order = queued["queued"][0]["order"].as_str().expect("order id").to_string();
    let file_id = queued["file"]["id"].as_str().expect("file id").to_string();
    let part = agent.path().join("received").join(format!("{file_id}.part"));
    // The proxy stops carrying the agent's frames after a few windows; the
    // download then waits (a long --timeout), and is killed there.
    let paused = proxy(&boss.addr, 1_200, AtLimit::Pause);
    let mut child = agent.cmd(&["--json", "orders", "--addr", &paused, "--timeout", "120"]).spawn().expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = (0, std::time::Instant::now());
    while std::time::Instant::now() < deadline {
        let now = held(&part);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if now > 0 && last.1.elapsed() > Duration::from_millis(700) {
            break;
        }
        assert!(child.try_wait().expect("try_wait").is_none(), "the download ended before the pause");
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::resume_files::kill9(&mut child);
    let after_agent_kill = held(&part);
    assert!(after_agent_kill > 0 && after_agent_kill < data.len() as u64, "{after_agent_kill}");
    let listed = json(agent.run(&["--json", "orders", "--offline"]));
    let state = format!("partial {after_agent_kill}/{} bytes", data.len());
    assert_eq!(listed["files"][0]["state"], state.as_str(), "{listed}");
    // The Boss killed too, and started again on a new port.
    boss.kill9();
    let boss = home.boss(&[]);
    let got = fetch(&agent, &boss.addr);
    let download = &got["files"][0]["download"];
    assert_eq!(got["files"][0]["state"], "complete", "{got}");
    assert_eq!(download["resumed_from"], after_agent_kill, "resumed from the agent's own durable offset: {got}");
    assert_eq!(download["bytes_fetched"], data.len() as u64 - after_agent_kill, "nothing held fetched again: {got}");
    let out = scratch.path().join("saved.bin");
    ok(save(&agent, &order, &out));
    assert_eq!(std::fs::read(&out).expect("saved"), data);
    boss.stop();
}

#[test]
fn a_tampered_copy_in_the_agents_home_is_never_handed_out() {
    let (home, boss, agent) = enrolled();
    let scratch = TestHome::new();
    let (path, data) = source(&scratch, 200_000, 43);
    let queued = order_with_file(&home, &[&AGENT.to_string(), "Check this"], &path);
    let order = queued["queued"][0]["order"].as_str().expect("order id").to_string();
    let file_id = queued["file"]["id"].as_str().expect("file id").to_string();
    fetch(&agent, &boss.addr);
    let complete = agent.path().join("received").join(&file_id);
    let flip = |path: &Path, at: usize| {
        let mut raw = std::fs::read(path).expect("stored copy");
        raw[at] ^= 0x01;
        std::fs::write(path, raw).expect("tamper");
    };
    // The complete copy, one bit changed in the middle: refused, nothing written.
    flip(&complete, 100_000);
    let out = scratch.path().join("saved.bin");
    let said = one_line(save(&agent, &order, &out));
    assert!(said.contains("integrity"), "{said}");
    assert!(!out.exists(), "a tampered copy was handed out");
    assert_eq!(std::fs::read_dir(scratch.path()).expect("scratch").count(), 1, "no temporary left beside --out");
    // It was removed; the next `orders` fetches it again, whole.
    let again = fetch(&agent, &boss.addr);
    assert_eq!(again["files"][0]["state"], "complete", "{again}");
    ok(save(&agent, &order, &out));
    assert_eq!(std::fs::read(&out).expect("saved"), data);
    // A partial copy changed on disk: the download's final check fails, the
    // copy is discarded and fetched again once, and the result is right.
    std::fs::remove_file(&out).expect("rm");
    let part = agent.path().join("received").join(format!("{file_id}.part"));
    std::fs::rename(&complete, &part).expect("back to a partial");
    std::fs::remove_file(agent.path().join("received").join(format!("{file_id}.told"))).expect("rm told");
    flip(&part, 1_000);
    let redone = fetch(&agent, &boss.addr);
    assert_eq!(redone["files"][0]["download"]["restarts"], 1, "{redone}");
    ok(save(&agent, &order, &out));
    assert_eq!(std::fs::read(&out).expect("saved"), data, "only the checked copy is handed out");
    boss.stop();
}

#[test]
fn a_level_order_with_a_file_reaches_two_agents_from_one_stored_copy() {
    let (home, boss, agent) = enrolled();
    // Harry Palmer, AgentId 5, is the other sample agent at level 2.
    let second = TestHome::new();
    ok(join(&second, &enroll(&home, 5), &boss.addr));
    let scratch = TestHome::new();
    let (path, data) = source(&scratch, 150_000, 44);
    let queued = order_with_file(&home, &["--level", "2", "Both of you: read this"], &path);
    assert_eq!(queued["queued"].as_array().map(Vec::len), Some(2), "{queued}");
    assert_eq!(count(&home, "SELECT count(*) FROM OrderFiles"), 1, "one stored copy");
    assert_eq!(home.path().join("files/orders").read_dir().expect("dir").count(), 1);
    for (who, agent_id) in [(&agent, AGENT), (&second, 5)] {
        let got = fetch(who, &boss.addr);
        assert_eq!(got["files"][0]["state"], "complete", "{got}");
        let order = queued["queued"]
            .as_array()
            .expect("queued")
            .iter()
            .find(|q| q["agent"] == agent_id)
            .and_then(|q| q["order"].as_str())
            .expect("its order")
            .to_string();
        let out = scratch.path().join(format!("saved-{agent_id}.bin"));
        ok(save(who, &order, &out));
        assert_eq!(std::fs::read(&out).expect("saved"), data);
    }
    assert_eq!(count(&home, "SELECT count(*) FROM OrderAttachments WHERE DeliveredAt IS NOT NULL"), 2);
    // A file ordered to agent 6 alone is not agent 5's to download, even
    // with its id in hand.
    let (private, _) = source(&scratch, 1_000, 48);
    let only_six = order_with_file(&home, &[&AGENT.to_string()], &private);
    let file_id = only_six["file"]["id"].as_str().expect("file id");
    let five = spyctl::home::Home::at(second.path());
    let (me, pin) = (five.load_identity().expect("identity"), five.load_pin().expect("pin").expect("pinned"));
    let mut session =
        V2Client::connect(&boss.addr, Duration::from_secs(5), &me, &pin.boss().expect("keys"), 5).expect("v2");
    let ask = format!("{{\"file\":\"{file_id}\",\"offset\":0}}");
    session.write_frame(&Frame::GetFile(ask.into_bytes())).expect("write");
    match session.read_frame() {
        Ok(Frame::Error(code, _)) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("agent 5 got another agent's file: {other:?}"),
    }
    boss.stop();
}

#[test]
fn a_bad_file_is_one_clear_line_and_queues_nothing() {
    let (home, boss, _agent) = enrolled();
    let scratch = TestHome::new();
    let (real, _) = source(&scratch, 10, 45);
    let link = scratch.path().join("link.bin");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let empty = scratch.path().join("empty.bin");
    std::fs::write(&empty, b"").expect("empty");
    let missing = scratch.path().join("missing.bin");
    let agent = AGENT.to_string();
    for (file, says) in [
        (missing.as_path(), "no such file"),
        (scratch.path(), "not a regular file"),
        (link.as_path(), "symbolic link"),
        (empty.as_path(), "is empty"),
    ] {
        let said = one_line(home.run(&["order", &agent, "--file", file.to_str().expect("utf-8"), "text"]));
        assert!(said.contains(says), "{file:?}: {said}");
    }
    // Text too long with a good file: the file's copy goes with the orders.
    let long = "x".repeat(9 * 1024);
    let said = one_line(home.run(&["order", &agent, "--file", real.to_str().expect("utf-8"), &long]));
    assert!(said.contains("8192 bytes"), "{said}");
    assert_eq!(count(&home, "SELECT count(*) FROM Orders"), 0, "nothing queued");
    assert_eq!(count(&home, "SELECT count(*) FROM OrderFiles"), 0, "no file recorded");
    let left = std::fs::read_dir(home.path().join("files/orders")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no copy left under files/orders");
    boss.stop();
}

#[test]
fn the_boss_refuses_file_frames_it_should_not_answer_and_stays_up() {
    let (home, boss, agent) = enrolled();
    let scratch = TestHome::new();
    let (path, _) = source(&scratch, 70_000, 46);
    let queued = order_with_file(&home, &[&AGENT.to_string()], &path);
    let file_id = queued["file"]["id"].as_str().expect("file id").to_string();
    let agent_home = spyctl::home::Home::at(agent.path());
    let me = agent_home.load_identity().expect("identity");
    let pin = agent_home.load_pin().expect("pin").expect("pinned");
    let boss_key = pin.boss().expect("keys");
    let connect = || V2Client::connect(&boss.addr, Duration::from_secs(5), &me, &boss_key, AGENT).expect("v2");
    let refused = |session: &mut V2Client, frame: Frame| {
        session.write_frame(&frame).expect("write");
        match session.read_frame() {
            Ok(Frame::Error(code, text)) => (code, text),
            other => panic!("{frame:?}: {other:?}"),
        }
    };
    let ask = |file: &str, offset: u64| Frame::GetFile(format!("{{\"file\":\"{file}\",\"offset\":{offset}}}").into());
    let mut session = connect();
    // A chunk frame goes from the Boss only.
    let (code, _) = refused(&mut session, Frame::FileBytes { offset: 0, bytes: vec![1; 10] });
    assert_eq!(code, ErrorCode::BadRequest);
    // Someone else's (or no) file, an offset past the end or off a chunk.
    assert_eq!(refused(&mut session, ask("not-a-file-of-yours", 0)).0, ErrorCode::Forbidden);
    assert_eq!(refused(&mut session, ask(&file_id, 70_000)).0, ErrorCode::BadRequest);
    assert_eq!(refused(&mut session, ask(&file_id, 1)).0, ErrorCode::BadRequest);
    // Malformed and oversized G and N payloads.
    assert_eq!(refused(&mut session, Frame::GetFile(b"{}".to_vec())).0, ErrorCode::BadRequest);
    let huge = format!("{{\"file\":\"{}\",\"offset\":0}}", "f".repeat(60_000));
    assert_eq!(refused(&mut session, Frame::GetFile(huge.into_bytes())).0, ErrorCode::Forbidden);
    let wrong = format!("{{\"file\":\"{file_id}\",\"sha256\":\"{}\"}}", "0".repeat(64));
    assert_eq!(refused(&mut session, Frame::FileDone(wrong.into_bytes())).0, ErrorCode::BadRequest);
    // A frame too big for one Noise message never leaves the client; a
    // line that long from a raw client is refused by the line cap.
    let mut raw = RawClient::connect(&boss.addr);
    let mut line = vec![b'F'; 200_000];
    line.push(b'\n');
    let _ = raw.write(&line);
    let answer = raw.read_reply();
    assert!(!answer.is_ack(), "{}", answer.label());
    // The same session still serves the file, from the first chunk.
    session.write_frame(&ask(&file_id, 0)).expect("write");
    match session.read_frame() {
        Ok(Frame::FileBytes { offset: 0, bytes }) => assert_eq!(bytes.len(), 60 * 1024),
        other => panic!("{other:?}"),
    }
    drop(session);
    assert_eq!(count(&home, "SELECT count(*) FROM OrderAttachments WHERE DeliveredAt IS NOT NULL"), 0);
    // A fresh fetch still works end to end.
    let got = fetch(&agent, &boss.addr);
    assert_eq!(got["files"][0]["state"], "complete", "{got}");
    assert!(boss.panics().is_empty(), "{:?}", boss.panics());
    boss.stop();
}

#[test]
fn listen_downloads_a_pushed_orders_file_and_says_so() {
    use std::io::BufRead;
    let (home, boss, agent) = enrolled();
    let scratch = TestHome::new();
    let (path, data) = source(&scratch, 200_000, 49);
    let mut child = agent
        .cmd(&["--json", "listen", "--addr", &boss.addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn listen");
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = lines.recv_timeout(Duration::from_secs(30)).expect("a line from listen");
        serde_json::from_str(&line).expect("json line")
    };
    // In the backlog or pushed (whichever the race gives): listen stores the
    // order, prints it, then downloads its file and prints that.
    let queued = order_with_file(&home, &[&AGENT.to_string(), "Pushed, with a file"], &path);
    let order = queued["queued"][0]["order"].as_str().expect("order id").to_string();
    let pushed = next();
    assert_eq!(pushed["id"], order.as_str(), "{pushed}");
    assert_eq!(pushed["file"]["name"], NAME, "{pushed}");
    let file = next();
    assert_eq!((file["order"].as_str(), file["state"].as_str()), (Some(order.as_str()), Some("complete")), "{file}");
    crate::resume_files::kill9(&mut child);
    let out = scratch.path().join("saved.bin");
    ok(save(&agent, &order, &out));
    assert_eq!(std::fs::read(&out).expect("saved"), data);
    assert_eq!(count(&home, "SELECT count(*) FROM OrderAttachments WHERE DeliveredAt IS NOT NULL"), 1);
    boss.stop();
}

#[test]
fn a_key_rotation_reseals_order_files_so_the_old_epoch_retires_and_the_file_still_downloads() {
    let (home, boss, agent) = enrolled();
    let scratch = TestHome::new();
    let (path, data) = source(&scratch, 200_000, 50);
    let queued = order_with_file(&home, &[&AGENT.to_string(), "Sealed under epoch 0"], &path);
    let order = queued["queued"][0]["order"].as_str().expect("order id").to_string();
    let stored = home.path().join("files/orders").join(queued["file"]["id"].as_str().expect("file id"));
    let epoch_of = |p: &Path| {
        let file = std::fs::File::open(p).expect("stored copy");
        spyctl::boss::sealed_file::Header::read(&file).expect("header").epoch
    };
    assert_eq!(epoch_of(&stored), 0);
    ok(home.run(&["key", "rotate"]));
    assert_eq!(epoch_of(&stored), 1, "re-sealed under the new epoch");
    // Nothing is left under epoch 0, so it retires; its secret leaves master.key.
    ok(home.run(&["key", "retire", "0"]));
    // The Boss picks up the change within about a second.
    std::thread::sleep(Duration::from_millis(1500));
    let got = fetch(&agent, &boss.addr);
    assert_eq!(got["files"][0]["state"], "complete", "{got}");
    let out = scratch.path().join("saved.bin");
    ok(save(&agent, &order, &out));
    assert_eq!(std::fs::read(&out).expect("saved"), data);
    assert_eq!(files_containing(home.path(), MARKER), Vec::<PathBuf>::new(), "no plaintext left by the re-seal");
    boss.stop();
}
