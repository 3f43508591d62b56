//! Checks the test harnesses in `support/`: each real component starts on free ports,
//! answers, and is driven the way the integration tests drive it.

use std::time::Duration;

use serde_json::json;

use crate::support::etcd::{b64, unb64};
use crate::support::{
    self, Consul, Etcd, EtcdCluster, EtcdGateway, Haproxy, Nginx, TIMEOUT, etcd, http, wait_for,
};

#[test]
fn consul_register_and_read_health() {
    let Some(consul) = Consul::try_start() else {
        return;
    };
    let a = consul.http_addr();
    let r = http::put(
        &a,
        "/v1/agent/service/register",
        r#"{"ID":"web-1","Name":"web","Address":"127.0.0.1","Port":8080,"Tags":["a"],
            "Check":{"CheckID":"web-1-ttl","TTL":"30s","Status":"passing"}}"#,
    )
    .send();
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("web-1 in /v1/health/service/web?passing", TIMEOUT, || {
        let r = http::get(&a, "/v1/health/service/web?passing").send();
        r.status == 200 && r.json()[0]["Service"]["ID"] == "web-1"
    });
    let index = consul.index_of("/v1/health/service/web");
    assert!(index > 0);

    // A blocking query returns once the index moves (chunked/Content-Length both handled).
    consul.ttl_update("web-1-ttl", "fail", "boom");
    let r = http::get(&a, &format!("/v1/health/service/web?index={index}&wait=5s")).send();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("boom"), "{}", r.text());

    consul.kv_put("rewire/x", "1");
    assert_eq!(http::get(&a, "/v1/kv/rewire/x?raw").send().text(), "1");
}

#[test]
fn consul_restart_resets_state_on_same_port() {
    let Some(mut consul) = Consul::try_start() else {
        return;
    };
    let a = consul.http_addr();
    consul.kv_put("k", "v");
    let pid = consul.pid().unwrap();
    consul.restart();
    assert_eq!(consul.http_addr(), a, "same port after restart");
    assert_ne!(consul.pid().unwrap(), pid);
    assert_eq!(
        http::get(&a, "/v1/kv/k").send().status,
        404,
        "-dev state is gone after restart"
    );
    consul.kill();
    assert!(
        http::get(&a, "/v1/status/leader").try_send().is_err(),
        "agent is down after kill"
    );
}

#[test]
fn consul_with_acl() {
    let Some(consul) = Consul::try_start_with_acl("root-token") else {
        return;
    };
    let a = consul.http_addr();
    assert_eq!(http::get(&a, "/v1/acl/token/self").send().status, 403);
    assert_eq!(
        http::get(&a, "/v1/acl/token/self")
            .header("X-Consul-Token", "root-token")
            .send()
            .status,
        200
    );
    // with ACLs on, a missing token hides data rather than failing
    consul.register_service(r#"{"ID":"db-1","Name":"db","Port":5432}"#);
    wait_for("db-1 visible with the token", TIMEOUT, || {
        consul.get("/v1/health/service/db").text().contains("db-1")
    });
    let anon = http::get(&a, "/v1/health/service/db").send();
    assert_eq!(
        (anon.status, anon.text().trim().to_string()),
        (200, "[]".to_string())
    );
}

#[test]
fn etcd_put_get_via_json_gateway_and_gateway_proxy() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let a = etcd.client_addr();
    // raw JSON gateway call, base64 keys
    let body = json!({"key": b64("/rewire/k"), "value": b64("v1")});
    let r = http::post(&a, "/v3/kv/put", body.to_string()).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let body = json!({"key": b64("/rewire/k")});
    let v = http::post(&a, "/v3/kv/range", body.to_string())
        .send()
        .json();
    assert_eq!(unb64(v["kvs"][0]["value"].as_str().unwrap()), "v1");

    let rev = etcd.put("/rewire/a", "x");
    assert!(rev > 1);
    assert_eq!(etcd.get("/rewire/a").as_deref(), Some("x"));
    assert_eq!(etcd::kv_get_prefix(&a, "/rewire/").len(), 2);
    let lease = etcd::lease_grant(&a, 60);
    etcd::kv_put(&a, "/rewire/leased", "l", Some(lease));
    etcd::lease_revoke(&a, lease);
    assert_eq!(etcd.get("/rewire/leased"), None);

    let Some(mut gw) = EtcdGateway::try_start(&etcd.endpoints()) else {
        return;
    };
    let g = gw.addr();
    wait_for("value readable through the gateway", TIMEOUT, || {
        http::post(
            &g,
            "/v3/kv/range",
            json!({"key": b64("/rewire/a")}).to_string(),
        )
        .try_send()
        .is_ok_and(|r| r.text().contains(&b64("x")))
    });
    gw.kill();
    assert!(
        http::get(&g, "/health").try_send().is_err(),
        "gateway down after kill"
    );
    gw.restart();
    assert_eq!(gw.addr(), g);
    assert!(etcd::healthy(&g), "health through the restarted gateway");
}

#[test]
fn etcd_three_member_cluster_fails_over() {
    let Some(mut cluster) = EtcdCluster::try_start(3) else {
        return;
    };
    assert_eq!(cluster.endpoints().len(), 3);
    let leader = cluster.wait_leader(TIMEOUT).expect("a leader");
    etcd::kv_put(&cluster.client_addr(leader), "/k", "v", None);
    cluster.kill_member(leader);
    let new_leader = cluster.wait_leader(TIMEOUT).expect("a new leader");
    assert_ne!(new_leader, leader);
    assert_eq!(
        etcd::kv_get(&cluster.client_addr(new_leader), "/k").as_deref(),
        Some("v")
    );
    cluster.restart_member(leader);
    assert!(etcd::healthy(&cluster.client_addr(leader)));
}

#[test]
fn nginx_serves_and_reloads() {
    let Some(nginx) = Nginx::try_start(support::nginx::DEFAULT_SERVER) else {
        return;
    };
    assert_eq!(nginx.get("/"), (200, "ok\n".to_string()));
    let pid_in_file: u32 = std::fs::read_to_string(nginx.pidfile())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid_in_file, nginx.master_pid());
    let (ok, out) = nginx.test_config();
    assert!(ok, "{out}");

    let workers = nginx.worker_pids();
    assert!(!workers.is_empty());
    let conf = format!(
        "{}{}{}",
        support::nginx::conf_header(),
        r#"server { listen 127.0.0.1:@PORT@; location / { return 200 "reloaded\n"; } }"#,
        support::nginx::conf_footer()
    );
    nginx.write_conf(&conf);
    let (ok, out) = nginx.reload();
    assert!(ok, "{out}");
    wait_for("nginx serves the reloaded config", TIMEOUT, || {
        nginx.get("/").1 == "reloaded\n"
    });
    assert_eq!(nginx.master_pid(), pid_in_file, "same master after reload");
}

#[test]
fn haproxy_accepts_and_checks_config() {
    let Some(haproxy) = Haproxy::try_start(support::haproxy::DEFAULT_FRONTEND) else {
        return;
    };
    let s = std::net::TcpStream::connect_timeout(
        &haproxy.addr().parse().unwrap(),
        Duration::from_secs(5),
    );
    assert!(s.is_ok(), "haproxy accepts TCP");
    let r = http::get(&haproxy.addr(), "/").send();
    assert_eq!((r.status, r.text()), (200, "ok".to_string()));
    let (ok, out) = haproxy.check();
    assert!(ok, "{out}");

    let bad = haproxy.dir().join("bad.cfg");
    std::fs::write(
        &bad,
        "frontend x\n    bind 127.0.0.1:1\n    no_such_keyword\n",
    )
    .unwrap();
    let (ok, _) = support::haproxy::check_config(&bad);
    assert!(!ok, "invalid config rejected");

    let before = haproxy.worker_pids();
    haproxy.write_conf(&format!(
        "{}{}",
        support::haproxy::conf_header(),
        "frontend fe\n    bind 127.0.0.1:@PORT@\n    http-request return status 200 content-type text/plain string v2\n"
    ));
    assert_eq!(haproxy.reload_count(), Some(0));
    assert!(
        haproxy.reload_and_wait(TIMEOUT),
        "reload done: {}",
        haproxy.log_tail(40)
    );
    wait_for("haproxy serves the reloaded config", TIMEOUT, || {
        http::get(&haproxy.addr(), "/")
            .try_send()
            .is_ok_and(|r| r.text() == "v2")
    });
    assert_ne!(haproxy.worker_pids(), before, "new worker after reload");
    assert!(haproxy.master_cli("show proc").unwrap().contains("worker"));
}

#[test]
fn helpers_round_trip() {
    for s in [
        "",
        "f",
        "fo",
        "foo",
        "foob",
        "fooba",
        "foobar",
        "/services/web/1",
    ] {
        assert_eq!(unb64(&b64(s)), s);
    }
    assert_eq!(b64("foobar"), "Zm9vYmFy");
    // The gateway's int64s come as strings, other integers as numbers.
    let v = json!({"rev": "18446744073709551615", "n": 7, "t": true});
    assert_eq!(etcd::int::<u64>(&v["rev"]), Some(u64::MAX));
    assert_eq!(etcd::int::<i64>(&v["n"]), Some(7));
    assert_eq!(etcd::int::<i64>(&v["t"]), None);
    assert_eq!(etcd::int::<i64>(&v["missing"][3]), None);
    assert_eq!(http::segment("service:web 1/x"), "service:web%201%2Fx");
    assert_eq!(etcd::prefix_end(b"/a/"), b"/a0".to_vec());
    assert!(support::poll_until(Duration::from_millis(50), || true));
    assert!(!support::poll_until(Duration::from_millis(30), || false));
}
