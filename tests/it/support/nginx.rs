//! A real nginx (Debian's nginx-light) in the foreground (`daemon off;` in the config), master +
//! 1 worker, everything (pid file, error log, temp paths) in its temp dir, on a free port.
//!
//! Config templates use two placeholders, replaced by [`Nginx::write_conf`]: `@PORT@` (the
//! free port) and `@DIR@` (the harness's temp dir). Compose full configs as
//! `conf_header() + servers + conf_footer()`; every config must keep the `pid @DIR@/nginx.pid;`
//! line of the header so `nginx -s reload` (with [`Nginx::cli_args`]) finds the master.

use super::ports::{addr, free_port};
use super::process::{self, Daemon, temp_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A server answering `200 ok\n` on `/` at 127.0.0.1:@PORT@.
pub const DEFAULT_SERVER: &str = r#"
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "ok\n"; }
    }
"#;

/// The nginx binary: `$REWIRE_NGINX_BIN`, else `nginx` on PATH or in /usr/sbin.
pub fn binary() -> Option<PathBuf> {
    super::find_binary("nginx", Some("REWIRE_NGINX_BIN"), &[])
}

/// Main context + `events` + the opening of `http { ... }` (temp paths, logs), with `@DIR@`
/// placeholders. Close it with [`conf_footer`].
pub fn conf_header() -> String {
    let user = if process::is_root() {
        "user root root;\n"
    } else {
        ""
    };
    format!(
        "# rewire test nginx\n\
         daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         {user}\
         pid @DIR@/nginx.pid;\n\
         error_log @DIR@/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   access_log @DIR@/access.log;\n\
         \x20   client_body_temp_path @DIR@/client_body_temp;\n\
         \x20   proxy_temp_path @DIR@/proxy_temp;\n\
         \x20   fastcgi_temp_path @DIR@/fastcgi_temp;\n\
         \x20   uwsgi_temp_path @DIR@/uwsgi_temp;\n\
         \x20   scgi_temp_path @DIR@/scgi_temp;\n\
         \x20   default_type text/plain;\n"
    )
}

/// Closes the `http` block opened by [`conf_header`].
pub fn conf_footer() -> &'static str {
    "}\n"
}

pub struct Nginx {
    bin: PathBuf,
    port: u16,
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `conf_header() + http_body + conf_footer()` (`http_body` goes inside
    /// `http { }`, e.g. [`DEFAULT_SERVER`]). `None` (loudly) when nginx is not installed, unless
    /// `REWIRE_REQUIRE_COMPONENTS=1` (then it panics).
    #[track_caller]
    pub fn try_start(http_body: &str) -> Option<Nginx> {
        Self::try_start_conf(&format!("{}{http_body}{}", conf_header(), conf_footer()))
    }

    /// Starts nginx with a complete config template (placeholders `@PORT@`, `@DIR@`).
    #[track_caller]
    pub fn try_start_conf(conf_template: &str) -> Option<Nginx> {
        let Some(bin) = binary() else {
            return super::skip(
                "nginx",
                "binary not found (apt-get install nginx-light, or run scripts/test)",
                false,
            );
        };
        Some(super::with_retries("starting nginx", || {
            let mut n = Nginx {
                bin: bin.clone(),
                port: free_port(),
                daemon: None,
                dir: temp_dir("nginx"),
            };
            n.write_conf(conf_template);
            n.spawn_and_wait().map(|()| n)
        }))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.cli_args()).current_dir(self.dir.path());
        let addr = self.addr();
        let answers = || {
            super::http::get(&addr, "/")
                .timeout(Duration::from_secs(2))
                .try_send()
                .is_ok()
        };
        let daemon = Daemon::start("nginx", cmd, &self.error_log(), READY_TIMEOUT, answers)?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// `-p DIR/ -e DIR/error.log -c DIR/nginx.conf`: append `-t` or `-s reload` to check or reload.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            format!("{}/", self.dir().display()),
            "-e".into(),
            self.error_log().display().to_string(),
            "-c".into(),
            self.conf_path().display().to_string(),
        ]
    }

    /// Fills in `template`'s placeholders and writes it to [`Nginx::conf_path`] (does not
    /// reload).
    pub fn write_conf(&self, template: &str) {
        super::write_conf(&self.conf_path(), template, self.port, self.dir());
    }

    /// `nginx -t` on the current config: (ok, output).
    pub fn test_config(&self) -> (bool, String) {
        process::run(Command::new(&self.bin).args(self.cli_args()).arg("-t"))
    }

    /// `nginx -s reload`: (ok, output). The reload itself is asynchronous.
    pub fn reload(&self) -> (bool, String) {
        process::run(
            Command::new(&self.bin)
                .args(self.cli_args())
                .args(["-s", "reload"]),
        )
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        addr(self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir().join("nginx.conf")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir().join("nginx.pid")
    }

    /// The error log (nginx's stdout/stderr go there too).
    pub fn error_log(&self) -> PathBuf {
        self.dir().join("error.log")
    }

    /// The master's PID (the process the harness started; also what the pid file holds).
    pub fn master_pid(&self) -> u32 {
        self.daemon
            .as_ref()
            .map(Daemon::pid)
            .expect("nginx is not running")
    }

    /// Current worker PIDs (they change on a completed reload; old ones linger while draining).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.daemon
            .as_ref()
            .map(|d| process::children(d.pid()))
            .unwrap_or_default()
    }

    /// GET `path` on this nginx: (status, body). Panics on I/O errors.
    #[track_caller]
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = super::http::get(&self.addr(), path).send();
        (r.status, r.text())
    }

    /// SIGKILLs master and workers. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}
