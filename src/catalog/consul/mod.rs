//! The Consul backend: blocking queries against a Consul agent's HTTP API, and the agent's
//! service registration with TTL checks.
//!
//! Most of rewire's users come from consul-template and ContainerPilot, so this backend
//! follows Consul's documented contract to the letter, as 1.8.7 implements it:
//!
//! - `service(name)` reads `/v1/health/service/<name>` without `?passing`: every instance
//!   with the worst status of its checks (the node's `serfHealth` included), so templates can
//!   filter by status on one shared watch. `services()` reads `/v1/catalog/services`,
//!   `key`/`keys` read `/v1/kv/<path>` (`?recurse`); `dc` and `stale` apply to every read.
//! - Each distinct query holds one long poll (see [`poll`]); one HTTP/1.1 client with TCP
//!   keepalive serves them all. Read timeouts exceed `wait` plus Consul's wait/16 jitter.
//! - ACLs can't be detected from query results (a bad token reads as "no services"), so
//!   [`Catalog::preflight`] asks `/v1/acl/token/self` before anything is rendered.
//! - The token travels only in the `X-Consul-Token` header, marked sensitive; URLs, errors,
//!   logs and `Debug` never contain it. Redirects are not followed (they would carry it).
//!
//! Decoding lives in [`decode`] and connection settings in [`settings`], both pure and
//! unit-tested; [`agent`] is the HTTP side (requests, errors, TLS hints), [`register`] the
//! service definition and TTL updates, [`poll`] the long polls, [`election`] elections (a
//! session-held lock on `rewire/elections/<name>`). The integration tests run everything
//! against a real agent.

mod agent;
pub(crate) mod decode;
mod election;
mod poll;
pub(crate) mod register;
mod settings;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use self::agent::{Agent, WRITE_TIMEOUT};
use self::decode::BACKEND;
use self::poll::Pace;
use self::register::{
    MAX_CHECK_OUTPUT, check_id, preflight_verdict, registration_body, truncate_output,
};
use crate::catalog::{Catalog, CatalogError};
use crate::config::{CatalogConfig, ConsulSettings};
use crate::model::{Data, Query, Registration, Status};
use crate::store::Store;

/// Consul caps `wait` at 10 minutes; below a second, blocking makes no sense.
const MAX_WAIT: Duration = Duration::from_secs(600);
const MIN_WAIT: Duration = Duration::from_secs(1);

/// How many reads [`Catalog::fetch_many`] runs at once (each needs a connection).
const FETCH_CONCURRENCY: usize = 16;

/// A Consul agent as a [`Catalog`].
pub struct ConsulCatalog {
    agent: Arc<Agent>,
    pace: Pace,
}

impl ConsulCatalog {
    /// Connects (lazily: nothing is sent yet) to the agent described by `settings`, falling
    /// back to Consul's environment variables for what the config leaves unset.
    pub fn new(
        settings: &ConsulSettings,
        catalog: &CatalogConfig,
    ) -> Result<ConsulCatalog, CatalogError> {
        Self::with_env(settings, catalog, &|name| std::env::var(name).ok())
    }

    /// [`ConsulCatalog::new`] with the environment given as a lookup function (tests).
    pub fn with_env(
        settings: &ConsulSettings,
        catalog: &CatalogConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConsulCatalog, CatalogError> {
        let resolved = settings::resolve(settings, env)?;
        let (http, base) = settings::build_client(&resolved)?;
        let token = match &resolved.token {
            None => None,
            Some(secret) => {
                let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                    CatalogError::Unsupported(
                        "consul settings: the ACL token holds characters that cannot be sent in \
                         an HTTP header"
                            .into(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let auth = match &resolved.http_auth {
            None => None,
            Some(secret) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(secret.expose());
                let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                    .expect("base64 is a valid header value");
                value.set_sensitive(true);
                Some(value)
            }
        };
        let wait = catalog.block_wait.clamp(MIN_WAIT, MAX_WAIT);
        let agent = Agent {
            http,
            base,
            address: resolved.address,
            token,
            auth,
            client_cert: resolved.tls.cert.is_some(),
            datacenter: resolved.datacenter,
            stale: resolved.stale,
            wait,
            max_response: catalog.max_response,
            max_value: catalog.max_file,
            reads: agent::Reads::new(settings.max_connections.unwrap_or(agent::DEFAULT_READS)),
        };
        Ok(ConsulCatalog {
            agent: Arc::new(agent),
            pace: Pace {
                wait,
                retry: catalog.retry.clone(),
            },
        })
    }
}

impl fmt::Debug for ConsulCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulCatalog")
            .field("address", &self.agent.address.as_str())
            .field("datacenter", &self.agent.datacenter)
            .field("stale", &self.agent.stale)
            .field("token", &self.agent.token.as_ref().map(|_| "<redacted>"))
            .field("wait", &self.agent.wait)
            .finish()
    }
}

#[async_trait]
impl Catalog for ConsulCatalog {
    fn describe(&self) -> String {
        self.agent.describe()
    }

    async fn preflight(&self) -> Result<(), CatalogError> {
        let req = self
            .agent
            .request(Method::GET, self.agent.url(["acl", "token", "self"]));
        let (status, _, body) = self
            .agent
            .exchange("GET /v1/acl/token/self", req, WRITE_TIMEOUT)
            .await
            .map_err(|e| self.agent.closed_after_handshake(e))?;
        preflight_verdict(status, &body, self.agent.token.is_some())
    }

    async fn fetch(&self, query: &Query) -> Result<Data, CatalogError> {
        self.agent.read_once(query, 0).await.map(|r| r.data)
    }

    async fn fetch_many(&self, queries: &[Query]) -> Vec<(Query, Result<Data, CatalogError>)> {
        let mut results: Vec<Option<Result<Data, CatalogError>>> =
            queries.iter().map(|_| None).collect();
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while next < queries.len() && tasks.len() < FETCH_CONCURRENCY {
                let agent = self.agent.clone();
                let query = queries[next].clone();
                let i = next;
                tasks.spawn(async move { (i, agent.read_once(&query, 0).await.map(|r| r.data)) });
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok((i, result))) => results[i] = Some(result),
                Some(Err(e)) => debug!(error = %e, "consul fetch task failed"),
                None => break,
            }
        }
        queries
            .iter()
            .zip(results)
            .map(|(q, r)| {
                let r = r.unwrap_or_else(|| {
                    Err(CatalogError::Unreachable {
                        backend: BACKEND.into(),
                        detail: format!("reading {q} was interrupted"),
                    })
                });
                (q.clone(), r)
            })
            .collect()
    }

    async fn watch(
        &self,
        wanted: watch::Receiver<BTreeSet<Query>>,
        store: Arc<Store>,
        stop: CancellationToken,
    ) {
        poll::reconcile(
            self.agent.clone(),
            wanted,
            store,
            stop,
            self.pace.clone(),
            self.describe(),
        )
        .await;
    }

    async fn register(&self, reg: &Registration) -> Result<(), CatalogError> {
        const WHAT: &str = "PUT /v1/agent/service/register";
        let url = self.agent.url(["agent", "service", "register"]);
        let (status, body) = self
            .agent
            .put(WHAT, url, Some(registration_body(reg)))
            .await?;
        match status {
            200..=299 => Ok(()),
            400 => Err(CatalogError::Denied {
                backend: BACKEND.into(),
                detail: format!("{WHAT} answered 400: {}", decode::snippet(&body)),
                hint: format!(
                    "Consul rejected the definition of service {:?}: check its [[service]] block",
                    reg.name
                ),
            }),
            _ => Err(decode::status_error(
                WHAT,
                status,
                &body,
                self.agent.token.is_some(),
            )),
        }
    }

    async fn deregister(&self, reg: &Registration) -> Result<(), CatalogError> {
        let url = self
            .agent
            .url(["agent", "service", "deregister", reg.id.as_str()]);
        let what = format!("PUT {}", url.path());
        let (status, body) = self.agent.put(&what, url, None).await?;
        // 1.8.7 answers 200 for an unknown id; later versions 404 "Unknown service ID".
        if (200..300).contains(&status)
            || status == 404
            || String::from_utf8_lossy(&body).contains("Unknown service")
        {
            return Ok(());
        }
        Err(decode::status_error(
            &what,
            status,
            &body,
            self.agent.token.is_some(),
        ))
    }

    async fn update_ttl(
        &self,
        reg: &Registration,
        status: Status,
        note: &str,
    ) -> Result<(), CatalogError> {
        let check = check_id(&reg.id);
        let url = self.agent.url(["agent", "check", "update", check.as_str()]);
        let what = format!("PUT {}", url.path());
        let body = json!({
            "Status": status.as_str(),
            "Output": truncate_output(note, MAX_CHECK_OUTPUT),
        });
        let (code, answer) = self.agent.put(&what, url, Some(body)).await?;
        match code {
            200..=299 => Ok(()),
            401 | 403 => Err(decode::status_error(
                &what,
                code,
                &answer,
                self.agent.token.is_some(),
            )),
            // 1.8.7: 500 "CheckID ... does not have associated TTL" once the agent forgot the
            // check (restart); later versions 404 "Unknown check ID". Any other refusal is
            // also best answered by registering again.
            _ => Err(CatalogError::NotRegistered {
                backend: BACKEND.into(),
                id: reg.id.clone(),
                detail: format!("{what} answered {code}: {}", decode::snippet(&answer)),
            }),
        }
    }

    fn ballot(
        &self,
        spec: &crate::catalog::election::BallotSpec,
    ) -> Result<Arc<dyn crate::catalog::election::Ballot>, CatalogError> {
        Ok(Arc::new(election::ConsulBallot::new(
            self.agent.clone(),
            self.pace.clone(),
            spec,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Backend, Retry, Secret};

    fn catalog_config(settings: &ConsulSettings) -> CatalogConfig {
        CatalogConfig {
            backend: Backend::Consul(settings.clone()),
            block_wait: Duration::from_secs(60),
            retry: Retry {
                base: Duration::from_millis(250),
                max: Duration::from_secs(30),
            },
            deregister_after: Duration::from_secs(600),
            max_file: crate::config::DEFAULT_MAX_FILE,
            max_response: crate::config::DEFAULT_MAX_RESPONSE,
        }
    }

    fn catalog(settings: ConsulSettings) -> ConsulCatalog {
        let cfg = catalog_config(&settings);
        ConsulCatalog::with_env(&settings, &cfg, &|_| None).unwrap()
    }

    #[test]
    fn read_urls_carry_blocking_params_dc_and_stale() {
        let c = catalog(ConsulSettings {
            address: Some("http://127.0.0.1:8500".into()),
            datacenter: Some("dc2".into()),
            stale: true,
            ..ConsulSettings::default()
        });
        let a = &c.agent;
        assert_eq!(
            a.read_url(&Query::Service("web".into()), 0).as_str(),
            "http://127.0.0.1:8500/v1/health/service/web?dc=dc2&stale"
        );
        assert_eq!(
            a.read_url(&Query::Keys("app/".into()), 42).as_str(),
            "http://127.0.0.1:8500/v1/kv/app/?dc=dc2&stale&recurse&index=42&wait=60000ms"
        );
        // A query's own datacenter wins over [catalog] datacenter.
        let remote = Query::Keys("app/".into()).in_datacenter(Some("east".into()));
        assert_eq!(
            a.read_url(&remote, 42).as_str(),
            "http://127.0.0.1:8500/v1/kv/app/?dc=east&stale&recurse&index=42&wait=60000ms"
        );
        assert_eq!(
            a.read_url(&Query::Nodes.in_datacenter(Some("east".into())), 3)
                .as_str(),
            "http://127.0.0.1:8500/v1/catalog/nodes?dc=east&stale&index=3&wait=60000ms"
        );
        // The datacenter list neither blocks nor depends on a datacenter.
        assert_eq!(
            a.read_url(&Query::Datacenters, 3).as_str(),
            "http://127.0.0.1:8500/v1/catalog/datacenters?stale"
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        let c = catalog(ConsulSettings {
            address: Some("https://proxy.example/consul/".into()),
            ..ConsulSettings::default()
        });
        let a = &c.agent;
        assert_eq!(
            a.read_url(&Query::Key("/app/a b?c#d%".into()), 0).as_str(),
            "https://proxy.example/consul/v1/kv/app/a%20b%3Fc%23d%25"
        );
        assert_eq!(
            a.read_url(&Query::Services, 0).as_str(),
            "https://proxy.example/consul/v1/catalog/services"
        );
        assert_eq!(
            a.read_url(&Query::Keys(String::new()), 0).as_str(),
            "https://proxy.example/consul/v1/kv/?recurse"
        );
    }

    #[test]
    fn blocking_wait_is_clamped_to_consul_maximum() {
        let settings = ConsulSettings::default();
        let mut cfg = catalog_config(&settings);
        cfg.block_wait = Duration::from_secs(3600);
        let c = ConsulCatalog::with_env(&settings, &cfg, &|_| None).unwrap();
        assert_eq!(c.agent.wait, MAX_WAIT);
    }

    #[test]
    fn token_is_never_shown() {
        let c = catalog(ConsulSettings {
            token: Some(Secret::new("s3cr3t-token")),
            ..ConsulSettings::default()
        });
        let shown = format!("{c:?} {}", c.describe());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("ACL token set"), "{shown}");
        let req = c
            .agent
            .request(Method::GET, c.agent.url(["agent", "self"]))
            .build()
            .unwrap();
        let value = req.headers().get("X-Consul-Token").unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{req:?}").contains("s3cr3t"));
        assert!(!req.url().as_str().contains("s3cr3t"));
    }

    #[test]
    fn consul_http_auth_is_sent_as_basic_auth_and_never_shown() {
        let settings = ConsulSettings::default();
        let cfg = catalog_config(&settings);
        let c = ConsulCatalog::with_env(&settings, &cfg, &|name| {
            (name == "CONSUL_HTTP_AUTH").then(|| "ops:pa55word".to_string())
        })
        .unwrap();
        let req = c
            .agent
            .request(Method::GET, c.agent.url(["agent", "self"]))
            .build()
            .unwrap();
        let value = req.headers().get("Authorization").unwrap();
        assert!(value.is_sensitive());
        // base64("ops:pa55word")
        assert_eq!(value.to_str().unwrap(), "Basic b3BzOnBhNTV3b3Jk");
        let shown = format!("{c:?} {req:?}");
        assert!(
            !shown.contains("pa55word") && !shown.contains("b3BzOnBhNTV3b3Jk"),
            "{shown}"
        );
    }

    #[test]
    fn registration_has_one_ttl_check() {
        let reg = Registration {
            id: "web-h-80".into(),
            name: "web".into(),
            address: "10.0.0.5".into(),
            port: 80,
            tags: vec!["edge".into()],
            meta: BTreeMap::from([("v".to_string(), "1".to_string())]),
            ttl: Duration::from_secs(25),
            deregister_after: Duration::from_secs(600),
            status: Status::Critical,
        };
        assert_eq!(
            registration_body(&reg),
            json!({
                "ID": "web-h-80", "Name": "web", "Address": "10.0.0.5", "Port": 80,
                "Tags": ["edge"], "Meta": {"v": "1"},
                "Check": {
                    "CheckID": "service:web-h-80", "Name": "web health (rewire)",
                    "TTL": "25000ms", "DeregisterCriticalServiceAfter": "600000ms",
                    "Status": "critical",
                },
            })
        );
    }

    #[test]
    fn check_output_is_cut_on_a_char_boundary() {
        assert_eq!(truncate_output("short", 4096), "short");
        let long = "é".repeat(5000);
        let cut = truncate_output(&long, 4096);
        assert!(cut.len() <= 4096, "{}", cut.len());
        assert!(cut.ends_with("(output truncated by rewire)"));
    }

    #[test]
    fn preflight_verdicts_follow_real_agent_answers() {
        // ACLs off (1.8.7: 401 with this body).
        assert!(preflight_verdict(401, b"ACL support disabled", false).is_ok());
        assert!(preflight_verdict(200, br#"{"AccessorID":"x"}"#, true).is_ok());
        for (status, body, token_set) in [
            (403, &b"ACL not found"[..], false),
            (403, b"ACL not found", true),
            (403, b"Permission denied", true),
            (500, b"rpc error: ACL not found", true),
        ] {
            let err = preflight_verdict(status, body, token_set).unwrap_err();
            assert!(matches!(err, CatalogError::Denied { .. }), "{err}");
            assert!(err.to_string().contains("CONSUL_HTTP_TOKEN"), "{err}");
        }
        let err = preflight_verdict(500, b"No cluster leader", true).unwrap_err();
        assert!(matches!(err, CatalogError::Unreachable { .. }), "{err}");
    }
}
