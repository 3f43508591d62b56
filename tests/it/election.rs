//! Leader election through the real binary: three candidates, each a `rewire run` supervising
//! its own redis-server, against the dir catalog, a real etcd and a real Consul agent.
//!
//! "Never two leaders" is checked on the leadership intervals the candidates' hooks log (see
//! `support::election`), with every kill's time, not by sampling. Timing: ttl 2 s and a
//! Consul lock delay of 1 s keep each failover within a few seconds.

use std::time::Duration;

use crate::support::election::{self, Catalog, Kind, Node, Timing, now_ns, overlaps, show};
use crate::support::{self, EtcdGateway, TcpProxy};

/// How long a first election may take (three processes start on two busy cores).
const FIRST: Duration = Duration::from_secs(30);

/// How long after a SIGKILL a successor must hold the election, by the guarantees.
fn failover_bound(kind: Kind, t: Timing) -> Duration {
    match kind {
        // A dead holder's flock goes with it; followers look every 100 ms.
        Kind::Dir => Duration::from_secs(1),
        Kind::Etcd => t.ttl + Duration::from_millis(500),
        Kind::Consul => t.ttl + t.lock_delay + Duration::from_secs(1),
    }
}

fn secs(ns: u128) -> f64 {
    ns as f64 / 1e9
}

/// Three nodes, all started; `None` when a component is missing (skipped loudly).
fn three(kind: Kind) -> Option<(Catalog, Vec<Node>)> {
    election::redis_or_skip()?;
    let cat = Catalog::try_start(kind)?;
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::new(&cat, n, Timing::default(), None))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    Some((cat, nodes))
}

fn node<'a>(nodes: &'a mut [Node], name: &str) -> &'a mut Node {
    nodes
        .iter_mut()
        .find(|n| n.name == name)
        .expect("a node of this test")
}

#[track_caller]
fn assert_one_holder_at_a_time(cat: &Catalog, kills: &[(String, u128)], nodes: &[Node]) {
    let intervals = cat.log().intervals(kills);
    let bad = overlaps(&intervals);
    assert_eq!(
        bad,
        0,
        "terms overlap or tokens do not grow:\n{}\n--- logs ---\n{}",
        show(&intervals),
        nodes
            .iter()
            .map(|n| format!("== {}\n{}", n.name, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Kills the holder's whole process group (rewire and its redis) three times, restarting it
/// each time as a container would be; then SIGTERMs the holder. Checks every failover time and
/// that the terms never overlap, their tokens always growing.
fn failovers(kind: Kind) {
    let Some((cat, mut nodes)) = three(kind) else {
        return;
    };
    let log = cat.log();
    let mut kills: Vec<(String, u128)> = Vec::new();
    let mut leader = log
        .wait_leader(&kills, 0, FIRST)
        .unwrap_or_else(|| panic!("no leader:\n{}", node(&mut nodes, "a").log_tail()));
    // Every candidate's redis is up, so each may run.
    for n in &mut nodes {
        assert!(
            n.wait_redis(support::TIMEOUT),
            "redis of {} is not up",
            n.name
        );
    }
    let bound = failover_bound(kind, Timing::default());
    for round in 1..=3 {
        let at = node(&mut nodes, &leader.node).kill9();
        kills.push((leader.node.clone(), at));
        let next = log
            .wait_leader(&kills, leader.token, bound + Duration::from_secs(10))
            .unwrap_or_else(|| panic!("round {round}: no successor after killing {}", leader.node));
        let took = next.start.saturating_sub(at);
        eprintln!(
            "{} round {round}: {} killed, {} elected after {:.3}s (token {} -> {})",
            kind.name(),
            leader.node,
            next.node,
            secs(took),
            leader.token,
            next.token
        );
        assert!(
            took <= bound.as_nanos(),
            "{}: a SIGKILLed holder was replaced after {:.3}s, more than {bound:?}",
            kind.name(),
            secs(took)
        );
        let killed = node(&mut nodes, &leader.node);
        killed.start();
        assert!(killed.wait_redis(support::TIMEOUT));
        leader = next;
    }

    // SIGTERM: on_demoted, release, then deregistration: a successor within a second or two.
    let at = node(&mut nodes, &leader.node).sigterm();
    let next = log
        .wait_leader(&kills, leader.token, Duration::from_secs(10))
        .expect("a successor after SIGTERM");
    let took = next.start.saturating_sub(at);
    eprintln!(
        "{}: SIGTERM to {}, {} elected after {:.3}s",
        kind.name(),
        leader.node,
        next.node,
        secs(took)
    );
    assert!(
        took < Duration::from_millis(2000).as_nanos(),
        "handover after SIGTERM took {:.3}s",
        secs(took)
    );
    let stopped = node(&mut nodes, &leader.node);
    assert!(
        stopped.wait_exit(Duration::from_secs(20)),
        "rewire did not exit"
    );
    let demoted = log
        .events()
        .into_iter()
        .find(|e| !e.elected && e.node == leader.node && e.token == leader.token)
        .expect("on_demoted ran on SIGTERM");
    assert!(
        demoted.at <= next.start,
        "on_demoted ran after the successor was elected"
    );
    assert_one_holder_at_a_time(&cat, &kills, &nodes);
}

#[test]
fn dir_one_leader_through_kills_and_a_sigterm() {
    failovers(Kind::Dir);
}

#[test]
fn etcd_one_leader_through_kills_and_a_sigterm() {
    failovers(Kind::Etcd);
}

#[test]
fn consul_one_leader_through_kills_and_a_sigterm() {
    failovers(Kind::Consul);
}

/// The holder reaches the catalog through a proxy the test cuts: it demotes itself (runs
/// on_demoted) before its TTL ends, although it hears nothing; a successor follows once the
/// catalog expires the term, and the terms do not overlap.
fn cut_off_holder(kind: Kind) {
    if election::redis_or_skip().is_none() {
        return;
    }
    let Some(cat) = Catalog::try_start(kind) else {
        return;
    };
    let target = cat.address().expect("a networked catalog");
    let mut gateway = None;
    let mut proxy = None;
    let via = match kind {
        Kind::Etcd => {
            let g = EtcdGateway::start(&[format!("http://{target}")]);
            let a = g.addr();
            gateway = Some(g);
            a
        }
        _ => {
            let p = TcpProxy::start(&target);
            let a = p.addr();
            proxy = Some(p);
            a
        }
    };
    let timing = Timing::default();
    let mut nodes = vec![Node::new(&cat, "a", timing, Some(&via))];
    nodes[0].start();
    let log = cat.log();
    let first = log.wait_leader(&[], 0, FIRST).expect("a leads");
    assert_eq!(first.node, "a");
    for name in ["b", "c"] {
        let mut n = Node::new(&cat, name, timing, None);
        n.start();
        assert!(n.wait_redis(support::TIMEOUT));
        nodes.push(n);
    }
    // Let a renew a few times with followers watching.
    std::thread::sleep(timing.ttl);
    let cut = now_ns();
    if let Some(g) = gateway.as_mut() {
        g.kill();
    }
    if let Some(p) = proxy.as_mut() {
        p.cut();
    }
    let mut demoted = None;
    support::wait_for("a demotes itself", Duration::from_secs(10), || {
        demoted = log
            .events()
            .into_iter()
            .find(|e| !e.elected && e.node == "a" && e.token == first.token);
        demoted.is_some()
    });
    let took = demoted.expect("found above").at.saturating_sub(cut);
    eprintln!(
        "{}: the cut-off holder demoted itself {:.3}s after the cut (ttl {:?})",
        kind.name(),
        secs(took),
        timing.ttl
    );
    assert!(
        took < timing.ttl.as_nanos(),
        "demoted {:.3}s after the cut: not before its TTL ended",
        secs(took)
    );
    let next = log
        .wait_leader(&[], first.token, Duration::from_secs(20))
        .expect("a successor");
    assert_ne!(next.node, "a");
    assert_one_holder_at_a_time(&cat, &[], &nodes);
}

#[test]
fn etcd_a_holder_cut_off_from_the_catalog_steps_down_before_its_ttl() {
    cut_off_holder(Kind::Etcd);
}

#[test]
fn consul_a_holder_cut_off_from_the_catalog_steps_down_before_its_ttl() {
    cut_off_holder(Kind::Consul);
}

/// `info replication` of one redis as `field:value` pairs.
fn replication(port: u16) -> Vec<(String, String)> {
    election::redis_cli(port, &["info", "replication"])
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(info: &[(String, String)], name: &str) -> String {
    info.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The example's three nodes: one primary, two replicas with their link up. Returns the
/// primary's index.
fn settled(nodes: &[Node], except: Option<usize>) -> Option<usize> {
    let live: Vec<usize> = (0..nodes.len()).filter(|i| Some(*i) != except).collect();
    let infos: Vec<(usize, Vec<(String, String)>)> = live
        .iter()
        .map(|&i| (i, replication(nodes[i].port)))
        .collect();
    let primaries: Vec<usize> = infos
        .iter()
        .filter(|(_, r)| field(r, "role") == "master")
        .map(|(i, _)| *i)
        .collect();
    let [p] = primaries.as_slice() else {
        return None;
    };
    let replicas_up = infos.iter().filter(|(i, _)| i != p).all(|(_, r)| {
        field(r, "role") == "slave"
            && field(r, "master_port") == nodes[*p].port.to_string()
            && field(r, "master_link_status") == "up"
    });
    replicas_up.then_some(*p)
}

/// examples/stateful-redis as its README runs it: after the primary's rewire and redis are
/// SIGKILLed, another node takes writes and the remaining replica serves them.
fn redis_example_survives_the_loss_of_its_primary(kind: Kind) {
    if election::redis_or_skip().is_none() {
        return;
    }
    let Some(cat) = Catalog::try_start(kind) else {
        return;
    };
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::example(&cat, n))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let mut primary = None;
    support::wait_for("one primary, two replicas in sync", FIRST, || {
        primary = settled(&nodes, None);
        primary.is_some()
    });
    let old = primary.expect("found above");
    let before = election::redis_cli(nodes[old].port, &["set", "before", "1"]);
    assert_eq!(before.trim(), "OK");
    nodes[old].kill9();
    // A surviving node becomes primary and accepts a write.
    let mut new = None;
    support::wait_for(
        "a new primary takes a write",
        Duration::from_secs(20),
        || {
            new = (0..nodes.len()).filter(|i| *i != old).find(|&i| {
                field(&replication(nodes[i].port), "role") == "master"
                    && election::redis_cli(nodes[i].port, &["set", "after", "2"]).trim() == "OK"
            });
            new.is_some()
        },
    );
    let new = new.expect("found above");
    let replica = (0..nodes.len())
        .find(|i| *i != old && *i != new)
        .expect("a third node");
    support::wait_for(
        "the remaining replica serves the new primary's write",
        Duration::from_secs(20),
        || election::redis_cli(nodes[replica].port, &["get", "after"]).trim() == "2",
    );
    support::wait_for(
        "the replica's redis.conf names the new primary",
        support::TIMEOUT,
        || {
            std::fs::read_to_string(cat.root().join(&nodes[replica].name).join("redis.conf"))
                .is_ok_and(|c| c.contains(&format!("replicaof 127.0.0.1 {}", nodes[new].port)))
        },
    );
}

#[test]
fn redis_example_on_dir_fails_over_and_replicates() {
    redis_example_survives_the_loss_of_its_primary(Kind::Dir);
}

#[test]
fn redis_example_on_etcd_fails_over_and_replicates() {
    redis_example_survives_the_loss_of_its_primary(Kind::Etcd);
}

#[test]
fn redis_example_on_consul_fails_over_and_replicates() {
    redis_example_survives_the_loss_of_its_primary(Kind::Consul);
}

#[test]
fn the_redis_example_config_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/stateful-redis/rewire.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rewire"))
        .arg("check")
        .arg("-c")
        .arg(&example)
        .env("NODE", "a")
        .env("REDIS_DIR", "/tmp")
        .output()
        .expect("run rewire check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
