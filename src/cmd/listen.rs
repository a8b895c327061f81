//! `listen` (an agent, in its joined home): one v2 session that stays open
//! while the Boss pushes orders. Parses and prints only: each batch is
//! stored by `received_orders` (synced) before it is printed and confirmed,
//! exactly as `orders` does; the session is `net::v2_client`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cli::ListenArgs;
use crate::error::{Error, Result};
use crate::net::v2::Order;
use crate::net::v2_client::{Pushed, V2Client, V2Error};
use crate::net::v2_download::Downloaded;
use crate::output::{utc_time, visible};
use crate::received_orders;

use super::Ctx;

pub fn listen(ctx: &mut Ctx<'_>, args: ListenArgs) -> Result<()> {
    let super::orders::AgentOrders { me, boss, agent_id, path, key, mut known, store } =
        super::orders::open_agent_orders(ctx)?;
    let timeout = Duration::from_secs(args.timeout);
    // Files (of orders already here) an earlier run left unfinished.
    let mut connect = || V2Client::connect(&args.addr, timeout, &me, &boss, agent_id);
    let resumed = super::orders::download_files(&store, &known, None, &mut connect)?;
    show_files(ctx, &known, &resumed)?;
    let session = V2Client::connect(&args.addr, timeout, &me, &boss, agent_id)?;
    super::send_v2::warn_skew(session.skew);
    let (sender, mut receiver) = session.into_live()?;
    sender.listen()?;
    let _keep_alive = sender.keep_alive();
    // Ctrl-D on a terminal ends it; a pipe or /dev/null on stdin does not
    // (a listener started in the background must keep listening).
    let ended_by_user = Arc::new(AtomicBool::new(false));
    if std::io::stdin().is_terminal() {
        let (sender, ended) = (sender.clone(), Arc::clone(&ended_by_user));
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            ended.store(true, Ordering::SeqCst);
            sender.close();
        });
    }
    let mut listening = false;
    loop {
        match receiver.receive() {
            Ok(Pushed::Orders(offer)) => {
                if !listening {
                    listening = true;
                    ctx.say(&format!("Listening for orders as agent {agent_id} (Ctrl-C to stop)."))?;
                }
                if offer.is_empty() {
                    continue;
                }
                // On disk first; only then is the Boss told they arrived.
                // `append` adds the new ones (each id once) at the end of `known`.
                let before = known.len();
                received_orders::append(&path, &key, &mut known, &offer)
                    .map_err(|e| Error::caused(format!("cannot write {}", path.display()), e))?;
                for order in &known[before..] {
                    if ctx.json {
                        ctx.json_line(serde_json::to_value(order).expect("an order always encodes"))?;
                    } else {
                        ctx.show(&format!(
                            "[{}] order {} from agent {}: {}",
                            utc_time(order.at),
                            order.id,
                            order.from,
                            visible(&order.text)
                        ))?;
                    }
                }
                ctx.out.flush().ok();
                sender.confirm(&offer.into_iter().map(|o| o.id).collect::<Vec<_>>())?;
                // Their files over a request session of their own, beside
                // this live one (which only the Boss's pushes use).
                let fresh: Vec<Order> = known[before..].iter().filter(|o| o.file.is_some()).cloned().collect();
                let fetched = super::orders::download_files(&store, &fresh, None, &mut connect)?;
                show_files(ctx, &fresh, &fetched)?;
            }
            Ok(Pushed::Refused { code, text }) => {
                return Err(Error::failed(format!("the Boss refused ({code}): {text}")));
            }
            Ok(Pushed::Heartbeat | Pushed::Chat(_) | Pushed::Status(_)) => {}
            Err(V2Error::Closed) | Err(V2Error::Io(_)) if ended_by_user.load(Ordering::SeqCst) => return Ok(()),
            Err(V2Error::Closed) | Err(V2Error::Io(_)) => {
                return Err(Error::failed(
                    "the Boss closed the connection; nothing is lost: run `spyctl listen` again to reconnect",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One line per file just downloaded.
fn show_files(ctx: &mut Ctx<'_>, orders: &[Order], fetched: &[(String, Downloaded)]) -> Result<()> {
    for (order_id, cost) in fetched {
        let Some(file) = orders.iter().find(|o| &o.id == order_id).and_then(|o| o.file.as_ref()) else { continue };
        if ctx.json {
            ctx.json_line(serde_json::json!({
                "order": order_id, "file": file.id, "name": file.name, "size": file.size,
                "state": "complete", "download": cost,
            }))?;
        } else {
            ctx.show(&format!(
                "order {order_id}: file {} ({} bytes) complete, SHA-256 checked",
                visible(&file.name),
                file.size
            ))?;
        }
    }
    ctx.out.flush().ok();
    Ok(())
}
