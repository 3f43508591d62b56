//! Render cost of the shipped nginx template with 10, 1 000 and 10 000 healthy instances.
//!
//! Measures a render against a snapshot whose template values are already converted, the
//! first render after one of the instances changed (what the daemon does on every change: the
//! other instances' values are reused), and the first render of data never seen before (a
//! fresh start: every instance is converted once). And what putting a backend's answer in
//! template order costs the store, when the backend keeps that order and when it does not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rewire::config::{CheckMode, DEFAULT_WAIT, TemplateConfig, WriteMode};
use rewire::model::{Data, Instance, Query, Status};
use rewire::render::template::{Engine, Rendered};
use rewire::store::Store;

fn instances(n: usize) -> Vec<Arc<Instance>> {
    (0..n)
        .map(|i| {
            Arc::new(Instance {
                id: format!("web-{i}"),
                name: "web".into(),
                node: format!("node-{}", i % 50),
                address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                port: 8080,
                tags: vec!["v1".into()],
                meta: BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))]),
                status: Status::Passing,
            })
        })
        .collect()
}

fn engine() -> Engine {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates/nginx.conf.tera");
    Engine::load(
        &[TemplateConfig {
            name: "nginx".into(),
            source,
            destination: "/dev/null".into(),
            perms: None,
            check: None,
            check_mode: CheckMode::Temp,
            reload: None,
            wait: DEFAULT_WAIT,
            write: WriteMode::Atomic,
            backup: false,
            runtime: None,
            limits: rewire::config::DEFAULT_RENDER_LIMITS,
        }],
        "dir",
    )
    .expect("the shipped template parses")
}

fn store_with(list: Vec<Arc<Instance>>) -> Store {
    let store = Store::new();
    store.update_many([
        (
            Query::Services,
            Data::services_from(list.iter().map(|i| &**i)),
        ),
        (Query::Service("web".into()), Data::Instances(list)),
        (
            Query::Key("nginx/listen".into()),
            Data::Key(Some("8080".into())),
        ),
    ]);
    // Every other setting the template reads: absent, so its default applies.
    store.update_many(
        [
            "nginx/worker_connections",
            "nginx/keepalive_timeout",
            "nginx/upstream_keepalive",
            "nginx/access_log",
        ]
        .map(|k| (Query::Key(k.into()), Data::Key(None))),
    );
    store
}

fn bench(c: &mut Criterion) {
    let engine = engine();
    let mut g = c.benchmark_group("render nginx.conf");
    for n in [10usize, 1_000, 10_000] {
        let list = instances(n);
        let store = store_with(list.clone());
        let snap = store.snapshot();
        // Warm the per-snapshot value cache, as the daemon's first render after a change does.
        assert!(matches!(
            engine.render("nginx", &snap),
            Rendered::Done { .. }
        ));
        g.bench_with_input(BenchmarkId::new("cached", n), &n, |b, _| {
            b.iter(|| engine.render("nginx", &snap))
        });
        g.bench_with_input(BenchmarkId::new("one changed", n), &n, |b, _| {
            let mut port: u16 = 9000;
            b.iter_batched(
                || {
                    // The rendered snapshot, then one instance moves to a new port.
                    let store = store_with(list.clone());
                    engine.render("nginx", &store.snapshot());
                    let mut changed = list.clone();
                    let mut moved = Instance::clone(&changed[n / 2]);
                    port = port % 60_000 + 1;
                    moved.port = port;
                    changed[n / 2] = Arc::new(moved);
                    store.update(Query::Service("web".into()), Data::Instances(changed));
                    store.snapshot()
                },
                |snap: Arc<_>| (engine.render("nginx", &snap), snap),
                criterion::BatchSize::LargeInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("first sight", n), &n, |b, _| {
            b.iter_batched(
                || {
                    // A new snapshot whose web entry has not been converted yet.
                    let store = store_with(list.clone());
                    store.snapshot()
                },
                |snap: Arc<_>| (engine.render("nginx", &snap), snap),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // The store puts every answer in template order. A backend that hands the list over in that
    // order already (the etcd mirror) costs one pass; one in id order (the dir tree) a sort.
    let mut g = c.benchmark_group("store order, 1 000 instances");
    let list = instances(1_000);
    let mut by_id = list.clone();
    by_id.sort_by(|a, b| a.id.cmp(&b.id));
    for (name, input) in [("in template order", &list), ("in id order", &by_id)] {
        g.bench_function(name, |b| {
            b.iter(|| Data::Instances(input.clone()).normalize())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
