//! `order` (a director, in the Boss's home) and `orders` (an agent, in its
//! joined home). Parses and prints only: the outbox is `boss::orders`, the
//! session `net::v2_client`, the agent's copy `received_orders`.

use std::time::Duration;

use crate::auth::roles::Action;
use crate::boss::orders::{self, OrderError};
use crate::cli::{OrderArgs, OrdersArgs};
use crate::error::{Error, Hint, Result};
use crate::net::v2_client::V2Client;
use crate::output::{Rows, utc_time, visible};
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
    let (agent_id, text) = match (args.words.as_slice(), args.level) {
        ([text], Some(_)) => (None, text.clone()),
        ([id, text], None) => {
            let id = id.parse::<i64>().map_err(|_| Error::usage(format!("{id:?} is not an AgentId")))?;
            (Some(id), text.clone())
        }
        ([_], None) => return Err(Error::usage("name an AGENT_ID before the text, or pass --level L")),
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
    // Immediate: a deferred transaction that reads, then writes, fails at
    // once with "database is locked" if the Boss committed in between (a
    // listening agent's confirmation, say); this one waits its turn.
    let tx = rusqlite::Transaction::new_unchecked(&gate.conn, rusqlite::TransactionBehavior::Immediate)?;
    let mut queued = Vec::with_capacity(targets.len());
    for target in &targets {
        let id = orders::queue(&tx, &boss, gate.agent.id, *target, &text).map_err(order_error)?;
        queued.push((*target, id));
    }
    tx.commit()?;
    if ctx.json {
        let list: Vec<_> =
            queued.iter().map(|(agent, id)| serde_json::json!({ "agent": agent, "order": id })).collect();
        return ctx.json(serde_json::json!({ "queued": list }));
    }
    for (agent, id) in &queued {
        ctx.say(&format!("Order {id} queued for agent {agent}; it reaches the agent at once if it runs `spyctl listen`, else at its next `spyctl orders`."))?;
    }
    Ok(())
}

fn order_error(e: OrderError) -> Error {
    match e {
        OrderError::Db(db) => db.into(),
        other => Error::failed(other.to_string()),
    }
}

pub fn fetch(ctx: &mut Ctx<'_>, args: OrdersArgs) -> Result<()> {
    let super::send::Joined { keys: me, boss, agent_id, .. } = super::send_v2::joined_identity(ctx)?;
    let path = ctx.home.dir().join(received_orders::ORDERS_FILE);
    let key = me.orders_key();
    let mut known =
        received_orders::load(&path, &key).map_err(|e| Error::caused(format!("cannot read {}", path.display()), e))?;
    let mut new = 0;
    if !args.offline {
        let mut session = V2Client::connect(&args.addr, Duration::from_secs(args.timeout), &me, &boss, agent_id)?;
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
    }
    if ctx.json {
        return ctx.json(serde_json::json!({ "new": new, "orders": known }));
    }
    let mut rows = Rows::new(&["When (UTC)", "From", "Order", "Text"]);
    for order in &known {
        rows.push(vec![
            utc_time(order.at),
            order.from.to_string(),
            order.id.clone(),
            visible(&order.text).into_owned(),
        ]);
    }
    if !known.is_empty() {
        ctx.show(&rows.to_table())?;
    }
    ctx.say(&format!("{} order(s), {new} new.", known.len()))
}
