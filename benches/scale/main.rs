//! Scale benchmark: backends come and go behind a real nginx or HAProxy while a keep-alive
//! client sends steady traffic through it; how many requests fail, and why?
//!
//! ```text
//! cargo bench --bench scale -- [nginx] [haproxy] [haproxy-runtime] [--kill] [--events N]
//!     [--backends N] [--rps N] [--connections N] [--interval 1.5s] [--drain 3s]
//!     [--wait-min 0s --wait-max 0s] [--nginx-keepalive-timeout 0] [--timeout 5s]
//!     [--method GET|POST] [--haproxy-reload master|signal] [--templates DIR] [--keep] [-v]
//! ```
//!
//! Each mode starts a front `rewire run` supervising nginx (reload by HUP) or HAProxy in
//! master-worker mode (`-W -S`, reloaded through the master CLI, or by USR2 with
//! `--haproxy-reload signal`; `haproxy-runtime` adds `runtime = { haproxy = "<admin socket>" }`
//! to the template), rendering the shipped
//! template from `templates/`, and N backends (default 6), each this binary's small HTTP
//! server under its own `rewire run` registering `web` in a shared dir catalog (health every
//! 2 s, TTL 6 s, the given drain). Then 20 keep-alive connections send 200 requests/s in all
//! (no retries) while 50 scale events alternate: stop the oldest backend (SIGTERM to its
//! rewire, or with `--kill` SIGKILL to rewire and server), start a new one. One table per mode:
//! requests, failed by kind, latency, signal -> out of the front's config, start -> first
//! request served. `scenario.rs` says what each number means; README "Scaling without failed
//! requests" has results.
//!
//! The rewire binary is `$REWIRE_BIN` when set (e.g. `target/release/rewire` from `cargo build
//! --release`), else the one Cargo built for this bench. Run by `cargo test --all-targets`
//! (without `--bench`), it does nothing: `tests/scale.rs` runs the short version.

// Shared with tests/scale.rs (which uses all of it).
#[allow(dead_code)]
mod backend;
#[path = "../support/inotify.rs"]
mod inotify;
mod load;
mod procs;
#[allow(dead_code)]
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use scenario::{Mode, Options, Report};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = backend::run_role(&args) {
        return code;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("scale: a benchmark; run it with `cargo bench --bench scale -- [mode...]`");
        return ExitCode::SUCCESS;
    }
    stop_everything_on_interrupt();
    let (modes, template) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("scale: {e}");
            return ExitCode::from(2);
        }
    };
    if scenario::find_program("nginx", "REWIRE_NGINX_BIN").is_none() && modes.contains(&Mode::Nginx)
        || scenario::find_program("haproxy", "REWIRE_HAPROXY_BIN").is_none()
            && modes.iter().any(|m| *m != Mode::Nginx)
    {
        eprintln!(
            "scale: nginx and haproxy must be installed (apt-get install nginx-light haproxy)"
        );
        return ExitCode::FAILURE;
    }
    let mut reports: Vec<Report> = Vec::new();
    let mut failed = false;
    for mode in modes {
        let o = Options {
            mode,
            ..template.clone()
        };
        eprintln!("scale: running {}", o.title());
        match scenario::run(&o) {
            Ok(r) => {
                println!("\n{}\n", r.table());
                reports.push(r);
            }
            Err(e) => {
                println!("\n{}\n\n  not run: {e:#}\n", o.title());
                failed = true;
            }
        }
    }
    if !reports.is_empty() {
        println!("{}", summary(&reports));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Ctrl-C (or TERM, HUP) would kill this process alone: the rewire processes die with it
/// (parent-death signal), but nginx, HAProxy and the backend servers run in process groups of
/// their own and would be left behind. So those signals are taken by a thread that kills every
/// process of the run first. Called before any other thread exists, so every thread inherits
/// the blocked mask (children get a clean mask at exec).
fn stop_everything_on_interrupt() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("scale: {sig}: stopping every process of the run");
            procs::kill_all_descendants();
            std::process::exit(130);
        }
    });
}

fn parse(args: &[String]) -> Result<(Vec<Mode>, Options), String> {
    let rewire = std::env::var_os("REWIRE_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rewire")));
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut o = Options::new(Mode::Nginx, rewire, backend::SelfExe::Bench(exe));
    o.verbose = false;
    let mut modes = Vec::new();
    let (mut wait_min, mut wait_max) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--bench" => {}
            "--kill" => o.kill = true,
            "--keep" => o.keep = true,
            "-v" | "--verbose" => o.verbose = true,
            "--events" => o.events = number(a, &value()?)?,
            "--backends" => o.backends = number(a, &value()?)?,
            "--connections" => o.connections = number(a, &value()?)?,
            "--rps" => o.rps = number(a, &value()?)?,
            "--interval" => o.interval = duration(a, &value()?)?,
            "--drain" => o.drain = duration(a, &value()?)?,
            "--timeout" => o.request_timeout = duration(a, &value()?)?,
            "--wait-min" => wait_min = Some(duration(a, &value()?)?),
            "--wait-max" => wait_max = Some(duration(a, &value()?)?),
            "--nginx-keepalive-timeout" => o.nginx_keepalive_timeout = Some(value()?),
            "--templates" => o.templates = PathBuf::from(value()?),
            "--haproxy-reload" => {
                o.haproxy_reload = match value()?.as_str() {
                    "master" => scenario::HaproxyReload::Master,
                    "signal" => scenario::HaproxyReload::Signal,
                    other => {
                        return Err(format!("{a} takes master or signal, not {other:?}"));
                    }
                }
            }
            "--method" => {
                o.method = value()?
                    .parse()
                    .map_err(|_| format!("{a} takes an HTTP method such as POST"))?
            }
            m => match Mode::parse(m) {
                Some(mode) => modes.push(mode),
                None => {
                    return Err(format!(
                        "unknown argument {m:?} (modes: nginx, haproxy, haproxy-runtime; see benches/scale/main.rs)"
                    ));
                }
            },
        }
    }
    o.wait = match (wait_min, wait_max) {
        (None, None) => None,
        (Some(min), max) => Some((min, max.unwrap_or(min * 4))),
        (None, Some(max)) => Some((Duration::from_millis(500).min(max), max)),
    };
    if o.backends < 2 || o.connections == 0 || o.rps <= 0.0 {
        return Err("need --backends >= 2, --connections >= 1 and --rps > 0".into());
    }
    if modes.is_empty() {
        modes = Mode::ALL.to_vec();
    }
    Ok((modes, o))
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag} takes a number, not {v:?}"))
}

/// "1.5s", "500ms", or plain seconds ("3").
fn duration(flag: &str, v: &str) -> Result<Duration, String> {
    if let Ok(s) = v.parse::<f64>() {
        return Duration::try_from_secs_f64(s).map_err(|e| format!("{flag} {v}: {e}"));
    }
    humantime::parse_duration(v)
        .map_err(|e| format!("{flag} takes a duration such as 1.5s, not {v:?}: {e}"))
}

/// One row per mode, for the README.
fn summary(reports: &[Report]) -> String {
    let mut out = String::from(
        "| run | requests | failed | connect | unsent | reset | eof | non-2xx | timeout | other | p50 ms | p99 ms | signal -> out of config (median) | start -> served (median) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        let k = r.tally.by_kind();
        let n = |f: load::Failure| k.get(&f).copied().unwrap_or(0);
        let (p50, p99, _) = r.latency_ms();
        let median = |d: &[Duration]| {
            let mut v = d.to_vec();
            v.sort_unstable();
            v.get(v.len().saturating_sub(1) / 2)
                .map_or("-".into(), |m| format!("{:.2} s", m.as_secs_f64()))
        };
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {p50:.2} | {p99:.2} | {} | {} |\n",
            r.label,
            r.tally.requests(),
            r.failed(),
            n(load::Failure::Connect),
            n(load::Failure::Unsent),
            n(load::Failure::Reset),
            n(load::Failure::Eof),
            n(load::Failure::Status),
            n(load::Failure::Timeout),
            n(load::Failure::Other),
            median(&r.out_of_config),
            median(&r.start_to_served),
        );
    }
    out
}
