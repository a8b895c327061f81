//! The demo's protocol-v2 tour after enrolment: an order pushed to a
//! listening agent, a two-sided chat, and a file upload cut off midway and
//! resumed from the Boss's committed offset. Each runs both sides in this
//! process (threads, real TCP on 127.0.0.1, the agent's own home) through
//! the same session and upload code the commands use, and fails the demo
//! if anything does not behave.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::home::Home;
use crate::net::v2::{ChatLine, JoinChat};
use crate::net::v2_client::{Pushed, V2Client, V2Receiver};
use crate::output::visible;
use crate::received_orders;

use super::{Ctx, orders, send, send_v2};

const TIMEOUT: Duration = Duration::from_secs(10);

fn failed(step: &str, what: impl std::fmt::Display) -> Error {
    Error::failed(format!("demo step {step} failed: {what}"))
}

/// `listen` in the agent's home (a thread) while the director queues an
/// order in the Boss's home: the order is pushed, stored, shown, confirmed.
pub fn listen_and_order(ctx: &mut Ctx<'_>, agent_home: &Home, addr: SocketAddr, field_id: i64) -> Result<()> {
    let actx = Ctx { home: agent_home.clone(), home_given: true, json: false, quiet: true, out: &mut std::io::sink() };
    let joined = send_v2::joined_identity(&actx)?;
    let orders_path = agent_home.dir().join(received_orders::ORDERS_FILE);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let listener = std::thread::spawn(move || -> std::result::Result<(String, Instant), String> {
        let key = joined.keys.orders_key();
        let mut known = received_orders::load(&orders_path, &key).map_err(|e| e.to_string())?;
        let session = V2Client::connect(&addr.to_string(), TIMEOUT, &joined.keys, &joined.boss, joined.agent_id)
            .map_err(|e| e.to_string())?;
        let (sender, mut receiver) = session.into_live().map_err(|e| e.to_string())?;
        sender.listen().map_err(|e| e.to_string())?;
        let mut ready = Some(ready_tx);
        loop {
            match receiver.receive().map_err(|e| e.to_string())? {
                Pushed::Orders(offer) => {
                    if let Some(ready) = ready.take() {
                        // The first push answers `L` with the backlog (fetched already: none).
                        let _ = ready.send(());
                    }
                    if offer.is_empty() {
                        continue;
                    }
                    let arrived = Instant::now();
                    received_orders::append(&orders_path, &key, &mut known, &offer).map_err(|e| e.to_string())?;
                    sender
                        .confirm(&offer.iter().map(|o| o.id.clone()).collect::<Vec<_>>())
                        .map_err(|e| e.to_string())?;
                    sender.close();
                    return Ok((offer[0].text.clone(), arrived));
                }
                Pushed::Refused { code, text } => return Err(format!("the Boss refused ({code}): {text}")),
                Pushed::Heartbeat | Pushed::Chat(_) | Pushed::Status(_) => {}
            }
        }
    });
    ready_rx.recv_timeout(TIMEOUT).map_err(|_| failed("listen", "the listener did not start"))?;
    ctx.show(&format!("agent {field_id}: spyctl listen   (connected; waiting)"))?;
    let text = "Meet at the bridge at midnight.";
    let order = crate::cli::OrderArgs { words: vec![field_id.to_string(), text.into()], level: None, file: None };
    orders::order(ctx, order)?;
    let queued = Instant::now();
    let (got, arrived) =
        listener.join().map_err(|_| failed("listen", "the listener panicked"))?.map_err(|e| failed("listen", e))?;
    if got != text {
        return Err(failed("listen", format!("the agent got {got:?}")));
    }
    let ms = arrived.saturating_duration_since(queued).as_secs_f64() * 1000.0;
    ctx.show(&format!(
        "agent {field_id}'s listener: order from agent 1: {}   (pushed {ms:.1} ms after `order` returned; stored, then confirmed)",
        visible(&got)
    ))
}

/// The next chat line a live session receives, skipping presence and heartbeats.
fn next_line(receiver: &mut V2Receiver, step: &str) -> Result<ChatLine> {
    loop {
        match receiver.receive().map_err(|e| failed(step, e))? {
            Pushed::Chat(line) => return Ok(line),
            Pushed::Refused { code, text } => return Err(failed(step, format!("the Boss refused ({code}): {text}"))),
            Pushed::Status(_) | Pushed::Heartbeat | Pushed::Orders(_) => {}
        }
    }
}

/// `chat 6` in the Boss's home (the director, with the Boss's own key) and
/// `chat` in the agent's home: one line each way, relayed and stored sealed.
pub fn chat(ctx: &mut Ctx<'_>, agent_home: &Home, addr: SocketAddr, field_id: i64, director_id: i64) -> Result<()> {
    let boss_keys = ctx.home.load_identity()?;
    let director = V2Client::connect(&addr.to_string(), TIMEOUT, &boss_keys, &boss_keys.public(), director_id)?;
    let (director_out, mut director_in) = director.into_live()?;
    director_out.join(&JoinChat { agent: Some(field_id), director: Some(director_id) })?;

    let actx = Ctx { home: agent_home.clone(), home_given: true, json: false, quiet: true, out: &mut std::io::sink() };
    let joined = send_v2::joined_identity(&actx)?;
    let agent = std::thread::spawn(move || -> std::result::Result<ChatLine, String> {
        let session = V2Client::connect(&addr.to_string(), TIMEOUT, &joined.keys, &joined.boss, joined.agent_id)
            .map_err(|e| e.to_string())?;
        let (agent_out, mut agent_in) = session.into_live().map_err(|e| e.to_string())?;
        agent_out.join(&JoinChat::default()).map_err(|e| e.to_string())?;
        let heard = next_line(&mut agent_in, "chat").map_err(|e| e.to_string())?;
        // Shown (kept for the screen): confirmed, so the Boss marks it delivered.
        agent_out.confirm(std::slice::from_ref(&heard.id)).map_err(|e| e.to_string())?;
        agent_out.say("At the safe house. All quiet.").map_err(|e| e.to_string())?;
        // Wait for the Boss's answer to that line before leaving.
        loop {
            match agent_in.receive().map_err(|e| e.to_string())? {
                Pushed::Status(status) if status.stored.is_some() => break,
                Pushed::Refused { code, text } => return Err(format!("the Boss refused ({code}): {text}")),
                _ => {}
            }
        }
        agent_out.close();
        Ok(heard)
    });
    director_out.say("Report your position.")?;
    let reply = next_line(&mut director_in, "chat")?;
    director_out.confirm(std::slice::from_ref(&reply.id))?;
    let heard =
        agent.join().map_err(|_| failed("chat", "the agent's side panicked"))?.map_err(|e| failed("chat", e))?;
    director_out.close();
    ctx.show(&format!("agent {field_id}'s terminal:    [director {}] {}", heard.from, visible(&heard.text)))?;
    ctx.show(&format!("director's terminal:  [agent {}] {}", reply.from, visible(&reply.text)))?;
    if heard.text != "Report your position." || reply.from != field_id {
        return Err(failed("chat", "the lines did not cross as sent"));
    }
    ctx.show("(both lines are stored sealed under the agent's channel key; the database holds no chat text)")
}

/// A one-connection TCP relay to `target` that cuts the connection once
/// `limit` bytes went towards the Boss, then takes no more connections.
fn cutting_relay(target: SocketAddr, limit: usize) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else { return };
        drop(listener);
        let Ok(boss) = TcpStream::connect(target) else { return };
        let (Ok(mut client_in), Ok(mut boss_out)) = (client.try_clone(), boss.try_clone()) else { return };
        let (mut boss_in, mut client_out) = (boss, client);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut boss_in, &mut client_out);
            let _ = client_out.shutdown(Shutdown::Both);
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut passed = 0;
        while passed < limit {
            let want = buf.len().min(limit - passed);
            match client_in.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if boss_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    passed += n;
                }
            }
        }
        let _ = boss_out.shutdown(Shutdown::Both);
        let _ = client_in.shutdown(Shutdown::Both);
    });
    Ok(addr)
}

/// `send --file` through a connection that is cut after about 1.5 MiB (and
/// cannot be re-made): it fails, its journal keeps the upload; the same
/// command then resumes from the offset the Boss durably holds.
pub fn resumed_file(ctx: &mut Ctx<'_>, addr: SocketAddr) -> Result<()> {
    let path = ctx.home.dir().join("surveillance.bin");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&path, &data)?;
    let request = |addr: SocketAddr, attempts| send::SendRequest {
        addr: Some(addr.to_string()),
        identity: super::session::Identity::LoggedIn,
        timeout: Duration::from_secs(5),
        attempts,
        payload: send::Payload::File { path: path.clone(), name: "surveillance.bin".into(), size: data.len() as u64 },
        protocol: crate::cli::Protocol::V1,
    };
    let relay = cutting_relay(addr, 1_500_000)?;
    match send::send(ctx, request(relay, 1)) {
        Err(e) => ctx.show(&format!("spyctl send --file surveillance.bin -> error: {e}   (the connection was cut)"))?,
        Ok(()) => return Err(failed("resume", "the upload survived a cut connection it could not re-make")),
    }
    ctx.show("spyctl send --file surveillance.bin   (the same command again)")?;
    send::send(ctx, request(addr, 3))
}
