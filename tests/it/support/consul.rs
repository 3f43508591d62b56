//! A real Consul agent (`consul agent -dev`, 1.8.7 from Debian bullseye via scripts/get-consul)
//! on free loopback ports. `-dev` keeps the catalog in memory: `restart()` (same ports, same data
//! dir, so the same node id) starts from an empty state with the raft index reset.

use super::http::{self, Response};
use super::ports::{addr, free_port_tcp_udp};
use super::process::{Daemon, temp_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a start or restart may take before it counts as failed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsulPorts {
    pub http: u16,
    pub dns: u16,
    pub serf_lan: u16,
    pub serf_wan: u16,
    pub server: u16,
    pub grpc: u16,
}

impl ConsulPorts {
    fn pick() -> ConsulPorts {
        ConsulPorts {
            http: free_port_tcp_udp(),
            dns: free_port_tcp_udp(),
            serf_lan: free_port_tcp_udp(),
            serf_wan: free_port_tcp_udp(),
            server: free_port_tcp_udp(),
            grpc: free_port_tcp_udp(),
        }
    }
}

pub struct Consul {
    bin: PathBuf,
    ports: ConsulPorts,
    acl_master: Option<String>,
    extra_hcl: Vec<String>,
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl Consul {
    /// The consul binary: `$REWIRE_CONSUL_BIN`, else
    /// `${REWIRE_TEST_CACHE:-$HOME/.cache/rewire-test}/bin/consul`, else `consul` on PATH.
    pub fn binary() -> Option<PathBuf> {
        let cache = std::env::var_os("REWIRE_TEST_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/rewire-test")));
        let extra: Vec<PathBuf> = cache.into_iter().map(|c| c.join("bin/consul")).collect();
        super::find_binary("consul", Some("REWIRE_CONSUL_BIN"), &extra)
    }

    /// Starts a dev agent, or returns `None` after a loud SKIPPED message when Consul is not
    /// available (panics instead under `REWIRE_REQUIRE_COMPONENTS=1`, except when
    /// `REWIRE_SKIP_CONSUL=1` says the archive holding Consul was unreachable).
    #[track_caller]
    pub fn try_start() -> Option<Consul> {
        Self::try_start_with(None, &[])
    }

    /// Like [`Consul::try_start`] with ACLs on: default policy deny, `master_token` as the
    /// bootstrap (master) token, also used as the agent token.
    #[track_caller]
    pub fn try_start_with_acl(master_token: &str) -> Option<Consul> {
        Self::try_start_with(Some(master_token), &[])
    }

    /// The general form: optional ACL master token and extra `-hcl` snippets.
    #[track_caller]
    pub fn try_start_with(acl_master: Option<&str>, extra_hcl: &[&str]) -> Option<Consul> {
        if super::env_flag("REWIRE_SKIP_CONSUL") {
            return super::skip(
                "consul",
                "skipped by REWIRE_SKIP_CONSUL=1 (the Debian archive holding Consul was unreachable)",
                true,
            );
        }
        let Some(bin) = Self::binary() else {
            return super::skip(
                "consul",
                "binary not found (set REWIRE_CONSUL_BIN or run scripts/get-consul)",
                false,
            );
        };
        let extra: Vec<String> = extra_hcl.iter().map(|s| s.to_string()).collect();
        Some(super::with_retries("starting consul agent -dev", || {
            let mut c = Consul {
                bin: bin.clone(),
                ports: ConsulPorts::pick(),
                acl_master: acl_master.map(str::to_string),
                extra_hcl: extra.clone(),
                daemon: None,
                dir: temp_dir("consul"),
            };
            c.spawn_and_wait().map(|()| c)
        }))
    }

    fn args(&self) -> Vec<String> {
        let p = &self.ports;
        let mut hcl = vec![
            format!(
                "ports {{ http = {} dns = {} serf_lan = {} serf_wan = {} server = {} grpc = {} https = -1 }}",
                p.http, p.dns, p.serf_lan, p.serf_wan, p.server, p.grpc
            ),
            r#"check_update_interval = "0s""#.to_string(),
            "disable_update_check = true".to_string(),
        ];
        if let Some(t) = &self.acl_master {
            hcl.push(format!(
                r#"acl {{ enabled = true default_policy = "deny" down_policy = "extend-cache" enable_token_persistence = false tokens {{ master = "{t}" agent = "{t}" }} }}"#
            ));
        }
        hcl.extend(self.extra_hcl.iter().cloned());
        let mut args: Vec<String> = [
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-node",
            "rewire-test",
            "-log-level",
            "debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("-data-dir".into());
        args.push(self.data_dir().display().to_string());
        for h in hcl {
            args.push("-hcl".into());
            args.push(h);
        }
        args
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(self.data_dir()).map_err(|e| format!("create data dir: {e}"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.args()).current_dir(self.dir.path());
        let log = self.log_path();
        let daemon = Daemon::start("consul", cmd, &log, READY_TIMEOUT, || self.ready())?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// "127.0.0.1:PORT" of the HTTP API (what `CONSUL_HTTP_ADDR` takes).
    pub fn http_addr(&self) -> String {
        addr(self.ports.http)
    }

    /// "http://127.0.0.1:PORT".
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("consul.log")
    }

    /// PID of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    /// SIGKILLs the agent (no graceful leave). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Kills the agent if running and starts it again on the same ports and data dir; waits
    /// until it has a leader again. `-dev` state is in memory: everything registered is gone and
    /// the index starts over. Panics (with the log) when it does not come back.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        super::with_retries("restarting consul", || self.spawn_and_wait());
    }

    /// Readiness: a leader is known (a non-empty JSON string), the agent's node is in the
    /// catalog, and with ACLs the master token resolves.
    fn ready(&self) -> bool {
        let get = |path: &str, authorized: bool| {
            let request = http::get(&self.http_addr(), path).timeout(Duration::from_secs(2));
            let request = if authorized {
                self.authorized(request)
            } else {
                request
            };
            request.try_send().ok().filter(|r| r.status == 200)
        };
        let leader = get("/v1/status/leader", false)
            .and_then(|r| serde_json::from_slice::<String>(&r.body).ok())
            .unwrap_or_default();
        if leader.is_empty() {
            return false;
        }
        if self.acl_master.is_some() && get("/v1/acl/token/self", true).is_none() {
            return false;
        }
        get("/v1/catalog/nodes", true).is_some_and(|r| {
            serde_json::from_slice::<Vec<serde_json::Value>>(&r.body)
                .is_ok_and(|nodes| nodes.iter().any(|n| n.get("Node").is_some()))
        })
    }

    /// A request to the agent, with the master token when ACLs are on.
    fn authorized(&self, request: http::Request) -> http::Request {
        match &self.acl_master {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        }
    }

    /// GET against the agent (with the master token when ACLs are on); panics on I/O errors.
    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        self.authorized(http::get(&self.http_addr(), path)).send()
    }

    /// PUT against the agent (with the master token when ACLs are on); panics on I/O errors.
    #[track_caller]
    pub fn put(&self, path: &str, body: impl AsRef<[u8]>) -> Response {
        self.authorized(http::put(&self.http_addr(), path, body))
            .send()
    }

    /// PUT that must answer 200; returns the body.
    #[track_caller]
    pub fn put_ok(&self, path: &str, body: impl AsRef<[u8]>) -> String {
        ok(self.put(path, body), "PUT", path)
    }

    /// Registers a service with the agent (`/v1/agent/service/register`, JSON body).
    #[track_caller]
    pub fn register_service(&self, json: &str) {
        self.put_ok("/v1/agent/service/register", json);
    }

    /// Deregisters a service by id.
    #[track_caller]
    pub fn deregister_service(&self, id: &str) {
        self.put_ok(
            &format!("/v1/agent/service/deregister/{}", http::segment(id)),
            "",
        );
    }

    /// Sets a TTL check's status: `status` is "pass", "warn" or "fail".
    #[track_caller]
    pub fn ttl_update(&self, check_id: &str, status: &str, output: &str) {
        let path = format!("/v1/agent/check/{status}/{}", http::segment(check_id));
        let request = http::put(&self.http_addr(), &path, "").query(&[("note", output)]);
        ok(self.authorized(request).send(), "PUT", &path);
    }

    /// Writes a KV pair.
    #[track_caller]
    pub fn kv_put(&self, key: &str, value: impl AsRef<[u8]>) {
        let out = self.put_ok(&format!("/v1/kv/{key}"), value);
        assert_eq!(out.trim(), "true", "KV put {key} -> {out}");
    }

    /// Deletes a KV key (`recurse` deletes the prefix).
    #[track_caller]
    pub fn kv_delete(&self, key: &str, recurse: bool) {
        let q = if recurse { "?recurse" } else { "" };
        let path = format!("/v1/kv/{key}{q}");
        let r = self
            .authorized(http::delete(&self.http_addr(), &path))
            .send();
        ok(r, "DELETE", &path);
    }

    /// `X-Consul-Index` of a GET (panics when absent).
    #[track_caller]
    pub fn index_of(&self, path: &str) -> u64 {
        let r = self.get(path);
        r.header("X-Consul-Index")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: no X-Consul-Index ({} {})", r.status, r.text()))
    }
}

/// The body of a 200 answer; panics with the status and body otherwise.
#[track_caller]
fn ok(r: Response, method: &str, path: &str) -> String {
    assert_eq!(
        r.status,
        200,
        "{method} {path} -> {} {}",
        r.status,
        r.text()
    );
    r.text()
}

impl Drop for Consul {
    fn drop(&mut self) {
        self.kill();
    }
}
