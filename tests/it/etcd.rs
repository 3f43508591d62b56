//! The etcd backend against real etcd (Debian's etcd-server 3.4): watches that follow puts and
//! deletes, survive member loss, compaction and a silent stream; lease-based registration.
//!
//! Each test drives the library directly: an `EtcdCatalog` watching into a `Store` on a
//! background runtime, while the test thread writes to etcd over plain HTTP and polls the
//! store's snapshot.

use crate::support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rewire::catalog::etcd::EtcdCatalog;
use rewire::catalog::{Catalog, CatalogError};
use rewire::config::{Backend, CatalogConfig, EtcdSettings, Retry, Secret};
use rewire::model::{Data, Instance, Query, Registration, Status};
use rewire::store::{Health, Store};
use support::etcd::{self as etcd_api, Etcd, EtcdCluster, EtcdGateway};
use support::{TIMEOUT, http, poll_until, wait_for};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/rewire";

fn settings(endpoints: Vec<String>) -> EtcdSettings {
    EtcdSettings {
        endpoints,
        prefix: PREFIX.into(),
        ..EtcdSettings::default()
    }
}

fn catalog_config(settings: &EtcdSettings, block_wait: Duration) -> CatalogConfig {
    CatalogConfig {
        backend: Backend::Etcd(settings.clone()),
        block_wait,
        retry: Retry {
            base: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        deregister_after: Duration::from_secs(600),
        max_file: rewire::config::DEFAULT_MAX_FILE,
        max_response: rewire::config::DEFAULT_MAX_RESPONSE,
    }
}

fn instance_json(addr: &str, port: u16, status: &str) -> String {
    format!(r#"{{"address":"{addr}","port":{port},"tags":["t"],"status":"{status}"}}"#)
}

fn service_key(service: &str, id: &str) -> String {
    format!("{PREFIX}/services/{service}/{id}")
}

fn kv_key(path: &str) -> String {
    format!("{PREFIX}/kv/{path}")
}

/// A catalog watching into a store on its own runtime; stopped when dropped.
struct Watching {
    rt: Option<tokio::runtime::Runtime>,
    catalog: Arc<EtcdCatalog>,
    store: Arc<Store>,
    wanted: watch::Sender<BTreeSet<Query>>,
    stop: CancellationToken,
}

impl Watching {
    fn start(settings: EtcdSettings, block_wait: Duration, queries: &[Query]) -> Watching {
        support::logs();
        let cfg = catalog_config(&settings, block_wait);
        let catalog = Arc::new(EtcdCatalog::new(&settings, &cfg).expect("valid etcd settings"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let store = Arc::new(Store::new());
        let (wanted, rx) = watch::channel(queries.iter().cloned().collect());
        let stop = CancellationToken::new();
        {
            let (catalog, store, stop) = (catalog.clone(), store.clone(), stop.clone());
            rt.spawn(async move { catalog.watch(rx, store, stop).await });
        }
        Watching {
            rt: Some(rt),
            catalog,
            store,
            wanted,
            stop,
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("runtime").block_on(f)
    }

    fn data(&self, q: &Query) -> Option<Data> {
        self.store.snapshot().get(q).map(|e| e.data.clone())
    }

    fn instances(&self, service: &str) -> Vec<Instance> {
        match self.data(&Query::Service(service.into())) {
            Some(Data::Instances(list)) => list.iter().map(|i| Instance::clone(i)).collect(),
            _ => Vec::new(),
        }
    }

    fn ids(&self, service: &str) -> Vec<String> {
        self.instances(service).into_iter().map(|i| i.id).collect()
    }

    fn key(&self, path: &str) -> Option<Option<String>> {
        match self.data(&Query::Key(path.into())) {
            Some(Data::Key(v)) => Some(v),
            _ => None,
        }
    }

    fn keys(&self, prefix: &str) -> Vec<(String, String)> {
        match self.data(&Query::Keys(prefix.into())) {
            Some(Data::Keys(list)) => list.into_iter().map(|kv| (kv.path, kv.value)).collect(),
            _ => Vec::new(),
        }
    }

    fn health(&self) -> Health {
        self.store.snapshot().health.clone()
    }

    #[track_caller]
    fn wait(&self, desc: &str, mut f: impl FnMut(&Watching) -> bool) {
        wait_for(desc, TIMEOUT, || f(self));
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn registration(id: &str, port: u16, ttl: Duration) -> Registration {
    Registration {
        id: id.into(),
        name: "api".into(),
        address: "127.0.0.1".into(),
        port,
        tags: vec!["v1".into()],
        meta: Default::default(),
        ttl,
        deregister_after: Duration::from_secs(60),
        status: Status::Passing,
    }
}

/// The lease a key is attached to (0 = none or no key).
fn lease_of(client_addr: &str, key: &str) -> i64 {
    etcd_api::int(&etcd_api::kv_range(client_addr, key)["lease"]).unwrap_or(0)
}

#[test]
fn instances_and_keys_follow_puts_and_deletes() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let a = etcd.client_addr();
    etcd.put(
        &service_key("web", "w1"),
        &instance_json("10.0.0.1", 80, "passing"),
    );
    etcd.put(&kv_key("app/name"), "shop");
    etcd.put("/elsewhere/x", "not ours");

    let queries = [
        Query::Service("web".into()),
        Query::Services,
        Query::Key("app/name".into()),
        Query::Key("app/missing".into()),
        Query::Keys("app/".into()),
    ];
    let w = Watching::start(
        settings(etcd.endpoints()),
        Duration::from_secs(60),
        &queries,
    );
    w.wait("initial read", |w| w.ids("web") == ["w1"]);
    assert_eq!(w.key("app/name"), Some(Some("shop".into())));
    assert_eq!(
        w.key("app/missing"),
        Some(None),
        "a missing key is an answer"
    );
    assert_eq!(w.health(), Health::Healthy);

    etcd.put(
        &service_key("web", "w2"),
        &instance_json("10.0.0.2", 80, "critical"),
    );
    etcd.put(
        &service_key("db", "d1"),
        &instance_json("10.0.0.9", 5432, "passing"),
    );
    etcd.put(
        &service_key("web", "bad"),
        &instance_json("not an address!", 80, "passing"),
    );
    etcd.put(&kv_key("app/port"), "8080");
    w.wait("puts followed", |w| {
        w.ids("web") == ["w1", "w2"] && w.keys("app/").len() == 2
    });
    let web = w.instances("web");
    assert_eq!(web[1].status, Status::Critical);
    assert_eq!(web[1].address, "10.0.0.2");
    w.wait(
        "services() lists db",
        |w| matches!(w.data(&Query::Services), Some(Data::Services(s)) if s.len() == 2),
    );

    etcd.delete(&service_key("web", "w1"));
    etcd.delete(&kv_key("app/name"));
    w.wait("deletes followed", |w| {
        w.ids("web") == ["w2"] && w.key("app/name") == Some(None)
    });

    // A query wanted later is answered from memory at once.
    let mut more: BTreeSet<Query> = queries.iter().cloned().collect();
    more.insert(Query::Service("db".into()));
    w.wanted.send_replace(more);
    w.wait("new query answered", |w| w.ids("db") == ["d1"]);

    // fetch/fetch_many read once and agree with the watch.
    let fetched = w
        .block_on(w.catalog.fetch(&Query::Service("web".into())))
        .unwrap();
    assert_eq!(
        Some(fetched.normalize()),
        w.data(&Query::Service("web".into()))
    );
    let many = w.block_on(w.catalog.fetch_many(&queries));
    assert_eq!(many.len(), queries.len());
    for (q, d) in many {
        assert_eq!(Some(d.unwrap().normalize()), w.data(&q), "{q}");
    }
    // A username against a cluster without authentication: requests go without a token.
    let mut with_user = settings(etcd.endpoints());
    with_user.username = Some("someone".into());
    with_user.password = Some(Secret::new("pw"));
    let cat = EtcdCatalog::new(
        &with_user,
        &catalog_config(&with_user, Duration::from_secs(60)),
    )
    .unwrap();
    w.block_on(cat.preflight()).unwrap();
    assert_eq!(
        w.block_on(cat.fetch(&Query::Key("app/port".into())))
            .unwrap(),
        Data::Key(Some("8080".into()))
    );
    drop(w);
    assert!(etcd_api::kv_get(&a, "/elsewhere/x").is_some());
}

#[test]
fn registration_lease_expiry_removes_the_instance() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let w = Watching::start(
        settings(etcd.endpoints()),
        Duration::from_secs(60),
        &[Query::Service("api".into())],
    );
    w.wait("initial read", |w| {
        w.data(&Query::Service("api".into())).is_some()
    });

    let reg = registration("api-1", 9001, Duration::from_secs(1));
    w.block_on(w.catalog.register(&reg)).unwrap();
    w.wait("registered instance visible", |w| w.ids("api") == ["api-1"]);
    let i = &w.instances("api")[0];
    assert_eq!(
        (i.port, i.status, i.tags.clone()),
        (9001, Status::Passing, vec!["v1".into()])
    );
    assert!(!i.node.is_empty(), "registrations name their node");

    // Passing checks keep it alive well past its TTL (etcd's minimum TTL here is 1 s).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        w.block_on(w.catalog.update_ttl(&reg, Status::Passing, "ok"))
            .unwrap();
        assert_eq!(w.ids("api"), ["api-1"], "expired despite keepalives");
        std::thread::sleep(Duration::from_millis(250));
    }

    // No more passes: etcd deletes the key when the lease lapses.
    w.wait("instance gone after its TTL", |w| w.ids("api").is_empty());
}

#[test]
fn failing_check_turns_critical_at_once() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let w = Watching::start(
        settings(etcd.endpoints()),
        Duration::from_secs(60),
        &[Query::Service("api".into())],
    );
    let reg = registration("api-1", 9001, Duration::from_secs(30));
    w.block_on(w.catalog.register(&reg)).unwrap();
    w.wait("registered", |w| w.ids("api") == ["api-1"]);
    let lease = lease_of(&etcd.client_addr(), &service_key("api", "api-1"));
    assert_ne!(lease, 0, "the instance hangs on a lease");

    let t = Instant::now();
    w.block_on(
        w.catalog
            .update_ttl(&reg, Status::Critical, "connection refused"),
    )
    .unwrap();
    w.wait("critical", |w| {
        w.instances("api")
            .first()
            .is_some_and(|i| i.status == Status::Critical)
    });
    // "At once": long before the 30 s TTL could lapse.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        lease_of(&etcd.client_addr(), &service_key("api", "api-1")),
        lease,
        "same lease"
    );
    let stored = etcd.get(&service_key("api", "api-1")).unwrap();
    assert!(stored.contains("connection refused"), "{stored}");

    w.block_on(w.catalog.update_ttl(&reg, Status::Passing, "ok"))
        .unwrap();
    w.wait("passing again", |w| {
        w.instances("api")
            .first()
            .is_some_and(|i| i.status == Status::Passing)
    });

    w.block_on(w.catalog.deregister(&reg)).unwrap();
    w.wait("deregistered", |w| w.ids("api").is_empty());
    assert!(etcd.get(&service_key("api", "api-1")).is_none());
    // Deregistering what is gone is fine.
    w.block_on(w.catalog.deregister(&reg)).unwrap();
    let r = w.block_on(w.catalog.update_ttl(&reg, Status::Passing, ""));
    assert!(
        matches!(r, Err(CatalogError::NotRegistered { .. })),
        "{r:?}"
    );
}

#[test]
fn keepalive_on_a_lost_lease_registers_again() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let a = etcd.client_addr();
    let w = Watching::start(
        settings(etcd.endpoints()),
        Duration::from_secs(60),
        &[Query::Service("api".into())],
    );
    let reg = registration("api-1", 9001, Duration::from_secs(30));
    w.block_on(w.catalog.register(&reg)).unwrap();
    w.wait("registered", |w| w.ids("api") == ["api-1"]);

    let lease = lease_of(&a, &service_key("api", "api-1"));
    etcd_api::lease_revoke(&a, lease);
    w.wait("gone with its lease", |w| w.ids("api").is_empty());

    w.block_on(w.catalog.update_ttl(&reg, Status::Passing, "ok"))
        .unwrap();
    w.wait("back after the keepalive", |w| w.ids("api") == ["api-1"]);
    let new_lease = lease_of(&a, &service_key("api", "api-1"));
    assert!(new_lease != 0 && new_lease != lease);
}

/// Puts `key` through any running member, retrying others (a write in flight when the leader
/// dies hangs or fails).
fn put_anywhere(cluster: &EtcdCluster, alive: &[usize], key: &str, value: &str) {
    let body = etcd_api::put_request(key, value).to_string();
    let ok = poll_until(TIMEOUT, || {
        alive.iter().any(|&i| {
            http::post(&cluster.client_addr(i), "/v3/kv/put", &body)
                .timeout(Duration::from_secs(2))
                .try_send()
                .is_ok_and(|r| r.status == 200)
        })
    });
    assert!(ok, "could not put {key} on any member");
}

#[test]
fn leader_killed_mid_watch_loses_nothing() {
    let Some(mut cluster) = EtcdCluster::try_start(3) else {
        return;
    };
    let leader = cluster.wait_leader(TIMEOUT).expect("a leader");
    // The leader first: the watch starts on the member about to die.
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(leader);
    let w = Watching::start(
        settings(endpoints),
        Duration::from_secs(60),
        &[Query::Keys("n/".into())],
    );
    w.wait("initial read", |w| {
        w.data(&Query::Keys("n/".into())).is_some()
    });

    const N: usize = 60;
    let all: Vec<usize> = (0..3).collect();
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    for n in 0..N {
        if n == N / 2 {
            cluster.kill_member(leader);
        }
        let alive = if n < N / 2 { &all } else { &survivors };
        put_anywhere(
            &cluster,
            alive,
            &kv_key(&format!("n/{n:03}")),
            &n.to_string(),
        );
    }
    w.wait("every key written across the failover", |w| {
        w.keys("n/").len() == N
    });
    let got = w.keys("n/");
    for (n, (path, value)) in got.iter().enumerate() {
        assert_eq!(
            (path.as_str(), value.as_str()),
            (format!("n/{n:03}").as_str(), n.to_string().as_str())
        );
    }
    assert!(cluster.wait_leader(TIMEOUT).is_some());
    // Still following after the failover.
    put_anywhere(&cluster, &survivors, &kv_key("n/after"), "x");
    w.wait("later writes follow", |w| w.keys("n/").len() == N + 1);
    assert_eq!(w.health(), Health::Healthy);
}

#[test]
fn compaction_while_cut_off_converges() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let a = etcd.client_addr();
    let mut gw = EtcdGateway::start(&etcd.endpoints());
    for n in 0..5 {
        etcd.put(&kv_key(&format!("c/{n}")), "old");
    }
    etcd.put(
        &service_key("web", "w1"),
        &instance_json("10.0.0.1", 80, "passing"),
    );
    let w = Watching::start(
        settings(vec![gw.endpoint()]),
        Duration::from_secs(60),
        &[Query::Keys("c/".into()), Query::Service("web".into())],
    );
    w.wait("initial read", |w| {
        w.keys("c/").len() == 5 && w.ids("web") == ["w1"]
    });

    gw.kill();
    w.wait("outage noticed", |w| {
        matches!(w.health(), Health::Unreachable(_))
    });
    assert_eq!(
        w.keys("c/").len(),
        5,
        "last good data kept through the outage"
    );

    // Changes the watch cannot see, then history up to now is compacted away.
    etcd.delete(&kv_key("c/0"));
    etcd.put(&kv_key("c/1"), "new");
    etcd.put(&kv_key("c/9"), "added");
    etcd.delete(&service_key("web", "w1"));
    etcd.put(
        &service_key("web", "w2"),
        &instance_json("10.0.0.2", 80, "passing"),
    );
    etcd_api::compact(&a, etcd_api::revision(&a));

    gw.restart();
    w.wait("converged after compaction", |w| {
        w.ids("web") == ["w2"]
            && w.keys("c/")
                == [
                    ("c/1".to_string(), "new".to_string()),
                    ("c/2".into(), "old".into()),
                    ("c/3".into(), "old".into()),
                    ("c/4".into(), "old".into()),
                    ("c/9".into(), "added".into()),
                ]
    });
    w.wait("healthy again", |w| w.health() == Health::Healthy);
    etcd.put(&kv_key("c/10"), "later");
    w.wait("following again", |w| w.keys("c/").len() == 6);
}

#[test]
fn outage_keeps_last_data_and_resumes_without_loss() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let mut gw = EtcdGateway::start(&etcd.endpoints());
    etcd.put(&kv_key("o/a"), "1");
    let w = Watching::start(
        settings(vec![gw.endpoint()]),
        Duration::from_secs(60),
        &[Query::Keys("o/".into())],
    );
    w.wait("initial read", |w| w.keys("o/").len() == 1);
    gw.kill();
    w.wait("outage noticed", |w| {
        matches!(w.health(), Health::Unreachable(_))
    });
    etcd.put(&kv_key("o/b"), "2");
    etcd.put(&kv_key("o/a"), "1b");
    assert_eq!(w.keys("o/"), [("o/a".to_string(), "1".to_string())]);
    gw.restart();
    w.wait("resumed from the last revision", |w| {
        w.keys("o/")
            == [
                ("o/a".to_string(), "1b".to_string()),
                ("o/b".into(), "2".into()),
            ]
    });
    assert_eq!(w.health(), Health::Healthy);
}

#[test]
fn a_thousand_instances_then_single_changes() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let a = etcd.client_addr();
    // One transaction per 100 puts keeps the setup quick.
    for chunk in 0..10 {
        let ops: Vec<serde_json::Value> = (chunk * 100..chunk * 100 + 100)
            .map(|n| {
                let key = service_key("big", &format!("i{n:04}"));
                let addr = format!("10.1.{}.{}", n / 200, n % 200 + 1);
                let put = etcd_api::put_request(&key, &instance_json(&addr, 8000, "passing"));
                serde_json::json!({ "request_put": put })
            })
            .collect();
        etcd_api::v3(&a, "/v3/kv/txn", &serde_json::json!({ "success": ops }));
    }
    let q = Query::Service("big".into());
    let w = Watching::start(
        settings(etcd.endpoints()),
        Duration::from_secs(60),
        std::slice::from_ref(&q),
    );
    w.wait("1 000 instances", |w| w.instances("big").len() == 1000);

    let mut changes = w.store.subscribe();
    let mut lat = Vec::new();
    for n in 0..30u16 {
        let version = w.store.snapshot().version;
        etcd.put(
            &service_key("big", "i0500"),
            &instance_json("10.1.2.101", 9000 + n, "passing"),
        );
        let acked = Instant::now();
        let seen = w.block_on(async {
            tokio::time::timeout(TIMEOUT, async {
                loop {
                    let snap = changes.borrow_and_update().clone();
                    let found = snap.get(&q).is_some_and(|e| {
                        matches!(&e.data, Data::Instances(l) if l.iter().any(|i| i.id == "i0500" && i.port == 9000 + n))
                    });
                    if found {
                        return snap.version;
                    }
                    changes.changed().await.expect("store alive");
                }
            })
            .await
        });
        lat.push(acked.elapsed());
        let seen = seen.expect("single change reached the store");
        // One event, one store update: nothing else was republished.
        assert_eq!(seen, version + 1);
    }
    lat.sort();
    eprintln!(
        "1 000 instances: put acked -> store updated: median {:?}, p90 {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        lat[lat.len() - 1]
    );
    assert_eq!(w.instances("big").len(), 1000);
}

#[test]
fn silent_stream_is_replaced_after_the_progress_timeout() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let proxy = FreezingProxy::start(etcd.port());
    etcd.put(&kv_key("s/a"), "1");
    let w = Watching::start(
        settings(vec![format!("http://127.0.0.1:{}", proxy.port)]),
        Duration::from_secs(1),
        &[Query::Keys("s/".into())],
    );
    w.wait("initial read", |w| w.keys("s/").len() == 1);
    // The open watch connection goes half-open: no bytes, no FIN. New connections still work.
    proxy.freeze_existing();
    etcd.put(&kv_key("s/b"), "2");
    w.wait("change seen through a fresh connection", |w| {
        w.keys("s/").len() == 2
    });
    assert!(proxy.accepted() >= 2);
}

#[test]
fn auth_token_is_used_and_renewed_when_invalidated() {
    let Some(mut etcd) = Etcd::try_start() else {
        return;
    };
    let a = etcd.client_addr();
    let root = serde_json::json!({"name": "root", "password": "rootpw"});
    etcd_api::v3(&a, "/v3/auth/user/add", &root);
    etcd_api::v3(
        &a,
        "/v3/auth/user/grant",
        &serde_json::json!({"user": "root", "role": "root"}),
    );
    etcd_api::v3(&a, "/v3/auth/enable", &serde_json::json!({}));
    let token = || {
        let v = etcd_api::v3(&a, "/v3/auth/authenticate", &root);
        v["token"].as_str().expect("token").to_string()
    };
    let as_root = |path: &str, body: serde_json::Value| {
        let r = http::post(&a, path, body.to_string())
            .header("Authorization", &token())
            .send();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    };
    let put = |key: &str, value: &str| as_root("/v3/kv/put", etcd_api::put_request(key, value));
    // Setting the password again invalidates every token the user holds.
    let invalidate_tokens = || as_root("/v3/auth/user/changepw", root.clone());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut bad = settings(etcd.endpoints());
    bad.username = Some("root".into());
    bad.password = Some(Secret::new("wrong-pw"));
    let cat = EtcdCatalog::new(&bad, &catalog_config(&bad, Duration::from_secs(60))).unwrap();
    let r = rt.block_on(cat.preflight());
    assert!(matches!(r, Err(CatalogError::Denied { .. })), "{r:?}");
    assert!(
        !format!("{r:?} {r:?}").contains("wrong-pw"),
        "password leaked: {r:?}"
    );
    let anonymous = settings(etcd.endpoints());
    let cat = EtcdCatalog::new(
        &anonymous,
        &catalog_config(&anonymous, Duration::from_secs(60)),
    )
    .unwrap();
    let r = rt.block_on(cat.preflight());
    assert!(matches!(r, Err(CatalogError::Denied { .. })), "{r:?}");

    put(&kv_key("auth/a"), "1");
    let mut good = settings(etcd.endpoints());
    good.username = Some("root".into());
    good.password = Some(Secret::new("rootpw"));
    let w = Watching::start(
        good,
        Duration::from_secs(60),
        &[Query::Keys("auth/".into())],
    );
    w.block_on(w.catalog.preflight()).unwrap();
    w.wait("read with a token", |w| w.keys("auth/").len() == 1);
    put(&kv_key("auth/b"), "2");
    w.wait("watch with a token", |w| w.keys("auth/").len() == 2);

    // The watch reconnects (member restart) with a token etcd no longer accepts.
    invalidate_tokens();
    etcd.restart();
    put(&kv_key("auth/c"), "3");
    w.wait("watch renewed its token", |w| w.keys("auth/").len() == 3);

    // A unary call with a stale token authenticates again by itself.
    invalidate_tokens();
    let reg = registration("api-1", 9001, Duration::from_secs(30));
    w.block_on(w.catalog.register(&reg)).unwrap();
    w.block_on(w.catalog.deregister(&reg)).unwrap();
}

/// A TCP proxy whose existing connections can be frozen: no byte passes either way and no
/// socket closes, like a peer behind a partition. Connections made later pass normally.
struct FreezingProxy {
    port: u16,
    frozen_before: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl FreezingProxy {
    fn start(upstream: u16) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let frozen_before = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        {
            let (frozen_before, accepted, done, conns) = (
                frozen_before.clone(),
                accepted.clone(),
                done.clone(),
                conns.clone(),
            );
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    conns
                        .lock()
                        .unwrap()
                        .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        let frozen_before = frozen_before.clone();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16384];
                            while let Ok(k) = from.read(&mut buf) {
                                if k == 0 {
                                    let _ = to.shutdown(Shutdown::Write);
                                    break;
                                }
                                if n <= frozen_before.load(Ordering::SeqCst) {
                                    // Frozen: swallow everything, close nothing.
                                    continue;
                                }
                                if to.write_all(&buf[..k]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                }
            });
        }
        FreezingProxy {
            port,
            frozen_before,
            accepted,
            done,
            conns,
        }
    }

    fn freeze_existing(&self) {
        self.frozen_before
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Runs openssl in `dir`; panics with its output on failure.
#[track_caller]
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA, a server certificate valid only for the name `etcd.test` (not for 127.0.0.1),
/// and a client certificate.
fn make_certs(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=rewire-test-ca",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:etcd.test\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        openssl(
            dir,
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={who}"),
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[test]
fn tls_with_client_certificates_and_server_name() {
    let Some(bin) = support::etcd::binary() else {
        support::skip::<()>("etcd", "binary not found", false);
        return;
    };
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        support::skip::<()>(
            "openssl",
            "not found (needed to make test certificates)",
            false,
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let data = support::process::ShmDir::new("etcd-tls");
    let (port, peer) = (support::free_port(), support::free_port());
    let client_url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = etcd_api::etcd_command(&bin);
    cmd.arg("--data-dir")
        .arg(data.path())
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--cert-file", "server.pem", "--key-file", "server.key"])
        .args(["--client-cert-auth", "--trusted-ca-file", "ca.pem"])
        .current_dir(d);
    let _etcd = support::process::Daemon::spawn("etcd (tls)", cmd, &d.join("etcd.log"))
        .expect("spawn etcd");

    let tls_settings = |client_cert: bool, server_name: Option<&str>| {
        let mut s = settings(vec![client_url.clone()]);
        s.tls.ca = Some(d.join("ca.pem"));
        if client_cert {
            s.tls.cert = Some(d.join("client.pem"));
            s.tls.key = Some(d.join("client.key"));
        }
        s.tls.server_name = server_name.map(str::to_string);
        s
    };
    let good = tls_settings(true, Some("etcd.test"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let preflight = |s: &EtcdSettings| {
        let cat = EtcdCatalog::new(s, &catalog_config(s, Duration::from_secs(60))).unwrap();
        rt.block_on(cat.preflight())
    };
    let mut last = None;
    let up = poll_until(TIMEOUT, || {
        last = Some(preflight(&good));
        last.as_ref().is_some_and(Result::is_ok)
    });
    assert!(
        up,
        "etcd over TLS never answered: {last:?}\n{}",
        support::process::tail(&d.join("etcd.log"), 20)
    );

    // Without server_name the certificate (etcd.test) does not match 127.0.0.1.
    let r = preflight(&tls_settings(true, None));
    assert!(matches!(r, Err(CatalogError::Unreachable { .. })), "{r:?}");
    // etcd requires a client certificate.
    let r = preflight(&tls_settings(false, Some("etcd.test")));
    assert!(r.is_err(), "{r:?}");

    let w = Watching::start(
        good,
        Duration::from_secs(60),
        &[Query::Service("api".into())],
    );
    w.wait("initial read", |w| {
        w.data(&Query::Service("api".into())).is_some()
    });
    let reg = registration("api-1", 9001, Duration::from_secs(30));
    w.block_on(w.catalog.register(&reg)).unwrap();
    w.wait("registered over TLS", |w| w.ids("api") == ["api-1"]);
    w.block_on(w.catalog.update_ttl(&reg, Status::Passing, ""))
        .unwrap();
    w.block_on(w.catalog.deregister(&reg)).unwrap();
    w.wait("deregistered over TLS", |w| w.ids("api").is_empty());
}
