//! Orders from the Boss (issue 14): a director queues orders in an enrolled
//! agent's outbox (sealed at rest), the agent fetches them over v2 into its
//! own home, and each is confirmed only after it is on the agent's disk, so
//! an interrupted delivery loses nothing and shows nothing twice.

use std::time::Duration;

use rusqlite::Connection;
use serde_json::Value;
use spyctl::net::v2_client::V2Client;

use crate::identities::enrolled;
use crate::support::*;

const AGENT: i64 = 6;

fn count(home: &TestHome, sql: &str) -> i64 {
    Connection::open(home.db_path()).expect("open").query_row(sql, [], |r| r.get(0)).expect(sql)
}

fn fetch(agent: &TestHome, addr: &str) -> Value {
    serde_json::from_str(&ok(agent.run(&["--json", "orders", "--addr", addr]))).expect("orders json")
}

#[test]
fn orders_wait_sealed_reach_the_agent_when_it_connects_and_are_kept_once() {
    let (home, boss, agent) = enrolled();
    ok(home.run(&["order", &AGENT.to_string(), "Meet the courier at Waterloo"]));
    ok(home.run(&["order", &AGENT.to_string(), "Burn the second notebook"]));
    // Agent 6 is the only enrolled agent at level 2.
    let all: Value = serde_json::from_str(&ok(home.run(&["--json", "order", "--level", "2", "All level 2: stand by"])))
        .expect("json");
    assert_eq!(all["queued"].as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(count(&home, "SELECT count(*) FROM Orders WHERE DeliveredAt IS NULL"), 3);
    for text in ["Meet the courier", "Burn the second", "stand by"] {
        assert!(!file_contains(&home.db_path(), text.as_bytes()), "{text:?} in the database in plaintext");
    }
    let first = fetch(&agent, &boss.addr);
    assert_eq!(first["new"], 3, "{first}");
    let texts: Vec<&str> =
        first["orders"].as_array().expect("orders").iter().filter_map(|o| o["text"].as_str()).collect();
    assert_eq!(texts, ["Meet the courier at Waterloo", "Burn the second notebook", "All level 2: stand by"]);
    assert_eq!(count(&home, "SELECT count(*) FROM Orders WHERE DeliveredAt IS NOT NULL"), 3, "confirmed");
    assert!(!file_contains(&agent.path().join("orders"), b"Waterloo"), "the agent's copy is sealed too");
    let again = fetch(&agent, &boss.addr);
    assert_eq!((again["new"].as_u64(), again["orders"].as_array().map(Vec::len)), (Some(0), Some(3)), "{again}");
    let offline: Value =
        serde_json::from_str(&ok(agent.run(&["--json", "orders", "--offline"]))).expect("offline json");
    assert_eq!(offline["orders"].as_array().map(Vec::len), Some(3));
    boss.stop();
}

#[test]
fn an_order_stored_but_never_confirmed_is_offered_again_and_kept_once() {
    let (home, boss, agent) = enrolled();
    ok(home.run(&["order", &AGENT.to_string(), "Only once, please"]));
    // The agent stores the offer, then dies before confirming (as a kill -9
    // between its fsync and its next request would leave things).
    let agent_home = spyctl::home::Home::at(agent.path());
    let me = agent_home.load_identity().expect("identity");
    let pin = agent_home.load_pin().expect("pin").expect("pinned");
    let mut session =
        V2Client::connect(&boss.addr, Duration::from_secs(5), &me, &pin.boss().expect("keys"), AGENT).expect("v2");
    let offer = session.orders(&[]).expect("offer");
    assert_eq!(offer.len(), 1);
    let path = agent.path().join(spyctl::received_orders::ORDERS_FILE);
    let mut known = spyctl::received_orders::load(&path, &me.orders_key()).expect("load");
    spyctl::received_orders::append(&path, &me.orders_key(), &mut known, &offer).expect("append");
    drop(session);
    assert_eq!(count(&home, "SELECT count(*) FROM Orders WHERE DeliveredAt IS NULL"), 1, "not confirmed yet");
    // The next fetch gets it again, keeps it once, and confirms it.
    let after = fetch(&agent, &boss.addr);
    assert_eq!((after["new"].as_u64(), after["orders"].as_array().map(Vec::len)), (Some(0), Some(1)), "{after}");
    assert_eq!(count(&home, "SELECT count(*) FROM Orders WHERE DeliveredAt IS NULL"), 0);
    boss.stop();
}

#[test]
fn orders_go_only_to_enrolled_agents_within_the_directors_level() {
    let (home, boss, _agent) = enrolled();
    let err = fails(home.run(&["order", "5", "you are not enrolled"]), 1);
    assert!(err.contains("no enrolled identity"), "{err}");
    home.login(sample_named("Natasha Romanoff"));
    let err = fails(home.run(&["order", "--level", "5", "above my level"]), 1);
    assert!(err.contains("level"), "{err}");
    home.login(FIELD_AGENT);
    let err = fails(home.run(&["order", &AGENT.to_string(), "from a field agent"]), 1);
    assert!(err.contains("give orders"), "{err}");
    assert_eq!(count(&home, "SELECT count(*) FROM Orders"), 0, "nothing queued");
    boss.stop();
}
