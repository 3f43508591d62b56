//! The scale benchmark's short version (benches/scale): 10 scale events under load through a
//! real nginx and a real HAProxy (master-worker), reloaded by rewire on every change, and
//! HAProxy updated through its Runtime API. These tests pin that the scenario runs to the end
//! and measures what it promises (requests, failures by kind, latency, signal -> out of the
//! front's config, start -> first request); they do not judge the failure count of reload
//! modes, which depends on a race (README, "Scaling without failed requests"). The runtime
//! mode must fail no request and reload nothing.
//!
//! Backends are this test binary run again: `scale_backend_role` serves (or health-checks) when
//! `REWIRE_SCALE_ROLE` is set, and passes at once otherwise.

// Shared with the bench (which uses all of it).
#[allow(dead_code)]
#[path = "../../benches/scale/backend.rs"]
mod backend;
#[allow(dead_code)]
#[path = "../../benches/support/inotify.rs"]
mod inotify;
#[allow(dead_code)]
#[path = "../../benches/scale/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../../benches/scale/procs.rs"]
mod procs;
#[allow(dead_code)]
#[path = "../../benches/scale/scenario.rs"]
mod scenario;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use scenario::{Mode, Options, Report};

/// The test that becomes a backend server or health check when asked through the environment.
const ROLE_TEST: &str = "scale_backend_role";

/// One scenario at a time: two at once would share the machine's two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn scale_backend_role() {
    if let Some(code) = backend::run_role_from_env() {
        // The role ran to completion in this process; its status is the process's.
        let ok = code == std::process::ExitCode::SUCCESS;
        std::process::exit(if ok { 0 } else { 1 });
    }
}

/// The short version: 4 backends, 10 events 1.5 s apart, drain 5 s, the front renders at once.
fn short(mode: Mode) -> Option<Options> {
    let program = match mode {
        Mode::Nginx => ("nginx", "REWIRE_NGINX_BIN"),
        Mode::Haproxy | Mode::HaproxyRuntime => ("haproxy", "REWIRE_HAPROXY_BIN"),
    };
    if scenario::find_program(program.0, program.1).is_none() {
        let required = matches!(
            std::env::var("REWIRE_REQUIRE_COMPONENTS").as_deref(),
            Ok("1") | Ok("true") | Ok("yes")
        );
        assert!(!required, "{} is not installed", program.0);
        eprintln!(
            "SKIPPED: {} not installed (apt-get install nginx-light haproxy, or run scripts/test)",
            program.0
        );
        return None;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut o = Options::new(
        mode,
        PathBuf::from(env!("CARGO_BIN_EXE_rewire")),
        backend::SelfExe::Test {
            exe,
            test: ROLE_TEST.into(),
        },
    );
    o.backends = 4;
    o.events = 10;
    o.drain = Duration::from_secs(5);
    o.wait = Some((Duration::ZERO, Duration::ZERO));
    o.rps = 100.0;
    o.connections = 10;
    Some(o)
}

fn run(o: &Options) -> Report {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let report = scenario::run(o).unwrap_or_else(|e| panic!("{} did not run: {e:#}", o.title()));
    eprintln!("\n{}\n", report.table());
    report
}

/// Completion and numbers: the load ran the whole time, every stopped backend left the front's
/// config, every started one served requests, and the latencies are real.
#[track_caller]
fn assert_measured(r: &Report, o: &Options) {
    let table = r.table();
    // 10 events 1.5 s apart plus warm-up and settling (the drain): well over 15 s of load, at
    // the asked rate give or take a busy machine.
    assert!(r.load_time >= Duration::from_secs(15), "{table}");
    assert!(
        r.tally.requests() as f64 >= 0.5 * o.rps * r.load_time.as_secs_f64(),
        "too few requests:\n{table}"
    );
    assert!(
        r.tally.ok as usize > r.failed(),
        "most requests should pass:\n{table}"
    );
    assert_eq!(r.scale_downs, o.events / 2, "{table}");
    assert_eq!(r.scale_ups, o.events / 2, "{table}");
    assert_eq!(
        r.out_of_config.len(),
        r.scale_downs,
        "every stopped backend leaves the front's config:\n{table}"
    );
    // Every new backend serves requests, unless HAProxy dropped the reload that added it (it
    // ignores a SIGUSR2 during the previous reload; the report counts those).
    assert!(
        r.start_to_served.len() == r.scale_ups || r.lost_reloads() > 0,
        "every new backend serves requests:\n{table}"
    );
    // A graceful stop deregisters at once, and the front renders at once (wait 0): the config
    // follows well within the drain.
    assert!(
        r.out_of_config.iter().all(|d| *d < o.drain),
        "a stopped backend stayed in the config past its drain:\n{table}"
    );
    let (p50, p99, _) = r.latency_ms();
    assert!(p50 > 0.0 && p99 >= p50, "{table}");
    if o.mode != Mode::HaproxyRuntime {
        assert!(
            r.reloads_sent.is_some_and(|n| n > 0),
            "the front reloaded:\n{table}"
        );
    }
    if o.mode != Mode::Nginx {
        assert!(
            r.reloads_done.is_some(),
            "HAProxy's reload counter:\n{table}"
        );
    }
}

#[test]
fn nginx_reload_mode_runs_ten_scale_events_and_reports_them() {
    let Some(o) = short(Mode::Nginx) else { return };
    let r = run(&o);
    assert_measured(&r, &o);
}

#[test]
fn haproxy_reload_mode_runs_ten_scale_events_and_reports_them() {
    let Some(o) = short(Mode::Haproxy) else {
        return;
    };
    let r = run(&o);
    assert_measured(&r, &o);
}

#[test]
fn haproxy_runtime_mode_fails_no_request_and_never_reloads_during_ten_scale_events() {
    let Some(o) = short(Mode::HaproxyRuntime) else {
        return;
    };
    let r = run(&o);
    assert_measured(&r, &o);
    let table = r.table();
    // The table lists the failures by kind (connect, unsent, reset, eof, non-2xx, timeout)
    // with samples.
    assert_eq!(
        r.failed(),
        0,
        "graceful scale-downs failed requests:\n{table}"
    );
    assert_eq!(r.reloads_sent, Some(0), "rewire reloaded HAProxy:\n{table}");
    assert_eq!(r.reloads_done, Some(0), "HAProxy reloaded:\n{table}");
}
