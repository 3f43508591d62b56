//! A real haproxy (Debian's, 2.6) in master-worker mode in the foreground:
//! `haproxy -W -S DIR/master.sock -f DIR/haproxy.cfg -p DIR/haproxy.pid`; SIGUSR2 to the master
//! reloads. Config templates use `@PORT@` (the free port) and `@DIR@` (the temp dir).

use super::ports::{addr, free_port, port_open};
use super::process::{self, Daemon, temp_dir};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A frontend on 127.0.0.1:@PORT@ answering `200 ok`.
pub const DEFAULT_FRONTEND: &str = "
frontend fe
    bind 127.0.0.1:@PORT@
    http-request return status 200 content-type text/plain string ok
";

/// The haproxy binary: `$REWIRE_HAPROXY_BIN`, else `haproxy` on PATH or in /usr/sbin.
pub fn binary() -> Option<PathBuf> {
    super::find_binary("haproxy", Some("REWIRE_HAPROXY_BIN"), &[])
}

/// `global` + `defaults` sections (mode http, short timeouts), with `@DIR@` placeholders.
pub fn conf_header() -> String {
    "global\n\
     \x20   maxconn 256\n\
     \x20   stats socket @DIR@/admin.sock mode 600 level admin expose-fd listeners\n\
     defaults\n\
     \x20   mode http\n\
     \x20   timeout connect 2s\n\
     \x20   timeout client 10s\n\
     \x20   timeout server 10s\n"
        .to_string()
}

/// `haproxy -c -f FILE`: (ok, output). (false, why) when haproxy is not installed.
pub fn check_config(path: &Path) -> (bool, String) {
    check_configs(&[path])
}

/// `haproxy -c -f FILE1 -f FILE2 ...` (loaded in order, e.g. a main config plus a fragment):
/// (ok, output). (false, why) when haproxy is not installed.
pub fn check_configs(paths: &[&Path]) -> (bool, String) {
    let Some(bin) = binary() else {
        return (false, "haproxy binary not found".into());
    };
    let mut cmd = Command::new(bin);
    cmd.arg("-c");
    for p in paths {
        cmd.arg("-f").arg(p);
    }
    process::run(&mut cmd)
}

pub struct Haproxy {
    bin: PathBuf,
    port: u16,
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts haproxy with `conf_header() + body` (e.g. [`DEFAULT_FRONTEND`]). `None` (loudly)
    /// when haproxy is not installed, unless `REWIRE_REQUIRE_COMPONENTS=1` (then it panics).
    #[track_caller]
    pub fn try_start(body: &str) -> Option<Haproxy> {
        Self::try_start_conf(&format!("{}{body}", conf_header()))
    }

    /// Starts haproxy with a complete config template (placeholders `@PORT@`, `@DIR@`).
    #[track_caller]
    pub fn try_start_conf(conf_template: &str) -> Option<Haproxy> {
        let Some(bin) = binary() else {
            return super::skip(
                "haproxy",
                "binary not found (apt-get install haproxy, or run scripts/test)",
                false,
            );
        };
        Some(super::with_retries("starting haproxy", || {
            let mut h = Haproxy {
                bin: bin.clone(),
                port: free_port(),
                daemon: None,
                dir: temp_dir("haproxy"),
            };
            h.write_conf(conf_template);
            h.spawn_and_wait().map(|()| h)
        }))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-W")
            .arg("-S")
            .arg(self.master_socket())
            .arg("-f")
            .arg(self.cfg_path())
            .arg("-p")
            .arg(self.pidfile())
            .current_dir(self.dir.path());
        let port = self.port;
        // Ready once the frontend's port and, when the config has one, the admin socket both
        // accept: an open port alone does not say that the Runtime API is there yet.
        let admin = self.dir.path().join("admin.sock");
        let has_admin = std::fs::read_to_string(self.cfg_path())
            .is_ok_and(|c| c.contains(&*admin.to_string_lossy()));
        let daemon = Daemon::start("haproxy", cmd, &self.log_path(), READY_TIMEOUT, || {
            port_open(port) && (!has_admin || UnixStream::connect(&admin).is_ok())
        })?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Fills in `template`'s placeholders and writes it to [`Haproxy::cfg_path`] (does not
    /// reload).
    pub fn write_conf(&self, template: &str) {
        super::write_conf(&self.cfg_path(), template, self.port, self.dir());
    }

    /// `haproxy -c -f` on the current config.
    pub fn check(&self) -> (bool, String) {
        check_config(&self.cfg_path())
    }

    /// Reload: SIGUSR2 to the master (asynchronous; the master re-reads the `-f` config).
    pub fn reload(&self) {
        process::signal(self.master_pid() as i32, process::SIGUSR2).expect("signal haproxy master");
    }

    /// Sends one command to the master CLI socket (e.g. "show proc") and returns the answer.
    /// The socket is briefly gone while the master re-executes itself during a reload, so a
    /// refused connection is retried for up to 10 s.
    pub fn master_cli(&self, command: &str) -> std::io::Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match UnixStream::connect(self.master_socket()) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        // the master CLI keeps the connection open until the client half-closes
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The master's reload counter (from "show proc"), `None` when the CLI does not answer.
    /// A reload is complete once it has increased.
    pub fn reload_count(&self) -> Option<u32> {
        let out = self.master_cli("show proc").ok()?;
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("master"))?;
        line.split_whitespace().nth(2)?.parse().ok()
    }

    /// The reload counter once the master CLI answers (it refuses connections while the
    /// master starts or re-executes itself), `None` when it did not within `timeout`.
    pub fn wait_reload_count(&self, timeout: Duration) -> Option<u32> {
        let mut n = None;
        super::poll_until(timeout, || {
            n = self.reload_count();
            n.is_some()
        });
        n
    }

    /// SIGUSR2 and wait until the master reports the reload done (count increased) or
    /// `timeout`; returns whether it did.
    pub fn reload_and_wait(&self, timeout: Duration) -> bool {
        let before = self.wait_reload_count(timeout).unwrap_or(0);
        self.reload();
        super::poll_until(timeout, || self.reload_count().is_some_and(|n| n > before))
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        addr(self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cfg_path(&self) -> PathBuf {
        self.dir().join("haproxy.cfg")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir().join("haproxy.pid")
    }

    pub fn master_socket(&self) -> PathBuf {
        self.dir().join("master.sock")
    }

    /// haproxy's stdout/stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("haproxy.log")
    }

    pub fn log_tail(&self, n: usize) -> String {
        process::tail(&self.log_path(), n)
    }

    /// The master's PID (the process the harness started).
    pub fn master_pid(&self) -> u32 {
        self.daemon
            .as_ref()
            .map(Daemon::pid)
            .expect("haproxy is not running")
    }

    /// Current worker PIDs (new ones after a completed reload; old ones linger while draining).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.daemon
            .as_ref()
            .map(|d| process::children(d.pid()))
            .unwrap_or_default()
    }

    /// SIGKILLs master and workers. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.kill();
    }
}
