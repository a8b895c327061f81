//! `order` (a director, in the Boss's home) and `orders` (an agent, in its
//! joined home). Parses and prints only: the outbox is `boss::orders`, the
//! session `net::v2_client`, the agent's copy `received_orders`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::roles::Action;
use crate::boss::order_files::{self, OrderFileError};
use crate::boss::orders::{self, OrderError};
use crate::cli::{OrderArgs, OrdersArgs};
use crate::crypto::{FernetKey, IdentityKeys, PublicIdentity};
use crate::error::{Error, Hint, Result};
use crate::net::v2::{Order, OrderFile};
use crate::net::v2_client::V2Client;
use crate::net::v2_download::{self, Downloaded};
use crate::output::{Rows, utc_time, visible};
use crate::received_files::{self, ReceivedFiles, SaveError, State};
use crate::received_orders;
use crate::registry;

use super::Ctx;
use super::session::require;

pub fn order(ctx: &mut Ctx<'_>, args: OrderArgs) -> Result<()> {
    let gate = require(ctx, Action::GiveOrders)?;
    let boss = ctx.home.load_identity()?;
    // Targets come from the checked registry (row tags verified), at or
    // below the director's own level.
    let visible = registry::visible_to(&gate.conn, &gate.keys, gate.agent.level)?;
    let with_file = args.file.is_some();
    let agent = |id: &String| id.parse::<i64>().map_err(|_| Error::usage(format!("{id:?} is not an AgentId")));
    let (agent_id, text) = match (args.words.as_slice(), args.level) {
        ([text], Some(_)) => (None, text.clone()),
        ([], Some(_)) if with_file => (None, String::new()),
        ([id, text], None) => (Some(agent(id)?), text.clone()),
        ([id], None) if with_file => (Some(agent(id)?), String::new()),
        ([_], None) => return Err(Error::usage("name an AGENT_ID before the text, or pass --level L")),
        ([], None) => return Err(Error::usage("name an AGENT_ID or pass --level L")),
        _ => return Err(Error::usage("with --level, give the text alone")),
    };
    let targets: Vec<i64> = match (agent_id, args.level) {
        (Some(id), _) => {
            let target = visible.iter().find(|a| a.id == id).ok_or_else(|| {
                Error::failed(format!("no agent {id} at or below your level")).hint(Hint::SeeAgentList)
            })?;
            vec![target.id]
        }
        (None, Some(level)) => {
            registry::check_ceiling(&gate.agent, level)?;
            let enrolled: Vec<i64> =
                crate::db::identities::all_current(&gate.conn)?.into_iter().map(|i| i.agent_id).collect();
            visible.iter().filter(|a| a.level == level && enrolled.contains(&a.id)).map(|a| a.id).collect()
        }
        (None, None) => return Err(Error::usage("name an AGENT_ID or pass --level L")),
    };
    if targets.is_empty() {
        return Err(Error::failed("no enrolled agent at that level; nothing was queued"));
    }
    // The file's sealed copy is written (under a temporary name) first; it
    // gets its name inside the transaction, and goes if the orders do not.
    let prepared = match &args.file {
        Some(path) => {
            let keys = gate.keyring.files_keys();
            Some(order_files::prepare(&ctx.home.files_dir(), &keys, path).map_err(order_file_error)?)
        }
        None => None,
    };
    let queued = queue_all(&gate.conn, &boss, gate.agent.id, &targets, &text, prepared.as_ref());
    let queued = match queued {
        Ok(queued) => queued,
        Err(e) => {
            if let Some(prepared) = &prepared {
                prepared.discard();
            }
            return Err(e);
        }
    };
    let file = prepared.as_ref().map(order_files::Prepared::describe);
    if ctx.json {
        let list: Vec<_> =
            queued.iter().map(|(agent, id)| serde_json::json!({ "agent": agent, "order": id })).collect();
        return ctx.json(serde_json::json!({ "queued": list, "file": file }));
    }
    let carrying =
        file.map_or(String::new(), |f| format!(" with file {} ({} bytes)", crate::output::visible(&f.name), f.size));
    for (agent, id) in &queued {
        ctx.say(&format!("Order {id} queued for agent {agent}{carrying}; it reaches the agent at once if it runs `spyctl listen`, else at its next `spyctl orders`."))?;
    }
    Ok(())
}

/// Queues one order per target (and the file's row, and its final name) in
/// one transaction.
fn queue_all(
    conn: &rusqlite::Connection,
    boss: &crate::crypto::IdentityKeys,
    from: i64,
    targets: &[i64],
    text: &str,
    prepared: Option<&order_files::Prepared>,
) -> Result<Vec<(i64, String)>> {
    // Immediate: a deferred transaction that reads, then writes, fails at
    // once with "database is locked" if the Boss committed in between (a
    // listening agent's confirmation, say); this one waits its turn.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let file = prepared.map(order_files::Prepared::describe);
    if let Some(prepared) = prepared {
        let now = crate::crypto::fernet::unix_now() as i64;
        crate::db::order_files::insert_file(&tx, &prepared.row, now)?;
    }
    let mut queued = Vec::with_capacity(targets.len());
    for target in targets {
        let id = orders::queue_with_file(&tx, boss, from, *target, text, file.as_ref()).map_err(order_error)?;
        queued.push((*target, id));
    }
    if let Some(prepared) = prepared {
        prepared.publish().map_err(|e| Error::caused("cannot store the order's file under files/orders", e))?;
    }
    tx.commit()?;
    Ok(queued)
}

fn order_file_error(e: OrderFileError) -> Error {
    match e {
        OrderFileError::Source(why) => Error::failed(why),
        other => Error::caused("cannot store the order's file", other),
    }
}

fn order_error(e: OrderError) -> Error {
    match e {
        OrderError::Db(db) => db.into(),
        other => Error::failed(other.to_string()),
    }
}

/// What `orders` and `listen` open in an agent's joined home: its identity
/// and pinned Boss, the orders it has received (their file, its key, and
/// what it holds) and its received files.
pub(super) struct AgentOrders {
    pub me: IdentityKeys,
    pub boss: PublicIdentity,
    pub agent_id: i64,
    pub path: PathBuf,
    pub key: FernetKey,
    pub known: Vec<Order>,
    pub store: ReceivedFiles,
}

pub(super) fn open_agent_orders(ctx: &Ctx<'_>) -> Result<AgentOrders> {
    let super::send::Joined { keys: me, boss, agent_id, .. } = super::send_v2::joined_identity(ctx)?;
    let path = ctx.home.dir().join(received_orders::ORDERS_FILE);
    let key = me.orders_key();
    let known =
        received_orders::load(&path, &key).map_err(|e| Error::caused(format!("cannot read {}", path.display()), e))?;
    let store = ReceivedFiles::open(ctx.home.dir(), &me, agent_id)
        .map_err(|e| Error::caused(format!("cannot open {}", ctx.home.dir().join(received_files::DIR).display()), e))?;
    Ok(AgentOrders { me, boss, agent_id, path, key, known, store })
}

pub fn fetch(ctx: &mut Ctx<'_>, args: OrdersArgs) -> Result<()> {
    let AgentOrders { me, boss, agent_id, path, key, mut known, store } = open_agent_orders(ctx)?;
    if let (Some(order_id), Some(out)) = (&args.save, &args.out) {
        return save(ctx, &store, &known, order_id, out);
    }
    let mut new = 0;
    let mut reports = Vec::new();
    if !args.offline {
        let timeout = Duration::from_secs(args.timeout);
        let mut session = V2Client::connect(&args.addr, timeout, &me, &boss, agent_id)?;
        let mut stored: Vec<String> = Vec::new();
        loop {
            let offer = session.orders(&stored)?;
            if offer.is_empty() {
                break;
            }
            // On disk first; only then does the next request confirm them.
            new += received_orders::append(&path, &key, &mut known, &offer)
                .map_err(|e| Error::caused(format!("cannot write {}", path.display()), e))?;
            stored = offer.into_iter().map(|o| o.id).collect();
        }
        let mut connect = || V2Client::connect(&args.addr, timeout, &me, &boss, agent_id);
        reports = download_files(&store, &known, Some(session), &mut connect)?;
    }
    let states = file_states(&store, &known)?;
    if ctx.json {
        let files: Vec<_> = states
            .iter()
            .map(|(order, file, state)| {
                let run = reports.iter().find(|(id, _)| id == order).map(|(_, d)| d);
                serde_json::json!({
                    "order": order, "file": file.id, "name": file.name, "size": file.size,
                    "state": state.describe(file.size), "download": run,
                })
            })
            .collect();
        return ctx.json(serde_json::json!({ "new": new, "orders": known, "files": files }));
    }
    let mut rows = Rows::new(&["When (UTC)", "From", "Order", "Text", "File"]);
    for order in &known {
        let file = states.iter().find(|(id, _, _)| *id == order.id).map_or(String::new(), |(_, file, state)| {
            format!("{} ({} bytes): {}", visible(&file.name), file.size, state.describe(file.size))
        });
        rows.push(vec![
            utc_time(order.at),
            order.from.to_string(),
            order.id.clone(),
            visible(&order.text).into_owned(),
            file,
        ]);
    }
    if !known.is_empty() {
        ctx.show(&rows.to_table())?;
    }
    ctx.say(&format!("{} order(s), {new} new.", known.len()))
}

/// Each order's file and where it stands in this home.
fn file_states<'o>(store: &ReceivedFiles, known: &'o [Order]) -> Result<Vec<(String, &'o OrderFile, State)>> {
    let mut out = Vec::new();
    for order in known {
        if let Some(file) = &order.file {
            let state = store.state(file).map_err(|e| Error::caused("cannot read received/", e))?;
            out.push((order.id.clone(), file, state));
        }
    }
    Ok(out)
}

/// How many sessions in a row may be lost without progress before a
/// download gives up.
const DOWNLOAD_ATTEMPTS: u32 = 6;

/// Downloads (or resumes) the files of `orders` not yet complete here, and
/// tells the Boss of each; reuses `session` if given. Returns each
/// download's cost by order id. A failure is one line naming the order.
pub(super) fn download_files(
    store: &ReceivedFiles,
    orders: &[Order],
    session: Option<V2Client>,
    connect: &mut v2_download::Connect<'_>,
) -> Result<Vec<(String, Downloaded)>> {
    let mut session = session;
    let mut done = Vec::new();
    for order in orders {
        let Some(file) = &order.file else { continue };
        let state = store.state(file).map_err(|e| Error::caused("cannot read received/", e))?;
        if state == State::Complete && store.told(file).unwrap_or(false) {
            continue;
        }
        match v2_download::download(&mut session, connect, store, file, DOWNLOAD_ATTEMPTS) {
            Ok(cost) => done.push((order.id.clone(), cost)),
            Err(e) => {
                let name = visible(&file.name).into_owned();
                return Err(Error::failed(format!("order {}'s file {name}: {e}", order.id)));
            }
        }
    }
    Ok(done)
}

/// `orders --save ORDER_ID --out PATH`.
fn save(ctx: &mut Ctx<'_>, store: &ReceivedFiles, known: &[Order], order_id: &str, out: &Path) -> Result<()> {
    let order = known
        .iter()
        .find(|o| o.id == order_id)
        .ok_or_else(|| Error::failed(format!("no order {order_id:?} in this home; `spyctl orders` lists them")))?;
    let file = order.file.as_ref().ok_or_else(|| Error::failed(format!("order {order_id} carries no file")))?;
    match store.save(file, out) {
        Ok(()) => {}
        Err(SaveError::Io(e)) => return Err(Error::caused(format!("cannot write {}", out.display()), e)),
        Err(SaveError::Exists) => {
            return Err(Error::failed(format!("{} exists; refusing to overwrite it", out.display())));
        }
        Err(e) => return Err(Error::failed(format!("order {order_id}'s file: {e}"))),
    }
    if ctx.json {
        return ctx
            .json(serde_json::json!({ "saved": out, "order": order_id, "size": file.size, "sha256": file.sha256 }));
    }
    ctx.say(&format!("Saved {} ({} bytes, SHA-256 checked) to {}.", visible(&file.name), file.size, out.display()))
}
