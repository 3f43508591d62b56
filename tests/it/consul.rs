//! The Consul backend against a real agent (`consul agent -dev`, 1.8.7), through the library
//! API: a `ConsulCatalog` watching into a `Store`, the agent driven over its HTTP API.
//!
//! Every test starts its own agent on free loopback ports (see `support/consul.rs`) and
//! skips loudly when the Consul binary is missing. Nothing sleeps and hopes: each step polls
//! the store (or the agent) for the expected state with a generous deadline.

use crate::support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rewire::catalog::consul::ConsulCatalog;
use rewire::catalog::{Catalog, CatalogError};
use rewire::config::{Backend, CatalogConfig, ConsulSettings, Retry, Secret};
use rewire::model::{Data, Instance, Query, Registration, Status};
use rewire::store::{Health, Store};
use support::Consul;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

fn settings_for(address: &str, token: Option<&str>) -> ConsulSettings {
    ConsulSettings {
        address: Some(address.to_string()),
        token: token.map(Secret::new),
        ..ConsulSettings::default()
    }
}

/// The catalog section of these tests: 10 s blocking queries, a quick retry capped at 1 s.
fn catalog_config(settings: &ConsulSettings) -> CatalogConfig {
    CatalogConfig {
        backend: Backend::Consul(settings.clone()),
        block_wait: Duration::from_secs(10),
        retry: Retry {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        deregister_after: Duration::from_secs(600),
        max_file: rewire::config::DEFAULT_MAX_FILE,
        max_response: rewire::config::DEFAULT_MAX_RESPONSE,
    }
}

fn catalog_with(settings: ConsulSettings, block_wait: Duration) -> ConsulCatalog {
    let cfg = CatalogConfig {
        block_wait,
        ..catalog_config(&settings)
    };
    // No environment: these tests must not depend on the developer's CONSUL_* variables.
    ConsulCatalog::with_env(&settings, &cfg, &|_| None).expect("valid consul settings")
}

fn catalog(address: &str, token: Option<&str>) -> ConsulCatalog {
    catalog_with(settings_for(address, token), Duration::from_secs(10))
}

/// A running `watch` over a changeable set of queries.
struct Watching {
    store: Arc<Store>,
    wanted: watch::Sender<BTreeSet<Query>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Watching {
    fn start(catalog: Arc<ConsulCatalog>, queries: &[Query]) -> Watching {
        let store = Arc::new(Store::new());
        let (wanted, rx) = watch::channel(queries.iter().cloned().collect());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let store = store.clone();
            let stop = stop.clone();
            async move { catalog.watch(rx, store, stop).await }
        });
        Watching {
            store,
            wanted,
            stop,
            task,
        }
    }

    fn data(&self, q: &Query) -> Option<Data> {
        self.store.snapshot().get(q).map(|e| e.data.clone())
    }

    fn instances(&self, service: &str) -> Option<Vec<Arc<Instance>>> {
        match self.data(&Query::Service(service.into())) {
            Some(Data::Instances(list)) => Some(list),
            _ => None,
        }
    }

    async fn until(&self, what: &str, f: impl Fn(&Watching) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !f(self) {
            if Instant::now() >= deadline {
                let snap = self.store.snapshot();
                let mut entries: Vec<String> = snap
                    .entries
                    .iter()
                    .map(|(q, e)| format!("{q}: {:?}", e.data))
                    .collect();
                entries.sort();
                panic!(
                    "timed out after {DEADLINE:?} waiting for: {what}\nhealth: {:?}\nstore:\n  {}",
                    snap.health,
                    entries.join("\n  ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("watch stops promptly")
            .expect("watch task did not panic");
    }
}

/// Polls `f` every 20 ms until it holds; panics after [`DEADLINE`].
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(list: &[Arc<Instance>]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

fn registration(id: &str, name: &str, port: u16, ttl: Duration, status: Status) -> Registration {
    Registration {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1".into(),
        port,
        tags: vec!["rewire".into()],
        meta: [("owner".to_string(), "tests".to_string())].into(),
        ttl,
        deregister_after: Duration::from_secs(60),
        status,
    }
}

/// Status and output of one check, from `/v1/health/checks/<service>`.
fn check_state(consul: &Consul, service: &str, check_id: &str) -> Option<(String, String)> {
    let r = consul.get(&format!("/v1/health/checks/{service}"));
    let checks: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    checks.as_array()?.iter().find_map(|c| {
        (c["CheckID"] == check_id).then(|| {
            (
                c["Status"].as_str().unwrap_or_default().to_string(),
                c["Output"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_instances_follow_registrations() {
    support::logs();
    let Some(consul) = Consul::try_start() else {
        return;
    };
    let cat = Arc::new(catalog(&consul.http_url(), None));
    cat.preflight().await.expect("no ACLs: preflight passes");

    let web = Query::Service("web".into());
    let w = Watching::start(cat.clone(), &[web.clone(), Query::Services]);
    w.until("empty web list", |w| w.instances("web") == Some(vec![]))
        .await;

    // An empty Service.Address means the node's address.
    consul.register_service(
        r#"{"ID":"web1","Name":"web","Port":8080,"Tags":["b","a"],"Meta":{"v":"1"},
            "Check":{"CheckID":"service:web1","TTL":"60s","Status":"passing"}}"#,
    );
    consul.register_service(
        r#"{"ID":"web2","Name":"web","Address":"127.0.0.2","Port":8081,
            "Check":{"CheckID":"service:web2","TTL":"60s"}}"#,
    );
    w.until("web1 and web2", |w| {
        w.instances("web")
            .is_some_and(|l| ids(&l) == ["web1", "web2"])
    })
    .await;
    let list = w.instances("web").unwrap();
    assert_eq!(list[0].address, "127.0.0.1");
    assert_eq!(list[0].port, 8080);
    assert_eq!(list[0].tags, ["a", "b"]);
    assert_eq!(list[0].meta.get("v").map(String::as_str), Some("1"));
    assert_eq!(list[0].node, "rewire-test");
    assert_eq!(list[0].status, Status::Passing);
    assert_eq!(list[1].address, "127.0.0.2");
    assert_eq!(
        list[1].status,
        Status::Critical,
        "TTL checks start critical"
    );

    w.until("services() lists web with its tags", |w| {
        match w.data(&Query::Services) {
            Some(Data::Services(s)) => s.iter().any(|s| s.name == "web" && s.tags == ["a", "b"]),
            _ => false,
        }
    })
    .await;

    consul.ttl_update("service:web2", "pass", "fine");
    w.until("web2 passing", |w| {
        w.instances("web")
            .is_some_and(|l| l.iter().all(|i| i.status == Status::Passing))
    })
    .await;

    consul.deregister_service("web1");
    w.until("only web2", |w| {
        w.instances("web").is_some_and(|l| ids(&l) == ["web2"])
    })
    .await;
    assert_eq!(w.store.snapshot().health, Health::Healthy);

    // A query dropped from the wanted set is stopped and forgotten.
    w.wanted.send_replace(BTreeSet::from([Query::Services]));
    w.until("web forgotten", |w| w.data(&web).is_none()).await;
    w.stop().await;

    // One-shot reads agree.
    let Data::Instances(list) = cat.fetch(&web).await.unwrap() else {
        panic!("instances expected")
    };
    assert_eq!(ids(&list), ["web2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_ttl_expiry_and_updates_show_in_consul() {
    support::logs();
    let Some(consul) = Consul::try_start() else {
        return;
    };
    let cat = Arc::new(catalog(&consul.http_url(), None));
    let reg = registration(
        "api-1",
        "api",
        9000,
        Duration::from_secs(2),
        Status::Passing,
    );
    cat.register(&reg).await.expect("register");

    let w = Watching::start(cat.clone(), &[Query::Service("api".into())]);
    w.until("api-1 registered passing", |w| {
        w.instances("api").is_some_and(|l| {
            l.len() == 1
                && l[0].status == Status::Passing
                && l[0].port == 9000
                && l[0].tags == ["rewire"]
                && l[0].meta.get("owner").map(String::as_str) == Some("tests")
        })
    })
    .await;
    let body = consul.get("/v1/agent/services").text();
    assert!(body.contains("\"api-1\""), "{body}");
    // The TTL runs out without a pass: critical, so out of `passing`.
    w.until("api-1 critical after its TTL", |w| {
        w.instances("api")
            .is_some_and(|l| l.len() == 1 && l[0].status == Status::Critical)
    })
    .await;

    cat.update_ttl(&reg, Status::Passing, "all good")
        .await
        .unwrap();
    w.until("api-1 passing again", |w| {
        w.instances("api")
            .is_some_and(|l| l[0].status == Status::Passing)
    })
    .await;
    // The agent syncs check changes to the catalog in the background: poll for them.
    let check_is = |status: &'static str, output: &'static str| {
        let consul = &consul;
        move || {
            check_state(consul, "api", "service:api-1")
                == Some((status.to_string(), output.to_string()))
        }
    };
    eventually(
        "passing in /v1/health/checks",
        check_is("passing", "all good"),
    )
    .await;

    cat.update_ttl(&reg, Status::Warning, "slow").await.unwrap();
    eventually("warning in /v1/health/checks", check_is("warning", "slow")).await;
    let long = "x".repeat(100_000);
    cat.update_ttl(&reg, Status::Critical, &long).await.unwrap();
    eventually("critical with cut output in /v1/health/checks", || {
        check_state(&consul, "api", "service:api-1")
            .is_some_and(|(s, out)| s == "critical" && out.len() <= 4096 && out.starts_with("xxx"))
    })
    .await;
    w.until("api-1 critical", |w| {
        w.instances("api")
            .is_some_and(|l| l[0].status == Status::Critical)
    })
    .await;

    cat.deregister(&reg).await.unwrap();
    w.until("api-1 gone", |w| w.instances("api") == Some(vec![]))
        .await;
    cat.deregister(&reg)
        .await
        .expect("deregistering an unknown id is fine");

    // The agent forgot the check: the caller is told to register again.
    let err = cat.update_ttl(&reg, Status::Passing, "").await.unwrap_err();
    assert!(matches!(err, CatalogError::NotRegistered { .. }), "{err}");
    cat.register(&reg).await.unwrap();
    cat.update_ttl(&reg, Status::Passing, "back").await.unwrap();
    w.until("api-1 back and passing", |w| {
        w.instances("api")
            .is_some_and(|l| l.len() == 1 && l[0].status == Status::Passing)
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_keys_and_prefixes_follow_writes() {
    support::logs();
    let Some(consul) = Consul::try_start() else {
        return;
    };
    let cat = Arc::new(catalog(&consul.http_url(), None));
    let key = Query::Key("app/conf".into());
    let keys = Query::Keys("app/".into());
    let w = Watching::start(cat.clone(), &[key.clone(), keys.clone()]);
    w.until("missing key and prefix are answers", |w| {
        w.data(&key) == Some(Data::Key(None)) && w.data(&keys) == Some(Data::Keys(vec![]))
    })
    .await;

    // The 404 still blocks: the write wakes it.
    consul.kv_put("app/conf", "v1");
    consul.kv_put("app/sub/b", "bee");
    consul.kv_put("app/sub/deeper/c", "sea");
    consul.kv_put("app/empty", "");
    consul.kv_put("app/folder/", "");
    consul.kv_put("other/x", "not under the prefix");
    let expect = [
        ("app/conf", "v1"),
        ("app/empty", ""),
        ("app/sub/b", "bee"),
        ("app/sub/deeper/c", "sea"),
    ];
    let pairs = |d: Option<Data>| match d {
        Some(Data::Keys(list)) => list
            .into_iter()
            .map(|kv| (kv.path, kv.value))
            .collect::<Vec<_>>(),
        _ => vec![],
    };
    w.until("nested keys under app/", |w| {
        let got = pairs(w.data(&keys));
        got.len() == expect.len()
            && got
                .iter()
                .zip(expect)
                .all(|(g, e)| g.0 == e.0 && g.1 == e.1)
    })
    .await;
    assert_eq!(w.data(&key), Some(Data::Key(Some("v1".into()))));

    consul.kv_put("app/conf", "v2 with ünïcode");
    w.until("new value", |w| {
        w.data(&key) == Some(Data::Key(Some("v2 with ünïcode".into())))
    })
    .await;

    consul.kv_delete("app/", true);
    w.until("prefix deleted", |w| {
        w.data(&key) == Some(Data::Key(None)) && w.data(&keys) == Some(Data::Keys(vec![]))
    })
    .await;
    w.stop().await;

    consul.kv_put("app/conf", "v3");
    assert_eq!(cat.fetch(&key).await.unwrap(), Data::Key(Some("v3".into())));
    let many = cat
        .fetch_many(&[key.clone(), keys.clone(), Query::Key("nope".into())])
        .await;
    assert_eq!(many[0].0, key);
    assert_eq!(many[0].1.as_ref().unwrap(), &Data::Key(Some("v3".into())));
    assert!(matches!(many[1].1, Ok(Data::Keys(ref l)) if l.len() == 1));
    assert_eq!(many[2].1.as_ref().unwrap(), &Data::Key(None));
}

/// A TCP proxy in front of the agent that counts HTTP requests (and connections that found
/// no agent behind it), so tests can prove there is no request storm.
struct CountingProxy {
    port: u16,
    requests: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
}

impl CountingProxy {
    fn start(upstream: String) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        {
            let (requests, refused, done) = (requests.clone(), refused.clone(), done.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue; // dropping `client` closes it
                    };
                    let count = requests.clone();
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || pipe(client, server, Some(count)));
                    std::thread::spawn(move || pipe(s2, c2, None));
                }
            });
        }
        CountingProxy {
            port,
            requests,
            refused,
            done,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests seen plus connections that found no agent.
    fn attempts(&self) -> usize {
        self.requests.load(Ordering::SeqCst) + self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `done`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` until either side closes, counting request lines when asked.
fn pipe(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicUsize>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(count) = &count {
            let chunk = &buf[..n];
            let hits = chunk.windows(8).filter(|w| w == b"GET /v1/").count();
            count.fetch_add(hits, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_per_change_and_none_while_idle() {
    support::logs();
    let Some(consul) = Consul::try_start() else {
        return;
    };
    let proxy = CountingProxy::start(consul.http_addr());
    let cat = Arc::new(catalog_with(
        settings_for(&proxy.url(), None),
        Duration::from_secs(30),
    ));
    let key = Query::Key("bench/k".into());
    let w = Watching::start(cat, std::slice::from_ref(&key));
    w.until("initial answer", |w| w.data(&key).is_some()).await;
    // Let the first blocking request reach the agent.
    eventually("blocking request sent", || proxy.attempts() >= 2).await;
    assert_eq!(proxy.attempts(), 2, "one read, then one blocking query");

    for n in 0..10 {
        let before = proxy.attempts();
        let value = format!("v{n}");
        consul.kv_put("bench/k", &value);
        w.until("the new value", |w| {
            w.data(&key) == Some(Data::Key(Some(value.clone())))
        })
        .await;
        eventually("the next blocking request", || proxy.attempts() > before).await;
        assert_eq!(proxy.attempts(), before + 1, "one request per change");
    }

    // Unrelated writes do not wake the watch: no requests at all while idle.
    let idle = proxy.attempts();
    consul.kv_put("elsewhere/x", "1");
    consul.register_service(r#"{"ID":"x","Name":"x","Port":1}"#);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(proxy.attempts(), idle, "no requests while nothing changes");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_mid_watch_recovers_without_a_request_storm() {
    support::logs();
    let Some(mut consul) = Consul::try_start() else {
        return;
    };
    let proxy = CountingProxy::start(consul.http_addr());
    let cat = Arc::new(catalog(&proxy.url(), None));
    let web = Query::Service("web".into());
    let key = Query::Key("cfg".into());
    let w = Watching::start(cat, &[web.clone(), key.clone()]);

    // Raise the index well above where a fresh agent starts, so the restart moves it back.
    for n in 0..30 {
        consul.kv_put("filler", n.to_string());
    }
    consul.register_service(r#"{"ID":"web-old","Name":"web","Port":8080}"#);
    consul.kv_put("cfg", "before");
    w.until("data before the restart", |w| {
        w.instances("web").is_some_and(|l| ids(&l) == ["web-old"])
            && w.data(&key) == Some(Data::Key(Some("before".into())))
    })
    .await;
    let before_index = consul.index_of("/v1/kv/cfg");

    consul.kill();
    w.until("outage reported", |w| {
        matches!(w.store.snapshot().health, Health::Unreachable(_))
    })
    .await;
    let outage_start = (Instant::now(), proxy.attempts());
    // The outage lasts a few seconds; the data stays as it was.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outage = (outage_start.0.elapsed(), proxy.attempts() - outage_start.1);
    assert!(w.instances("web").is_some_and(|l| ids(&l) == ["web-old"]));
    assert_eq!(w.data(&key), Some(Data::Key(Some("before".into()))));
    // 2 queries, backoff 100 ms doubling to 1 s with jitter: about 15 attempts in 4 s; a hot
    // loop would make thousands.
    assert!(
        outage.1 <= 40,
        "{} attempts in {:?} of outage",
        outage.1,
        outage.0
    );

    consul.restart();
    // `-dev` keeps KV and the raft log in memory (hence the lower index), but the agent
    // persists its own service registrations in its data dir and brings `web-old` back.
    consul.deregister_service("web-old");
    consul.register_service(r#"{"ID":"web-new","Name":"web","Port":9090}"#);
    consul.kv_put("cfg", "after");
    assert!(
        consul.index_of("/v1/kv/cfg") < before_index,
        "the restarted agent counts from a lower index"
    );
    w.until("data after the restart", |w| {
        w.instances("web").is_some_and(|l| ids(&l) == ["web-new"])
            && w.data(&key) == Some(Data::Key(Some("after".into())))
    })
    .await;
    w.until("healthy again", |w| {
        w.store.snapshot().health == Health::Healthy
    })
    .await;

    // Back to blocking: no requests while nothing changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = proxy.attempts();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A restarted agent may still move an index once or twice (anti-entropy syncing its node);
    // a hot loop would make hundreds of requests here.
    assert!(
        proxy.attempts() <= settled + 2,
        "blocking again after recovery: {} requests in 2 s",
        proxy.attempts() - settled
    );

    // And it still follows changes.
    consul.kv_put("cfg", "later");
    w.until("a change after recovery", |w| {
        w.data(&key) == Some(Data::Key(Some("later".into())))
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_token_is_required_checked_at_start_and_never_shown() {
    const TOKEN: &str = "b1e5b2c4-rewire-acl-master-token";
    const WRONG: &str = "00000000-wrong-token-never-shown";
    support::logs();
    let Some(consul) = Consul::try_start_with_acl(TOKEN) else {
        return;
    };

    // With the token: preflight passes, watches and registration work.
    let cat = Arc::new(catalog(&consul.http_url(), Some(TOKEN)));
    cat.preflight().await.expect("valid token");
    consul.kv_put("secret/k", "visible with the token");
    let key = Query::Key("secret/k".into());
    let w = Watching::start(cat.clone(), std::slice::from_ref(&key));
    w.until("key read with the token", |w| {
        w.data(&key) == Some(Data::Key(Some("visible with the token".into())))
    })
    .await;
    w.stop().await;
    let reg = registration(
        "acl-1",
        "acl",
        7000,
        Duration::from_secs(30),
        Status::Passing,
    );
    cat.register(&reg).await.unwrap();
    cat.update_ttl(&reg, Status::Passing, "ok").await.unwrap();
    cat.deregister(&reg).await.unwrap();

    // Through the environment, as consul-template users set it.
    let settings = ConsulSettings::default();
    let cfg = catalog_config(&settings);
    let addr = consul.http_addr();
    let env = move |name: &str| match name {
        "CONSUL_HTTP_ADDR" => Some(addr.clone()),
        "CONSUL_HTTP_TOKEN" => Some(TOKEN.to_string()),
        _ => None,
    };
    let from_env = ConsulCatalog::with_env(&settings, &cfg, &env).unwrap();
    from_env
        .preflight()
        .await
        .expect("token from CONSUL_HTTP_TOKEN");
    assert!(!format!("{from_env:?} {}", from_env.describe()).contains(TOKEN));

    // Without a token, or with a wrong one: refused at start, with a hint, without the token.
    for token in [None, Some(WRONG)] {
        let cat = catalog(&consul.http_url(), token);
        let err = cat.preflight().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CatalogError::Denied { .. }), "{text}");
        assert!(!err.is_transient());
        assert!(
            text.contains("CONSUL_HTTP_TOKEN"),
            "hint names the fix: {text}"
        );
        assert!(!text.contains(WRONG) && !text.contains(TOKEN), "{text}");
        let shown = format!("{err:?} {cat:?} {}", cat.describe());
        assert!(!shown.contains(WRONG) && !shown.contains(TOKEN), "{shown}");

        // Writes are refused the same way, and their errors hold no token either.
        let err = cat.register(&reg).await.unwrap_err();
        assert!(matches!(err, CatalogError::Denied { .. }), "{err}");
        assert!(!format!("{err} {err:?}").contains(WRONG));
    }

    // A watch with a wrong token keeps trying (and reports) without exposing the token.
    let bad = Arc::new(catalog(&consul.http_url(), Some(WRONG)));
    let w = Watching::start(bad, std::slice::from_ref(&key));
    w.until(
        "refusal reported as catalog health",
        |w| matches!(&w.store.snapshot().health, Health::Unreachable(m) if m.contains("403")),
    )
    .await;
    let Health::Unreachable(msg) = w.store.snapshot().health.clone() else {
        unreachable!()
    };
    assert!(!msg.contains(WRONG), "{msg}");
    assert!(w.data(&key).is_none(), "nothing read with a refused token");
    w.stop().await;

    // `rewire render` with a refused token says so at once instead of waiting its timeout.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.tera"), "{{ key(path=\"secret/k\") }}\n").unwrap();
    std::fs::write(
        dir.path().join("rewire.toml"),
        format!(
            "[catalog]\nbackend = \"consul\"\naddress = \"{}\"\ntoken = \"{WRONG}\"\n\n\
             [[template]]\nsource = \"t.tera\"\ndestination = \"out\"\n",
            consul.http_url()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_rewire"))
        .args(["render", "--timeout", "120s", "-c"])
        .arg(dir.path().join("rewire.toml"))
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("CONSUL_HTTP_TOKEN"), "{err}");
    assert!(!err.contains(WRONG), "{err}");
    // Far under the 120 s timeout (a generous bound for a slow machine).
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    // Without any token, a health query is answered 200 with an empty list (ACLs filter it):
    // `render` must refuse at once, not write every service empty over a good file.
    std::fs::write(
        dir.path().join("t.tera"),
        "{% for s in service(name=\"consul\") %}{{ s.address }}{% endfor %}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rewire.toml"),
        format!(
            "[catalog]\nbackend = \"consul\"\naddress = \"{}\"\n\n\
             [[template]]\nsource = \"t.tera\"\ndestination = \"out\"\n",
            consul.http_url()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("out"), "good\n").unwrap();
    for cmd in ["render", "diff"] {
        let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_rewire"))
            .args([cmd, "-c"])
            .arg(dir.path().join("rewire.toml"))
            .env_remove("CONSUL_HTTP_TOKEN")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{cmd}: {err}");
        assert!(err.contains("CONSUL_HTTP_TOKEN"), "{cmd}: {err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out")).unwrap(),
            "good\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_is_a_transient_error() {
    // A port nothing listens on.
    let port = support::free_port();
    let cat = catalog(&format!("http://127.0.0.1:{port}"), Some("tok-never-shown"));
    let err = cat.preflight().await.unwrap_err();
    assert!(matches!(err, CatalogError::Unreachable { .. }), "{err}");
    assert!(err.is_transient());
    let err = cat.fetch(&Query::Services).await.unwrap_err();
    assert!(matches!(err, CatalogError::Unreachable { .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains("tok-never-shown"));
}

/// Certificates made by `consul tls ca create` / `consul tls cert create`.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn create(consul_bin: &std::path::Path) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        for args in [
            &["tls", "ca", "create"][..],
            &["tls", "cert", "create", "-server", "-dc", "dc1"],
            &["tls", "cert", "create", "-client", "-dc", "dc1"],
        ] {
            let out = std::process::Command::new(consul_bin)
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "consul {args:?}: {out:?}");
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_ca_client_certificate_server_name_and_env() {
    support::logs();
    let Some(bin) = Consul::binary() else {
        // Let the harness report the skip (or fail under REWIRE_REQUIRE_COMPONENTS=1).
        assert!(Consul::try_start().is_none());
        return;
    };
    let certs = Certs::create(&bin);
    let https = support::free_port();
    let tls_hcl = format!(
        r#"ca_file = "{}" cert_file = "{}" key_file = "{}" verify_incoming_https = true"#,
        certs.path("consul-agent-ca.pem"),
        certs.path("dc1-server-consul-0.pem"),
        certs.path("dc1-server-consul-0-key.pem"),
    );
    let ports_hcl = format!("ports {{ https = {https} }}");
    let Some(consul) = Consul::try_start_with(None, &[&ports_hcl, &tls_hcl]) else {
        return;
    };
    let ca = certs.path("consul-agent-ca.pem");
    let cert = certs.path("dc1-client-consul-0.pem");
    let key = certs.path("dc1-client-consul-0-key.pem");
    let tls = |ca: Option<&str>, client: bool, server_name: Option<&str>, verify: Option<bool>| {
        ConsulSettings {
            address: Some(format!("https://127.0.0.1:{https}")),
            tls: rewire::config::TlsSettings {
                ca: ca.map(Into::into),
                cert: client.then(|| cert.clone().into()),
                key: client.then(|| key.clone().into()),
                server_name: server_name.map(Into::into),
                verify,
            },
            ..ConsulSettings::default()
        }
    };
    let check = async |settings: ConsulSettings| -> Result<(), CatalogError> {
        let cat = ConsulCatalog::with_env(&settings, &catalog_config(&settings), &|_| None)?;
        cat.preflight().await?;
        cat.fetch(&Query::Services).await.map(|_| ())
    };

    check(tls(Some(&ca), true, None, None))
        .await
        .expect("CA and client certificate");
    check(tls(Some(&ca), true, Some("server.dc1.consul"), None))
        .await
        .expect("verified against the server name, connected to the address");
    // TLS mistakes are refusals with a hint naming the setting, not outages to wait out.
    let refused = |err: CatalogError, fix: &str| {
        let text = err.to_string();
        assert!(matches!(err, CatalogError::Denied { .. }), "{text}");
        assert!(text.contains(fix), "hint names {fix}: {text}");
    };
    let err = check(tls(Some(&ca), true, Some("wrong.dc1.consul"), None))
        .await
        .unwrap_err();
    refused(err, "CONSUL_TLS_SERVER_NAME");
    let err = check(tls(None, true, None, None)).await.unwrap_err();
    refused(err, "CONSUL_CACERT");
    check(tls(None, true, None, Some(false)))
        .await
        .expect("verify = false accepts the unknown CA");
    let err = check(tls(Some(&ca), false, None, None)).await.unwrap_err();
    refused(err, "CONSUL_CLIENT_CERT");
    // Plain HTTP to the TLS port, and TLS to the plain port.
    let plain = ConsulSettings {
        address: Some(format!("http://127.0.0.1:{https}")),
        ..ConsulSettings::default()
    };
    assert!(matches!(
        check(plain).await,
        Err(CatalogError::Denied { .. })
    ));
    let mut tls_to_plain = tls(Some(&ca), true, None, None);
    tls_to_plain.address = Some(format!("https://{}", consul.http_addr()));
    let err = check(tls_to_plain).await.unwrap_err();
    refused(err, "https port");

    // The same through Consul's environment variables only.
    let settings = ConsulSettings::default();
    let vars = [
        ("CONSUL_HTTP_ADDR", format!("127.0.0.1:{https}")),
        ("CONSUL_HTTP_SSL", "true".to_string()),
        ("CONSUL_CACERT", ca.clone()),
        ("CONSUL_CLIENT_CERT", cert.clone()),
        ("CONSUL_CLIENT_KEY", key.clone()),
        ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul".to_string()),
    ];
    let env = move |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let cat = ConsulCatalog::with_env(&settings, &catalog_config(&settings), &env).unwrap();
    cat.preflight().await.expect("TLS from the environment");
    assert!(
        cat.describe().contains("https://127.0.0.1"),
        "{}",
        cat.describe()
    );

    // CONSUL_CAPATH: a directory of CA files instead of one file.
    let ca_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&ca, ca_dir.path().join("consul-agent-ca.pem")).unwrap();
    let ca_dir = ca_dir.path().display().to_string();
    let vars = [
        ("CONSUL_HTTP_ADDR", format!("https://127.0.0.1:{https}")),
        ("CONSUL_CAPATH", ca_dir),
        ("CONSUL_CLIENT_CERT", cert.clone()),
        ("CONSUL_CLIENT_KEY", key.clone()),
    ];
    let env = move |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let cat = ConsulCatalog::with_env(&settings, &catalog_config(&settings), &env).unwrap();
    cat.preflight()
        .await
        .expect("CA directory from CONSUL_CAPATH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_of_one_service() {
    support::logs();
    let Some(consul) = Consul::try_start() else {
        return;
    };
    let cat = Arc::new(catalog(&consul.http_url(), None));
    let w = Watching::start(cat, &[Query::Service("big".into())]);
    w.until("empty list", |w| w.instances("big") == Some(vec![]))
        .await;
    // Through the catalog endpoint (no agent anti-entropy): fast enough for 1 000 entries.
    for n in 0..1000u32 {
        let body = format!(
            r#"{{"Node":"bulk","Address":"10.9.{}.{}","Service":{{"ID":"big-{n}","Service":"big","Port":{},"Tags":["t{}"]}},
                "Check":{{"CheckID":"big-{n}","ServiceID":"big-{n}","Name":"c","Status":"passing"}}}}"#,
            n / 250,
            n % 250 + 1,
            20000 + n,
            n % 3
        );
        consul.put_ok("/v1/catalog/register", body);
    }
    let start = Instant::now();
    w.until("1 000 passing instances", |w| {
        w.instances("big")
            .is_some_and(|l| l.len() == 1000 && l.iter().all(|i| i.status == Status::Passing))
    })
    .await;
    eprintln!(
        "1 000 instances in the store {:?} after the last registration",
        start.elapsed()
    );
    let list = w.instances("big").unwrap();
    assert!(
        list.iter()
            .all(|i| i.node == "bulk" && i.address.starts_with("10.9."))
    );
    w.stop().await;

    // One-shot reads of the same (~1.5 MB pretty-printed by a -dev agent) for the record.
    let cat = catalog(&consul.http_url(), None);
    let mut took = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let data = cat.fetch(&Query::Service("big".into())).await.unwrap();
        took.push(start.elapsed());
        assert!(matches!(data, Data::Instances(l) if l.len() == 1000));
    }
    took.sort();
    eprintln!("fetch of 1 000 instances: median {:?}", took[2]);
}
