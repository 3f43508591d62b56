//! Elections in Consul: a lock on a KV key, held by a session bound to a TTL check rewire
//! passes every ttl/3.
//!
//! Consul 1.8.7 facts (measured, issue 18) decided the shape:
//!
//! - Session TTLs are too slow (10 s at least, and servers invalidate at about 2 x TTL), so the
//!   session has no TTL. It is bound to `serfHealth` and to a TTL check of the candidate's own:
//!   when rewire stops passing the check, it turns critical after `ttl` and Consul invalidates
//!   the session (about 2.3 s with a 3 s check), releasing the lock.
//! - The check belongs to a small service rewire registers per candidate (`rewire-election`,
//!   tagged with the election's name): a node-level check would turn every service on the node
//!   critical with it, and a service check is removed with its service
//!   (`DeregisterCriticalServiceAfter`, Consul's minimum of 1 minute, after a SIGKILL).
//! - `Behavior = "release"`: "delete" would remove the key. "No leader" is therefore a key
//!   without `Session`.
//! - The fencing token is the key's `ModifyIndex` as the holder acquired it: the Raft index
//!   of the acquisition, which only grows, across terms and across a deletion of the key.
//!   (`LockIndex` starts again at 1 when the key is deleted and made again: a KV writer who
//!   deleted it gave every later holder the token 1.) The holder writes the key only to take
//!   it, so the index stays put for the term; a write by anyone else ends the term.
//! - `LockDelay` (rewire's default 5 s; Consul's own 15 s) keeps the lock from being taken for
//!   that long after an invalidation, so a holder cut off from Consul has stopped before a
//!   successor starts. A release (resignation) has no delay: a SIGTERMed holder is replaced
//!   at once.
//!
//! Followers block on the key (`?index=`) with the catalog's paced blocking-query loop.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::agent::{Agent, go_duration};
use super::decode::{self, BACKEND};
use super::poll::{Cursor, Pace, Pacer};
use crate::catalog::CatalogError;
use crate::catalog::election::{Ballot, BallotSpec, Sight, decode_value, encode_value, set_sight};
use crate::model::{Holder, LeaderValue};

/// The service each candidate registers to carry its election check.
pub const CANDIDATE_SERVICE: &str = "rewire-election";
/// Consul's smallest `DeregisterCriticalServiceAfter`: a SIGKILLed candidate's check goes.
const REAP_AFTER: Duration = Duration::from_secs(60);
/// Added to a blocking read's `wait + wait/16` for its timeout.
const BLOCK_MARGIN: Duration = Duration::from_secs(15);

/// The KV key of an election.
pub fn election_key(name: &str) -> String {
    format!("rewire/elections/{name}")
}

#[derive(Default)]
struct State {
    /// The candidate's service and check are registered (as far as this process knows).
    registered: bool,
    session: Option<String>,
    /// The ModifyIndex of the key when this session took it: the term's fencing token.
    token: Option<u64>,
}

pub struct ConsulBallot {
    agent: Arc<Agent>,
    pace: Pace,
    spec: BallotSpec,
    key: String,
    check_id: String,
    service_id: String,
    state: tokio::sync::Mutex<State>,
}

/// One entry of `GET /v1/kv/<key>`.
#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "ModifyIndex", default)]
    modify_index: u64,
    #[serde(rename = "Session", default)]
    session: Option<String>,
    #[serde(rename = "Value", default)]
    value: Option<String>,
}

impl ConsulBallot {
    pub(super) fn new(agent: Arc<Agent>, pace: Pace, spec: &BallotSpec) -> ConsulBallot {
        ConsulBallot {
            agent,
            pace,
            key: election_key(&spec.name),
            check_id: format!("rewire-election:{}:{}", spec.name, spec.candidate),
            service_id: format!("{CANDIDATE_SERVICE}-{}-{}", spec.name, spec.candidate),
            spec: spec.clone(),
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    fn kv_url(&self, query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = self
            .agent
            .url(std::iter::once("kv").chain(self.key.split('/')));
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                if v.is_empty() {
                    q.append_key_only(k);
                } else {
                    q.append_pair(k, v);
                }
            }
        }
        url
    }

    /// A PUT that must answer 2xx; returns the body.
    async fn put_ok(
        &self,
        what: &str,
        url: reqwest::Url,
        body: Option<serde_json::Value>,
    ) -> Result<Vec<u8>, CatalogError> {
        let (status, body) = self.agent.put(what, url, body).await?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(decode::status_error(
                what,
                status,
                &body,
                self.agent.token.is_some(),
            ))
        }
    }

    /// Registers the candidate's service and check (again), and passes the check.
    async fn register_candidate(&self) -> Result<(), CatalogError> {
        let body = json!({
            "ID": self.service_id,
            "Name": CANDIDATE_SERVICE,
            "Tags": [self.spec.name],
            "Meta": { "election": self.spec.name, "candidate": self.spec.candidate },
            "Check": {
                "CheckID": self.check_id,
                "Name": format!("rewire election {} ({})", self.spec.name, self.spec.candidate),
                "TTL": go_duration(self.spec.ttl),
                "Status": "passing",
                "DeregisterCriticalServiceAfter": go_duration(REAP_AFTER),
            },
        });
        let url = self.agent.url(["agent", "service", "register"]);
        self.put_ok("PUT /v1/agent/service/register", url, Some(body))
            .await?;
        // Re-registering keeps a critical check critical: pass it.
        self.pass_check().await
    }

    async fn pass_check(&self) -> Result<(), CatalogError> {
        let url = self
            .agent
            .url(["agent", "check", "pass", self.check_id.as_str()]);
        self.put_ok("PUT /v1/agent/check/pass", url, None)
            .await
            .map(drop)
    }

    async fn create_session(&self) -> Result<String, CatalogError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let body = json!({
            "Name": format!("rewire election {} ({})", self.spec.name, self.spec.candidate),
            "Checks": ["serfHealth", self.check_id],
            "Behavior": "release",
            "LockDelay": go_duration(self.spec.lock_delay),
        });
        let url = self.agent.url(["session", "create"]);
        let bytes = self
            .put_ok("PUT /v1/session/create", url, Some(body))
            .await?;
        let created: Created =
            serde_json::from_slice(&bytes).map_err(|e| CatalogError::Malformed {
                backend: BACKEND.into(),
                detail: format!("PUT /v1/session/create: {e}: {}", decode::snippet(&bytes)),
            })?;
        Ok(created.id)
    }

    /// Reads the key at once (consistent): `(ModifyIndex, Session)` or `None` when missing.
    async fn read_key(&self) -> Result<Option<(u64, Option<String>)>, CatalogError> {
        let url = self.kv_url(&[("consistent", "")]);
        let req = self.agent.request(Method::GET, url);
        let what = "GET /v1/kv (election)";
        let (status, _, body) = self
            .agent
            .exchange(what, req, super::agent::WRITE_TIMEOUT)
            .await?;
        match status {
            404 => Ok(None),
            200 => {
                let entries: Vec<KvEntry> =
                    serde_json::from_slice(&body).map_err(|e| CatalogError::Malformed {
                        backend: BACKEND.into(),
                        detail: format!("{what}: {e}"),
                    })?;
                Ok(entries
                    .into_iter()
                    .next()
                    .map(|e| (e.modify_index, e.session)))
            }
            _ => Err(decode::status_error(
                what,
                status,
                &body,
                self.agent.token.is_some(),
            )),
        }
    }

    /// Forgets the session after a failure that may have invalidated it.
    fn drop_session(state: &mut State) {
        state.session = None;
        state.token = None;
    }
}

/// What a KV read of the election key says.
fn sight_of(status: u16, body: &[u8]) -> Result<Sight, String> {
    if status == 404 {
        return Ok(Sight::Vacant);
    }
    let entries: Vec<KvEntry> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(e) = entries.into_iter().next() else {
        return Ok(Sight::Vacant);
    };
    if e.session.as_deref().is_none_or(str::is_empty) {
        return Ok(Sight::Vacant);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(e.value.unwrap_or_default())
        .map_err(|err| format!("the value is not base64: {err}"))?;
    let value = decode_value(&raw)?;
    Ok(Sight::Held(Holder {
        value,
        token: e.modify_index,
    }))
}

#[async_trait]
impl Ballot for ConsulBallot {
    async fn campaign(&self, value: &LeaderValue) -> Result<Option<u64>, CatalogError> {
        let mut state = self.state.lock().await;
        if let Some(token) = state.token {
            return Ok(Some(token));
        }
        // The check restarts its TTL now; the agent forgot it if this fails (first run, or
        // an agent restart): register it again.
        if self.pass_check().await.is_err() {
            state.registered = false;
            self.register_candidate().await?;
            state.session = None;
        }
        state.registered = true;
        let mut attempt = 0;
        let (session, body) = loop {
            attempt += 1;
            if state.session.is_none() {
                state.session = Some(self.create_session().await?);
            }
            let session = state.session.clone().expect("set above");
            let url = self.kv_url(&[("acquire", session.as_str())]);
            let req = self
                .agent
                .request(Method::PUT, url)
                .body(encode_value(value));
            let what = "PUT /v1/kv?acquire";
            let (status, _, body) = self
                .agent
                .exchange(what, req, super::agent::WRITE_TIMEOUT)
                .await?;
            if (200..300).contains(&status) {
                break (session, body);
            }
            // "invalid session": Consul invalidated it (its check lapsed while this process
            // waited): make a new one, once.
            Self::drop_session(&mut state);
            if attempt >= 2 {
                return Err(decode::status_error(
                    what,
                    status,
                    &body,
                    self.agent.token.is_some(),
                ));
            }
        };
        if String::from_utf8_lossy(&body).trim() != "true" {
            // Held by another session, or our lock delay runs.
            return Ok(None);
        }
        match self.read_key().await? {
            Some((index, Some(s))) if s == session => {
                state.token = Some(index);
                Ok(Some(index))
            }
            _ => Ok(None),
        }
    }

    async fn renew(&self) -> Result<bool, CatalogError> {
        let mut state = self.state.lock().await;
        let (Some(session), Some(token)) = (state.session.clone(), state.token) else {
            return Ok(false);
        };
        if let Err(e) = self.pass_check().await {
            if matches!(e, CatalogError::Unreachable { .. }) {
                return Err(e);
            }
            // The agent forgot the check (a restart): the session went with it.
            Self::drop_session(&mut state);
            return Ok(false);
        }
        let held = matches!(
            self.read_key().await?,
            Some((index, Some(s))) if s == session && index == token
        );
        if !held {
            Self::drop_session(&mut state);
        }
        Ok(held)
    }

    /// Keeps a follower's check passing, so its session stays valid for the next campaign
    /// and the candidate does not show as failing (nor get reaped after a minute).
    async fn standby(&self) -> Result<(), CatalogError> {
        let mut state = self.state.lock().await;
        if state.registered && self.pass_check().await.is_err() {
            // The agent forgot it (a restart): the next campaign registers it again.
            state.registered = false;
            state.session = None;
        }
        Ok(())
    }

    async fn resign(&self) -> Result<(), CatalogError> {
        let mut state = self.state.lock().await;
        let Some(session) = state.session.clone() else {
            return Ok(());
        };
        if state.token.is_some() {
            let url = self.kv_url(&[("release", session.as_str())]);
            self.put_ok("PUT /v1/kv?release", url, None).await?;
        }
        Self::drop_session(&mut state);
        let url = self.agent.url(["session", "destroy", session.as_str()]);
        if let Err(e) = self.put_ok("PUT /v1/session/destroy", url, None).await {
            debug!(error = %e, "cannot destroy the election session; its check ends it");
        }
        Ok(())
    }

    async fn leave(&self) -> Result<(), CatalogError> {
        self.resign().await?;
        self.state.lock().await.registered = false;
        let url = self
            .agent
            .url(["agent", "service", "deregister", self.service_id.as_str()]);
        self.put_ok("PUT /v1/agent/service/deregister", url, None)
            .await
            .map(drop)
    }

    async fn follow(&self, sight: watch::Sender<Sight>, stop: CancellationToken) {
        let mut cursor = Cursor::default();
        let mut pacer = Pacer::new(&self.pace);
        let mut failing = false;
        loop {
            let asked = cursor.index();
            let mut pairs: Vec<(&str, String)> = Vec::new();
            if asked > 0 {
                pairs.push(("index", asked.to_string()));
                pairs.push(("wait", go_duration(self.pace.wait)));
            }
            let query: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let url = self.kv_url(&query);
            let timeout = if asked > 0 {
                self.pace.wait + self.pace.wait / 16 + BLOCK_MARGIN
            } else {
                super::agent::WRITE_TIMEOUT
            };
            let started = tokio::time::Instant::now();
            let req = self.agent.request(Method::GET, url);
            let reply = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.agent.exchange("GET /v1/kv (election)", req, timeout) => r,
            };
            let reply = match reply {
                Ok((status, headers, body)) if status == 200 || status == 404 => {
                    Ok((status, headers, body))
                }
                Ok((status, _, body)) => Err(decode::status_error(
                    "GET /v1/kv (election)",
                    status,
                    &body,
                    self.agent.token.is_some(),
                )),
                Err(e) => Err(e),
            };
            let pause = match reply {
                Ok((status, headers, body)) => {
                    let index = decode::parse_index(
                        headers.get("x-consul-index").and_then(|v| v.to_str().ok()),
                    );
                    match (index.as_ref().ok().copied(), sight_of(status, &body)) {
                        (Some(index), Ok(seen)) => {
                            if failing {
                                info!(election = %self.spec.name, "election key readable again");
                                failing = false;
                            }
                            let step = cursor.observe(index);
                            set_sight(&sight, seen);
                            pacer.after_reply(asked, step, started.elapsed())
                        }
                        (None, _) => {
                            let e = index.err().map(|m| m.to_string()).unwrap_or_default();
                            warn!(election = %self.spec.name, error = %e, "unreadable election answer");
                            cursor.reset();
                            pacer.after_error()
                        }
                        (Some(index), Err(e)) => {
                            warn!(election = %self.spec.name, error = %e, "the election key holds a value rewire cannot use");
                            sight.send_replace(Sight::Unknown);
                            let _ = cursor.observe(index);
                            pacer.after_reply(asked, super::poll::Step::Same, Duration::ZERO)
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(election = %self.spec.name, error = %e, "cannot read the election key");
                        failing = true;
                    }
                    sight.send_replace(Sight::Unknown);
                    cursor.reset();
                    pacer.after_error()
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_without_a_session_has_no_holder() {
        assert_eq!(sight_of(404, b"").unwrap(), Sight::Vacant);
        let released = br#"[{"Key":"rewire/elections/p","LockIndex":3,"Flags":0,"Value":"eyJpZCI6ImEiLCJhZGRyZXNzIjoiMTAuMC4wLjEiLCJwb3J0Ijo2Mzc5fQ==","CreateIndex":10,"ModifyIndex":20}]"#;
        assert_eq!(sight_of(200, released).unwrap(), Sight::Vacant);
        let held = br#"[{"Key":"rewire/elections/p","LockIndex":4,"Session":"0b5e","Value":"eyJpZCI6ImEiLCJhZGRyZXNzIjoiMTAuMC4wLjEiLCJwb3J0Ijo2Mzc5fQ==","CreateIndex":10,"ModifyIndex":21}]"#;
        let Sight::Held(h) = sight_of(200, held).unwrap() else {
            panic!()
        };
        assert_eq!(h.token, 21);
        assert_eq!(h.value.id, "a");
        assert_eq!(h.value.port, Some(6379));
        let evil = br#"[{"ModifyIndex":1,"Session":"s","Value":"eyJpZCI6ImEiLCJhZGRyZXNzIjoiYTsgcm0ifQ=="}]"#;
        assert!(sight_of(200, evil).is_err());
    }
}
