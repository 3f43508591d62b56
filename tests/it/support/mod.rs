//! Test harnesses for the integration tests: real Consul, etcd, nginx and haproxy processes on
//! free loopback ports with temp dirs, killed (by PID / process group) when the harness value is
//! dropped, even when the test panics.
//!
//! Built once, as a module of the one integration-test binary (`tests/it/main.rs`); the
//! reaction benchmark includes it too (`benches/reaction.rs`). HTTP goes through reqwest ([`http`]), JSON through serde_json, base64 through base64.
//!
//! Skipping: `Consul::try_start()` & co. return `None` (after a loud `SKIPPED:` line on stderr)
//! when the component's binary is missing, unless `REWIRE_REQUIRE_COMPONENTS=1` (set by
//! `scripts/test` under `CI=true`), in which case they panic. `REWIRE_SKIP_CONSUL=1` (set by
//! `scripts/test` when the Debian archive holding Consul was unreachable) always skips Consul.

pub mod consul;
pub mod election;
pub mod etcd;
pub mod haproxy;
pub mod http;
pub mod nginx;
pub mod ports;
pub mod process;
pub mod proxy;

pub use consul::Consul;
pub use etcd::{Etcd, EtcdCluster, EtcdGateway};
pub use haproxy::Haproxy;
pub use nginx::Nginx;
pub use ports::free_port;
pub use proxy::TcpProxy;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Poll interval of [`poll_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(15);

/// Calls `f` every ~15 ms until it returns true (→ `true`) or `timeout` has passed (→ `false`).
/// `f` is always called at least once, and once more at the deadline.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        if Instant::now() >= deadline {
            return f();
        }
    }
}

/// Like [`poll_until`], but panics with `desc` (at the caller's location) on timeout.
#[track_caller]
pub fn wait_for(desc: &str, timeout: Duration, f: impl FnMut() -> bool) {
    if !poll_until(timeout, f) {
        panic!("timed out after {timeout:?} waiting for: {desc}");
    }
}

/// Logs of the library under test (the Consul and etcd tests drive it in this process),
/// captured per test and shown for a failing one: `REWIRE_TEST_LOG=rewire=debug` (else
/// `RUST_LOG`) sets the filter, errors only by default. The first call installs the subscriber.
pub fn logs() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = ["REWIRE_TEST_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| std::env::var(var).ok()?.parse().ok())
        .unwrap_or_else(|| "error".parse().expect("a level"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .try_init();
}

/// Generous default timeout for real-time waits in tests (2 busy cores).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// True when `REWIRE_REQUIRE_COMPONENTS=1` (CI): a missing component is a failure, not a skip.
pub fn require_components() -> bool {
    env_flag("REWIRE_REQUIRE_COMPONENTS")
}

pub(crate) fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref().map(str::trim),
        Ok("1") | Ok("true") | Ok("yes") | Ok("TRUE") | Ok("True")
    )
}

/// Reports a missing component: panics under `REWIRE_REQUIRE_COMPONENTS=1` (unless `force_skip`),
/// otherwise prints a loud SKIPPED line to stderr. Returns `None` for convenience.
#[track_caller]
pub fn skip<T>(component: &str, reason: &str, force_skip: bool) -> Option<T> {
    if require_components() && !force_skip {
        panic!(
            "{component} is required (REWIRE_REQUIRE_COMPONENTS=1) but unavailable: {component} {reason}. \
             Run scripts/test to install the test components."
        );
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let hint = if force_skip {
        ""
    } else {
        "Run scripts/test to install the test components.\n"
    };
    // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n\
         ************************************************************************\n\
         SKIPPED: {component} {reason}\n\
         (test `{test}` does nothing)\n\
         {hint}\
         ************************************************************************"
    );
    None
}

/// Finds an executable: `$env_var` (if set and non-empty, must exist), then `extra` paths,
/// then every directory of `$PATH`, then `/usr/local/sbin`, `/usr/sbin`, `/sbin` (nginx and
/// haproxy live in /usr/sbin, which a non-root PATH often lacks).
pub fn find_binary(name: &str, env_var: Option<&str>, extra: &[PathBuf]) -> Option<PathBuf> {
    if let Some(var) = env_var
        && let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty())
    {
        let p = PathBuf::from(v);
        return is_executable(&p).then_some(p);
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    extra
        .iter()
        .cloned()
        .chain(path_dirs.into_iter().map(|d| d.join(name)))
        .chain(
            ["/usr/local/sbin", "/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name)),
        )
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How many times a harness tries to start (or restart) its daemon(s).
pub const START_ATTEMPTS: u32 = 3;

/// Runs `attempt` up to [`START_ATTEMPTS`] times; an attempt returns `Err(report)` when the
/// daemon exited early or did not become ready (dropping its [`process::Daemon`] killed it).
/// Panics with the last report when every attempt failed. A start picks fresh ports on each
/// attempt (a port from binding :0 can be taken before the daemon binds it); a restart keeps
/// its ports, so only a slow or unlucky start is retried.
#[track_caller]
pub fn with_retries<T>(what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for n in 1..=START_ATTEMPTS {
        match attempt() {
            Ok(v) => return v,
            Err(report) => {
                if n < START_ATTEMPTS {
                    eprintln!(
                        "support: {what} failed (attempt {n}/{START_ATTEMPTS}), trying again"
                    );
                }
                last = report;
            }
        }
    }
    panic!("{what} failed {START_ATTEMPTS} times; the last attempt:\n{last}");
}

/// Writes a config template for nginx or haproxy to `path`, with `@PORT@` replaced by `port`
/// and `@DIR@` by the harness's temp dir.
#[track_caller]
pub fn write_conf(path: &Path, template: &str, port: u16, dir: &Path) {
    let conf = template
        .replace("@PORT@", &port.to_string())
        .replace("@DIR@", &dir.display().to_string());
    std::fs::write(path, conf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A unique-ish token for names (temp dirs under /dev/shm, cluster tokens).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
