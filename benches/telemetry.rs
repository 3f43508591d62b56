//! `/metrics` with 100 templates (the bound: under 5 ms).
//!
//! The board holds 100 written templates and 10 registrations; the metrics have seen renders,
//! checks, writes, reloads and reaction times for each template, so every histogram and
//! labelled counter is in the output. Measured twice: building the exposition text (what a
//! scrape costs rewire), and a whole HTTP GET through the real listener on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use rewire::model::{Data, Query};
use rewire::status::{Board, ServiceStatus, TemplateEvent};
use rewire::store::{Health, Store};
use rewire::telemetry::metrics::{CheckResult, Metrics, ReloadResult, RenderResult};
use rewire::telemetry::{Settings, Sources, http};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TEMPLATES: usize = 100;

fn sources() -> Sources {
    let metrics = Arc::new(Metrics::new());
    let board = Arc::new(Board::new(1, "/etc/rewire.toml".into(), "dir:/c".into()));
    let store = Arc::new(Store::new());
    store.update(Query::Services, Data::Services(vec![]));
    store.set_health(Health::Healthy);
    let names: Vec<String> = (0..TEMPLATES).map(|i| format!("template-{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        let ms = |n: u64| Duration::from_micros(n * 100 + i as u64);
        for _ in 0..5 {
            metrics.render(name, RenderResult::Ok, ms(3));
            metrics.check(name, CheckResult::Ok);
            metrics.reload(name, ReloadResult::Ok);
            metrics.written(name, Some(ms(5_000)));
        }
        metrics.check(name, CheckResult::Rejected);
        metrics.render(name, RenderResult::Pending, ms(1));
        board.record(
            name,
            &format!("/etc/out/{name}.conf"),
            SystemTime::now(),
            TemplateEvent::Written,
        );
    }
    board.update(|r| {
        for i in 0..10 {
            r.services.insert(
                format!("svc-{i}"),
                ServiceStatus {
                    id: format!("svc-{i}-host-80"),
                    name: format!("svc-{i}"),
                    address: "10.0.0.1".into(),
                    port: 80,
                    status: "passing".into(),
                    registered: true,
                    detail: String::new(),
                },
            );
        }
    });
    let (_tx, settings) = watch::channel(Settings {
        templates: names,
        catalog_grace: Duration::from_secs(30),
        status: false,
        backend: "dir",
    });
    Sources {
        metrics,
        board,
        store,
        settings,
        started: SystemTime::now(),
    }
}

fn get_metrics(addr: std::net::SocketAddr) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut body = Vec::with_capacity(256 * 1024);
    s.read_to_end(&mut body).expect("read");
    assert!(body.starts_with(b"HTTP/1.1 200"), "not a 200");
    body.len()
}

fn bench(c: &mut Criterion) {
    let sources = sources();
    let text = sources.metrics_text();
    eprintln!(
        "/metrics with {TEMPLATES} templates: {} bytes, {} lines",
        text.len(),
        text.lines().count()
    );
    c.bench_function("metrics_text_100_templates", |b| {
        b.iter(|| sources.metrics_text().len())
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let addr = runtime.block_on(async {
        let listener = http::bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        http::serve(listener, sources.clone(), stop.clone(), &tasks);
        addr
    });
    c.bench_function("http_get_metrics_100_templates", |b| {
        b.iter(|| get_metrics(addr))
    });
    stop.cancel();
}

criterion_group!(benches, bench);
criterion_main!(benches);
