//! A temp-dir builder for integration tests: a rewire.toml, templates and a dir catalog,
//! and the real `rewire` binary run against them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::process;

#[must_use]
pub struct Project {
    pub dir: tempfile::TempDir,
    /// Environment variables every rewire of this project gets (`Project::env`).
    env: std::cell::RefCell<Vec<(String, String)>>,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("catalog/services")).unwrap();
        std::fs::create_dir_all(dir.path().join("catalog/kv")).unwrap();
        Project {
            dir,
            env: Default::default(),
        }
    }

    /// Sets an environment variable for every rewire this project runs (the shipped
    /// templates take the operator's paths, such as NGINX_PID, from there).
    pub fn env(&self, name: &str, value: &str) -> &Project {
        self.env.borrow_mut().push((name.into(), value.into()));
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating directories), relative to the project.
    pub fn file(&self, rel: &str, text: &str) -> &Project {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        self
    }

    pub fn config(&self, text: &str) -> &Project {
        self.file("rewire.toml", text)
    }

    /// Adds an instance to the dir catalog, atomically (as rewire itself registers).
    pub fn instance(&self, service: &str, id: &str, addr: &str, port: u16) -> &Project {
        self.instance_json(
            service,
            id,
            &format!(r#"{{"address": "{addr}", "port": {port}}}"#),
        )
    }

    pub fn instance_json(&self, service: &str, id: &str, json: &str) -> &Project {
        let dir = self.path(&format!("catalog/services/{service}"));
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{id}.tmp"));
        std::fs::write(&tmp, json).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{id}.json"))).unwrap();
        self
    }

    pub fn remove_instance(&self, service: &str, id: &str) -> &Project {
        std::fs::remove_file(self.path(&format!("catalog/services/{service}/{id}.json"))).unwrap();
        self
    }

    pub fn kv(&self, key: &str, value: &str) -> &Project {
        self.file(&format!("catalog/kv/{key}"), value)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// `rewire ARGS -c rewire.toml`, run to completion.
    pub fn rewire(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run rewire")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rewire"));
        c.args(args)
            .arg("-c")
            .arg(self.path("rewire.toml"))
            .current_dir(self.root())
            .env_remove("REWIRE_CONFIG")
            .env("REWIRE_LOG", "info");
        c.envs(self.env.borrow().iter().map(|(k, v)| (k, v)));
        c
    }
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The web upstream template used by most tests: one `server` line per passing instance.
pub const UPSTREAM: &str = "upstream web {\n{% for s in service(name=\"web\") %}  server {{ s | addr_port }};\n{% endfor %}}\n";

/// A running `rewire run`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Running {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Project {
    /// Starts `rewire run` with its log in `rewire.log`.
    pub fn run(&self) -> Running {
        let log = self.path("rewire.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = self
            .command(&["run"])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start rewire run");
        Running { child, log }
    }

    /// A config line for a private control socket.
    pub fn control(&self) -> String {
        format!(
            "[control]\nsocket = \"{}\"\n",
            self.path("rewire.sock").display()
        )
    }
}

impl Running {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // Our own child: a zombie still takes signals, so this fails only once it is reaped.
        let _ = process::signal(self.child.id() as i32, sig);
    }

    /// Sends SIGTERM and waits for the exit status (SIGKILL after 20 s).
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(process::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
