//! `key status`, `key rotate`, `key retire`: the master-key epochs, for
//! directors. Parses and prints only; `crate::epochs` does the work.

use std::time::Instant;

use crate::auth::roles::Action;
use crate::auth::session as session_file;
use crate::boss::files::FileAssembler;
use crate::epochs::{self, EpochStatus, RewrapReport};
use crate::error::Result;
use crate::output::Rows;
use crate::registry::{self, AuditAction, RegistryKeys};

use super::Ctx;
use super::session::require;

pub fn status(ctx: &mut Ctx<'_>) -> Result<()> {
    let gate = require(ctx, Action::ManageKeys)?;
    let master = ctx.home.load_master_key()?;
    let files = FileAssembler::new(ctx.home.files_dir(), gate.keyring.files_keys());
    let (epochs, unreadable_files) = epochs::status(&gate.conn, &master, &files)?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "epochs": epochs, "unreadable_files": unreadable_files }));
    }
    let mut rows = Rows::new(&[
        "Epoch",
        "State",
        "Created (UTC)",
        "In master.key",
        "Agent rows",
        "Passwords",
        "Messages",
        "Audit",
        "Files",
        "Exported to agents",
    ]);
    for e in &epochs {
        rows.push(vec![
            e.epoch.to_string(),
            state(e).into(),
            e.created_at.map_or_else(|| "-".to_string(), crate::output::utc_time),
            if e.in_master_key { "yes" } else { "no" }.into(),
            e.usage.agents.to_string(),
            e.usage.passwords.to_string(),
            e.usage.messages.to_string(),
            e.usage.audit.to_string(),
            (e.usage.file_names as usize + e.files).to_string(),
            ids(&e.usage.exported_to),
        ]);
    }
    ctx.show(&rows.to_table())?;
    if unreadable_files > 0 {
        ctx.say(&format!("{unreadable_files} file(s) under files/ have no readable header (damaged or foreign)."))?;
    }
    let old_in_use: Vec<&EpochStatus> =
        epochs.iter().filter(|e| !e.newest && e.retired_at.is_none() && (e.usage.rows() > 0 || e.files > 0)).collect();
    if old_in_use.is_empty() {
        ctx.say("Nothing is stored under an older epoch.")
    } else {
        ctx.say("Older epochs still hold data: `spyctl key rotate --resume` rewraps it; passwords move at each login.")
    }
}

fn state(e: &EpochStatus) -> &'static str {
    match (e.retired_at, e.newest) {
        (Some(_), _) => "retired",
        (None, true) => "newest",
        (None, false) => "live",
    }
}

fn ids(list: &[i64]) -> String {
    if list.is_empty() { "-".to_string() } else { list.iter().map(i64::to_string).collect::<Vec<_>>().join(", ") }
}

pub fn rotate(ctx: &mut Ctx<'_>, resume: bool, batch: usize) -> Result<()> {
    let mut gate = require(ctx, Action::ManageKeys)?;
    let mut master = ctx.home.load_master_key()?;
    let keyring = if resume {
        epochs::open_keyring(&master, &gate.conn)?
    } else {
        // The secret is saved before the database names its epoch: a crash
        // in between leaves an unused secret, never an epoch without one.
        let epoch = epochs::add_epoch(&mut master, &gate.conn)?;
        ctx.home.save_master_keys(&master)?;
        let keyring = epochs::record_rotation(&master, &mut gate.conn, epoch)?;
        let keys = RegistryKeys::derive(&keyring);
        registry::record_key_change(&mut gate.conn, &keys, &gate.agent, AuditAction::RotateKeys { epoch })?;
        ctx.say(&format!("Key epoch {epoch} added to master.key; new writes use it from now on."))?;
        keyring
    };
    // This home's own session moves at once; others move at their next use.
    let session_keys = keyring.session_keys();
    session_file::write(&ctx.home.session_path(), &session_keys[0], &gate.claims)?;

    let files = FileAssembler::new(ctx.home.files_dir(), keyring.files_keys());
    let started = Instant::now();
    let show_progress = !ctx.quiet && !ctx.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = |r: &RewrapReport| {
        if show_progress {
            eprint!("\rrewrapped {} rows, {} files", r.rows(), r.files);
        }
    };
    let report = epochs::rewrap(&mut gate.conn, &keyring, &files, batch, &mut progress)?;
    if show_progress {
        eprintln!();
    }
    let seconds = started.elapsed().as_secs_f64();
    let (epochs, _) = epochs::status(&gate.conn, &master, &files)?;
    let waiting_passwords: i64 = epochs.iter().filter(|e| !e.newest).map(|e| e.usage.passwords).sum();
    if ctx.json {
        return ctx.json(serde_json::json!({
            "epoch": report.epoch,
            "rewrapped": report,
            "seconds": seconds,
            "passwords_waiting_for_login": waiting_passwords,
        }));
    }
    ctx.say(&format!(
        "Rewrapped under epoch {} in {seconds:.2} s ({} transactions): {} agent rows, {} messages, {} audit entries, \
         {} file names, {} enrolment codes, {} files.",
        report.epoch,
        report.transactions,
        report.agents,
        report.messages,
        report.audit,
        report.file_names,
        report.enrol_codes,
        report.files
    ))?;
    if report.unopenable > 0 {
        ctx.say(&format!(
            "warning: {} message(s) open under no live key and were left as they are; `key retire` will name them.",
            report.unopenable
        ))?;
    }
    if waiting_passwords > 0 {
        ctx.say(&format!(
            "{waiting_passwords} password hash(es) still use an older epoch's pepper: each moves at that agent's next \
             login, and `key retire` waits for them."
        ))?;
    }
    Ok(())
}

pub fn retire(ctx: &mut Ctx<'_>, epoch: u32) -> Result<()> {
    let mut gate = require(ctx, Action::ManageKeys)?;
    let mut master = ctx.home.load_master_key()?;
    let keyring = epochs::open_keyring(&master, &gate.conn)?;
    let files = FileAssembler::new(ctx.home.files_dir(), keyring.files_keys());
    if epoch != keyring.newest_epoch() && keyring.epochs().any(|e| e == epoch) {
        // Stragglers first: rows a Boss wrote under the old epoch before it
        // noticed the rotation.
        epochs::rewrap(&mut gate.conn, &keyring, &files, epochs::DEFAULT_BATCH, &mut |_: &RewrapReport| {})?;
    }
    let exported = epochs::retire(&mut gate.conn, &keyring, &files, epoch)?;
    // Only now, with the database saying the epoch is retired, does its
    // secret leave master.key.
    master.remove(epoch);
    ctx.home.save_master_keys(&master)?;
    registry::record_key_change(
        &mut gate.conn,
        &RegistryKeys::derive(&keyring),
        &gate.agent,
        AuditAction::RetireKeys { epoch },
    )?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "retired": epoch, "exported_keys_revoked_for": exported }));
    }
    ctx.say(&format!("Key epoch {epoch} retired; its secret is gone from master.key."))?;
    if !exported.is_empty() {
        ctx.say(&format!(
            "Wire keys exported in epoch {epoch} to agent(s) {} no longer work: export new ones with \
             `spyctl agent key export N`.",
            ids(&exported)
        ))?;
    }
    Ok(())
}
