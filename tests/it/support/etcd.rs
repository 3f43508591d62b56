//! Real etcd (Debian's etcd-server, 3.4) on free loopback ports, data under /dev/shm:
//! [`Etcd`] (one member), [`EtcdCluster`] (n members) and [`EtcdGateway`] (`etcd gateway
//! start`, a plain TCP proxy to kill for outage tests). Plus small JSON-gateway (`/v3/...`)
//! helpers taking a client address, for tests that drive etcd directly.

use super::http;
use super::ports::{addr, free_port, port_open};
use super::process::{Daemon, ShmDir, temp_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The etcd binary: `$REWIRE_ETCD_BIN`, else `etcd` on PATH.
pub fn binary() -> Option<PathBuf> {
    super::find_binary("etcd", Some("REWIRE_ETCD_BIN"), &[])
}

#[track_caller]
fn binary_or_skip() -> Option<PathBuf> {
    match binary() {
        Some(b) => Some(b),
        None => super::skip(
            "etcd",
            "binary not found (apt-get install etcd-server, or run scripts/test)",
            false,
        ),
    }
}

/// A command for `bin` without any inherited `ETCD_*` variables (etcd reads its flags from them).
pub fn etcd_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    cmd
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data: ShmDir,
    log: PathBuf,
    daemon: Option<Daemon>,
}

/// An etcd cluster of n members on loopback (`n1`..`nN`).
pub struct EtcdCluster {
    bin: PathBuf,
    token: String,
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one reports `/health` true. `None` (loudly) when
    /// etcd is not installed, unless `REWIRE_REQUIRE_COMPONENTS=1` (then it panics).
    #[track_caller]
    pub fn try_start(n: usize) -> Option<EtcdCluster> {
        assert!(n >= 1, "an etcd cluster needs at least one member");
        let bin = binary_or_skip()?;
        Some(super::with_retries(
            &format!("starting an etcd cluster of {n}"),
            || {
                let dir = temp_dir("etcd");
                let members = (1..=n)
                    .map(|i| Member {
                        name: format!("n{i}"),
                        client_port: free_port(),
                        peer_port: free_port(),
                        data: ShmDir::new("etcd-data"),
                        log: dir.path().join(format!("etcd-n{i}.log")),
                        daemon: None,
                    })
                    .collect();
                let mut c = EtcdCluster {
                    bin: bin.clone(),
                    token: super::unique_name("rewire-"),
                    members,
                    dir,
                };
                for i in 0..n {
                    c.spawn_member(i)?;
                }
                for i in 0..n {
                    c.wait_member(i)?;
                }
                Ok(c)
            },
        ))
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_member(&mut self, i: usize) -> Result<(), String> {
        let initial_cluster = self.initial_cluster();
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = etcd_command(&self.bin);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(m.data.path())
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &self.token,
            ])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .current_dir(self.dir.path());
        let d = Daemon::spawn(&format!("etcd {}", m.name), cmd, &m.log)
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        m.daemon = Some(d);
        Ok(())
    }

    fn wait_member(&mut self, i: usize) -> Result<(), String> {
        let a = self.client_addr(i);
        let m = &mut self.members[i];
        let d = m
            .daemon
            .as_mut()
            .ok_or_else(|| format!("member {} is not running", m.name))?;
        d.wait_ready(READY_TIMEOUT, || healthy(&a))
    }

    /// Client URLs of all members ("http://127.0.0.1:PORT").
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// "127.0.0.1:PORT" of member `i`'s client listener (for the `http` helpers).
    pub fn client_addr(&self, i: usize) -> String {
        addr(self.members[i].client_port)
    }

    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// SIGKILLs member `i`. Idempotent.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut d) = self.members[i].daemon.take() {
            d.kill();
        }
    }

    /// (Re)starts member `i` on its old ports with its old data dir and waits for `/health`
    /// (which needs a quorum). Panics with the log when it does not come up.
    #[track_caller]
    pub fn restart_member(&mut self, i: usize) {
        self.kill_member(i);
        super::with_retries(&format!("restarting etcd member {i}"), || {
            let started = self.spawn_member(i).and_then(|()| self.wait_member(i));
            if started.is_err() {
                self.kill_member(i);
            }
            started
        });
    }

    /// Index of the current leader, asked of every running member via
    /// `POST /v3/maintenance/status` (the member whose `header.member_id` equals `leader`).
    pub fn leader_index(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.members[i].daemon.is_some()
                && status(&self.client_addr(i)).is_some_and(|v| {
                    let me = int::<u64>(&v["header"]["member_id"]);
                    me.is_some() && me == int(&v["leader"])
                })
        })
    }

    /// Waits (up to `timeout`) for a leader among the running members.
    pub fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let mut found = None;
        super::poll_until(timeout, || {
            found = self.leader_index();
            found.is_some()
        });
        found
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// A single etcd member (`n1`); data under /dev/shm (kept across `restart()`).
pub struct Etcd {
    cluster: EtcdCluster,
}

impl Etcd {
    /// See [`EtcdCluster::try_start`].
    #[track_caller]
    pub fn try_start() -> Option<Etcd> {
        EtcdCluster::try_start(1).map(|cluster| Etcd { cluster })
    }

    /// `vec![self.endpoint()]`.
    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    /// "127.0.0.1:PORT" (for the `http` helpers and the functions of this module).
    pub fn client_addr(&self) -> String {
        self.cluster.client_addr(0)
    }

    pub fn port(&self) -> u16 {
        self.cluster.client_port(0)
    }

    /// Starts again on the same port with the same data (revisions continue).
    #[track_caller]
    pub fn restart(&mut self) {
        self.cluster.restart_member(0);
    }

    /// `kv_put` on this member; returns the new revision.
    #[track_caller]
    pub fn put(&self, key: &str, value: &str) -> i64 {
        kv_put(&self.client_addr(), key, value, None)
    }

    #[track_caller]
    pub fn get(&self, key: &str) -> Option<String> {
        kv_get(&self.client_addr(), key)
    }

    #[track_caller]
    pub fn delete(&self, key: &str) -> i64 {
        kv_delete(&self.client_addr(), key, false)
    }
}

/// `etcd gateway start`: a TCP proxy in front of `endpoints` (kill it to simulate an outage).
pub struct EtcdGateway {
    bin: PathBuf,
    endpoints: Vec<String>,
    port: u16,
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl EtcdGateway {
    /// Starts a gateway to `endpoints` ("http://host:port" or "host:port").
    #[track_caller]
    pub fn try_start(endpoints: &[String]) -> Option<EtcdGateway> {
        let bin = binary_or_skip()?;
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| {
                e.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        Some(super::with_retries("starting etcd gateway", || {
            let mut g = EtcdGateway {
                bin: bin.clone(),
                endpoints: endpoints.clone(),
                port: free_port(),
                daemon: None,
                dir: temp_dir("etcd-gateway"),
            };
            g.spawn_and_wait().map(|()| g)
        }))
    }

    #[track_caller]
    pub fn start(endpoints: &[String]) -> EtcdGateway {
        Self::try_start(endpoints).expect("etcd is not available")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut cmd = etcd_command(&self.bin);
        cmd.args(["gateway", "start", "--listen-addr", &addr(self.port)])
            .args(["--endpoints", &self.endpoints.join(",")])
            // default 1m: a backend that failed once would stay unused for a minute
            .args(["--retry-delay", "100ms"])
            .current_dir(self.dir.path());
        let log = self.dir.path().join("gateway.log");
        let port = self.port;
        let daemon = Daemon::start("etcd gateway", cmd, &log, READY_TIMEOUT, || port_open(port))?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        addr(self.port)
    }

    /// "http://127.0.0.1:PORT" (use it as an etcd endpoint).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// SIGKILLs the gateway: established connections through it drop. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Starts the gateway again on the same port.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        super::with_retries("restarting etcd gateway", || self.spawn_and_wait());
    }
}

impl Drop for EtcdGateway {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- JSON gateway helpers (etcd 3.4 serves /v3/...; keys and values are base64) ----

/// Standard base64, as the JSON gateway wants keys and values.
pub fn b64(data: impl AsRef<[u8]>) -> String {
    STANDARD.encode(data)
}

/// Decodes the gateway's base64 into (lossy) UTF-8; panics on invalid base64.
#[track_caller]
pub fn unb64(s: &str) -> String {
    let bytes = STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("invalid base64 {s:?}: {e}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An integer field: the gateway sends int64s as strings, other fields as numbers.
pub fn int<T: std::str::FromStr>(v: &Value) -> Option<T> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// True when `GET /health` says `"health":"true"`.
pub fn healthy(client_addr: &str) -> bool {
    http::get(client_addr, "/health")
        .timeout(Duration::from_secs(2))
        .try_send()
        .is_ok_and(|r| {
            r.status == 200
                && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["health"] == "true")
        })
}

/// `POST /v3/maintenance/status` parsed, or `None` when the member does not answer.
pub fn status(client_addr: &str) -> Option<Value> {
    let r = http::post(client_addr, "/v3/maintenance/status", "{}")
        .timeout(Duration::from_secs(2))
        .try_send()
        .ok()?;
    if r.status != 200 {
        return None;
    }
    serde_json::from_slice(&r.body).ok()
}

/// POSTs a JSON body to a `/v3/...` path; panics unless 200; returns the parsed answer.
#[track_caller]
pub fn v3(client_addr: &str, path: &str, body: &Value) -> Value {
    let r = http::post(client_addr, path, body.to_string()).send();
    assert_eq!(
        r.status,
        200,
        "etcd POST {path} {body} -> {} {}",
        r.status,
        r.text()
    );
    r.json()
}

/// The body of a put of `key` = `value`.
pub fn put_request(key: &str, value: &str) -> Value {
    json!({"key": b64(key), "value": b64(value)})
}

/// Puts `key` = `value` (optionally attached to `lease`); returns the new revision.
#[track_caller]
pub fn kv_put(client_addr: &str, key: &str, value: &str, lease: Option<i64>) -> i64 {
    let mut body = put_request(key, value);
    if let Some(lease) = lease {
        body["lease"] = json!(lease.to_string());
    }
    int(&v3(client_addr, "/v3/kv/put", &body)["header"]["revision"])
        .expect("revision in put response")
}

/// The first key-value pair of a range read of `key` (`Null` when there is none).
#[track_caller]
pub fn kv_range(client_addr: &str, key: &str) -> Value {
    v3(client_addr, "/v3/kv/range", &json!({"key": b64(key)}))["kvs"][0].clone()
}

/// The value of `key`, if present.
#[track_caller]
pub fn kv_get(client_addr: &str, key: &str) -> Option<String> {
    let kv = kv_range(client_addr, key);
    // a present key with an empty value has no "value" field
    kv.get("key")
        .map(|_| kv["value"].as_str().map(unb64).unwrap_or_default())
}

/// All (key, value) pairs under `prefix`, sorted by key.
#[track_caller]
pub fn kv_get_prefix(client_addr: &str, prefix: &str) -> Vec<(String, String)> {
    let body = json!({"key": b64(prefix), "range_end": b64(prefix_end(prefix.as_bytes()))});
    let v = v3(client_addr, "/v3/kv/range", &body);
    v["kvs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            (
                unb64(kv["key"].as_str().unwrap_or_default()),
                kv["value"].as_str().map(unb64).unwrap_or_default(),
            )
        })
        .collect()
}

/// Deletes `key` (or every key under it when `prefix`); returns the new revision.
#[track_caller]
pub fn kv_delete(client_addr: &str, key: &str, prefix: bool) -> i64 {
    let mut body = json!({"key": b64(key)});
    if prefix {
        body["range_end"] = json!(b64(prefix_end(key.as_bytes())));
    }
    int(&v3(client_addr, "/v3/kv/deleterange", &body)["header"]["revision"]).expect("revision")
}

/// Grants a lease of `ttl_secs`; returns its id.
#[track_caller]
pub fn lease_grant(client_addr: &str, ttl_secs: i64) -> i64 {
    let v = v3(
        client_addr,
        "/v3/lease/grant",
        &json!({"TTL": ttl_secs.to_string()}),
    );
    int(&v["ID"]).expect("lease ID")
}

/// Revokes a lease (its keys are deleted).
#[track_caller]
pub fn lease_revoke(client_addr: &str, id: i64) {
    v3(
        client_addr,
        "/v3/lease/revoke",
        &json!({"ID": id.to_string()}),
    );
}

/// Compacts the history up to `revision` (physically).
#[track_caller]
pub fn compact(client_addr: &str, revision: i64) {
    v3(
        client_addr,
        "/v3/kv/compaction",
        &json!({"revision": revision.to_string(), "physical": true}),
    );
}

/// The current revision.
#[track_caller]
pub fn revision(client_addr: &str) -> i64 {
    let v = v3(client_addr, "/v3/kv/range", &json!({"key": b64("\0")}));
    int(&v["header"]["revision"]).expect("revision")
}

/// The range end that selects every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // "\0" = every key
}
