//! Where the agent is and how to talk to it: `[catalog]` first, Consul's own environment
//! variables second, Consul's defaults last.
//!
//! Users come from consul-template and the `consul` CLI, whose environment variables they
//! already set in their containers (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, ...). Honouring
//! them means a Dockerfile switches to rewire without new plumbing. Resolution is a pure
//! function of the settings and an environment lookup, so every rule is table-tested.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::catalog::CatalogError;
use crate::catalog::http::{self, Tls, Tuning};
use crate::config::{ConsulSettings, Secret};

/// Consul's default agent address.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// Connections to the agent: 5 s to connect (TLS included); keepalive probes after 15 s idle,
/// so a long poll that sits idle for a minute notices a vanished agent (or a NAT that dropped
/// the connection) without waiting for its timeout.
const TUNING: Tuning = Tuning {
    connect_timeout: Duration::from_secs(5),
    keepalive: Duration::from_secs(15),
    keepalive_probes: None,
    pool_idle_timeout: None,
};

/// Connection settings after the config and the environment were merged.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// `scheme://host:port[/path]` as the user gave it (for logs and the TCP connection).
    pub address: Url,
    pub token: Option<Secret>,
    /// `CONSUL_HTTP_AUTH` (`user:password`): HTTP basic auth, for an agent behind a proxy.
    pub http_auth: Option<Secret>,
    pub datacenter: Option<String>,
    pub stale: bool,
    /// Used only when the address is `https`.
    pub tls: Tls,
}

/// A settings problem: fatal at start, so it maps to a non-transient [`CatalogError`].
fn invalid(msg: impl std::fmt::Display) -> CatalogError {
    CatalogError::Unsupported(format!("consul settings: {msg}"))
}

/// Merges `[catalog]` with Consul's environment variables (`env` is `std::env::var` in
/// production, a table in tests). Anything set in the config wins, field by field.
pub fn resolve(
    settings: &ConsulSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, CatalogError> {
    // Consul's CLI treats an empty variable as unset; so do we.
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());

    let ssl = match env("CONSUL_HTTP_SSL") {
        Some(v) => parse_bool("CONSUL_HTTP_SSL", &v)?,
        None => false,
    };
    let (raw_address, from) = match (&settings.address, env("CONSUL_HTTP_ADDR")) {
        (Some(a), _) => (a.clone(), "[catalog] address"),
        (None, Some(a)) => (a, "CONSUL_HTTP_ADDR"),
        // Without a scheme, so CONSUL_HTTP_SSL=true makes it https, as in Consul's CLI.
        (None, None) => (
            DEFAULT_ADDRESS.trim_start_matches("http://").to_string(),
            "the default address",
        ),
    };
    let address = parse_address(&raw_address, ssl).map_err(|e| invalid(format!("{from}: {e}")))?;
    let t = &settings.tls;
    let tls_table = t.ca.is_some()
        || t.cert.is_some()
        || t.key.is_some()
        || t.server_name.is_some()
        || t.verify.is_some();
    if tls_table && address.scheme() == "http" {
        // Consul's CLI ignores TLS files beside a plain http address; a user who wrote
        // [catalog.tls] expects TLS, so plaintext must not follow silently.
        // CONSUL_HTTP_SSL only applies to an address without a scheme.
        let fix = if raw_address.contains("://") {
            "write the address as https://HOST:PORT"
        } else {
            "write the address as https://HOST:PORT (or set CONSUL_HTTP_SSL=true)"
        };
        return Err(invalid(format!(
            "[catalog.tls] is set, but {from} {raw_address:?} is plain http, which would ignore it: \
             {fix}, or remove [catalog.tls]"
        )));
    }

    let token = if let Some(t) = &settings.token {
        non_empty(t.clone())
    } else if let Some(path) = &settings.token_file {
        Some(read_token(path)?)
    } else if let Some(t) = env("CONSUL_HTTP_TOKEN") {
        Some(Secret::new(t.trim()))
    } else if let Some(path) = env("CONSUL_HTTP_TOKEN_FILE") {
        Some(read_token(Path::new(&path))?)
    } else {
        None
    };

    let verify = match (settings.tls.verify, env("CONSUL_HTTP_SSL_VERIFY")) {
        (Some(v), _) => v,
        (None, Some(v)) => parse_bool("CONSUL_HTTP_SSL_VERIFY", &v)?,
        (None, None) => true,
    };
    let path_or_env =
        |set: &Option<PathBuf>, var: &str| set.clone().or_else(|| env(var).map(PathBuf::from));
    let tls = Tls {
        // A file, or a directory of PEM files (CONSUL_CAPATH, or a directory given as `ca`).
        ca: path_or_env(&settings.tls.ca, "CONSUL_CACERT")
            .or_else(|| env("CONSUL_CAPATH").map(PathBuf::from)),
        cert: path_or_env(&settings.tls.cert, "CONSUL_CLIENT_CERT"),
        key: path_or_env(&settings.tls.key, "CONSUL_CLIENT_KEY"),
        server_name: settings
            .tls
            .server_name
            .clone()
            .or_else(|| env("CONSUL_TLS_SERVER_NAME")),
        verify,
    };
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(invalid(
            "a client certificate needs both a cert and a key \
             ([catalog.tls] cert/key or CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)",
        ));
    }

    Ok(Resolved {
        address,
        token,
        http_auth: env("CONSUL_HTTP_AUTH").map(Secret::new),
        datacenter: settings.datacenter.clone().filter(|d| !d.is_empty()),
        stale: settings.stale,
        tls,
    })
}

fn non_empty(s: Secret) -> Option<Secret> {
    if s.expose().trim().is_empty() {
        None
    } else {
        Some(Secret::new(s.expose().trim()))
    }
}

fn read_token(path: &Path) -> Result<Secret, CatalogError> {
    let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
        path: format!("consul token file {}", path.display()),
        source,
    })?;
    // The file's content is the token: never echo it, not even in this error.
    non_empty(Secret::new(text)).ok_or_else(|| {
        invalid(format!(
            "token file {} is empty (write the ACL token into it, or unset it)",
            path.display()
        ))
    })
}

/// Go's `strconv.ParseBool`, which is what Consul's CLI uses for these variables.
fn parse_bool(var: &str, v: &str) -> Result<bool, CatalogError> {
    match v.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(invalid(format!(
            "{var}={other:?} is not a boolean (use true or false)"
        ))),
    }
}

/// `host:port`, `http://host:port` or `https://host:port[/path]`. Without a scheme,
/// `CONSUL_HTTP_SSL=true` means https (as in Consul's CLI); an explicit scheme always wins.
fn parse_address(addr: &str, ssl: bool) -> Result<Url, String> {
    let addr = addr.trim();
    let full = if addr.contains("://") {
        addr.to_string()
    } else {
        let scheme = if ssl { "https" } else { "http" };
        format!("{scheme}://{addr}")
    };
    let mut url = Url::parse(&full).map_err(|e| {
        format!(
            "{addr:?} is not an address ({e}); use HOST:PORT, http://HOST:PORT or https://HOST:PORT"
        )
    })?;
    match url.scheme() {
        "http" | "https" => {}
        "unix" => {
            return Err(format!(
                "{addr:?}: unix sockets are not supported; use http://HOST:PORT"
            ));
        }
        other => {
            return Err(format!(
                "{addr:?}: scheme {other:?} is not supported; use http:// or https://"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{addr:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{}: credentials in the address are not supported; use a token",
            url.host_str().unwrap_or_default()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{addr:?}: the address may not have a query or fragment"
        ));
    }
    // A base path (an agent behind a reverse proxy) is kept; requests append `/v1/...`.
    let path = url.path().trim_end_matches('/').to_string();
    if path.ends_with("/v1") {
        return Err(format!(
            "{addr:?} ends in /v1, which rewire adds to every request itself; give the address without it"
        ));
    }
    url.set_path(&path);
    Ok(url)
}

/// The HTTP client every request shares, and the base URL requests are built on.
///
/// The base URL differs from [`Resolved::address`] only when a TLS server name is set:
/// reqwest has no way to verify a certificate against another name than the URL's host,
/// so the URL carries the server name and a resolver sends its connections to the real
/// address (`curl --connect-to` does the same). SNI then carries the server name too, as
/// Go's `tls.Config.ServerName` does for Consul's CLI.
pub fn build_client(r: &Resolved) -> Result<(reqwest::Client, Url), CatalogError> {
    let https = r.address.scheme() == "https";
    let mut builder = http::builder("consul", &TUNING, https.then_some(&r.tls))?;
    let mut base = r.address.clone();
    if https && let Some(name) = &r.tls.server_name {
        let host = r.address.host_str().unwrap_or_default().to_string();
        let port = r.address.port_or_known_default().unwrap_or(443);
        base.set_host(Some(name))
            .map_err(|e| invalid(format!("TLS server name {name:?}: {e}")))?;
        builder = builder.dns_resolver(Arc::new(ConnectTo { host, port }));
    }
    Ok((http::build("consul", builder)?, base))
}

/// Resolves every name to the configured agent address (see [`build_client`]).
struct ConnectTo {
    /// A host name or an IP literal (IPv6 in brackets, as `Url` gives it).
    host: String,
    port: u16,
}

impl Resolve for ConnectTo {
    fn resolve(&self, _name: Name) -> Resolving {
        let host = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = self.port;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;
    use crate::config::TlsSettings;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve_with(settings: &ConsulSettings, pairs: &[(&str, &str)]) -> Resolved {
        resolve(settings, &env_of(pairs)).unwrap()
    }

    #[test]
    fn defaults_to_the_local_agent() {
        let r = resolve_with(&ConsulSettings::default(), &[]);
        assert_eq!(r.address.as_str(), "http://127.0.0.1:8500/");
        assert_eq!(r.token, None);
        assert!(r.tls.verify);
    }

    #[test]
    fn address_forms_are_accepted() {
        let cases = [
            ("127.0.0.1:8500", false, "http://127.0.0.1:8500/"),
            ("127.0.0.1:8500", true, "https://127.0.0.1:8500/"),
            ("http://consul:8500", true, "http://consul:8500/"),
            ("https://consul:8501/", false, "https://consul:8501/"),
            ("https://proxy/consul/", false, "https://proxy/consul"),
            ("[::1]:8500", false, "http://[::1]:8500/"),
        ];
        for (input, ssl, want) in cases {
            assert_eq!(parse_address(input, ssl).unwrap().as_str(), want, "{input}");
        }
        for bad in [
            "unix:///var/run/consul.sock",
            "ftp://x",
            "http://",
            "http://u:p@h:1",
            "h:1?x=y",
            "http://127.0.0.1:8500/v1",
            "http://proxy/consul/v1/",
        ] {
            assert!(parse_address(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_fills_what_the_config_leaves_unset() {
        let r = resolve_with(
            &ConsulSettings::default(),
            &[
                ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
                ("CONSUL_HTTP_SSL", "true"),
                ("CONSUL_HTTP_TOKEN", "env-token"),
                ("CONSUL_HTTP_SSL_VERIFY", "0"),
                ("CONSUL_CACERT", "/ca.pem"),
                ("CONSUL_CLIENT_CERT", "/c.pem"),
                ("CONSUL_CLIENT_KEY", "/k.pem"),
                ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
            ],
        );
        assert_eq!(r.address.as_str(), "https://10.0.0.1:8501/");
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("env-token"));
        assert_eq!(
            r.tls,
            Tls {
                ca: Some("/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
                server_name: Some("server.dc1.consul".into()),
                verify: false,
            }
        );
    }

    #[test]
    fn config_wins_over_env() {
        let settings = ConsulSettings {
            address: Some("https://cfg:1".into()),
            token: Some(Secret::new("cfg-token")),
            datacenter: Some("dc2".into()),
            stale: true,
            tls: TlsSettings {
                ca: Some("/cfg-ca.pem".into()),
                verify: Some(true),
                server_name: Some("cfg.name".into()),
                ..TlsSettings::default()
            },
            ..ConsulSettings::default()
        };
        let r = resolve_with(
            &settings,
            &[
                ("CONSUL_HTTP_ADDR", "https://env:2"),
                ("CONSUL_HTTP_TOKEN", "env-token"),
                ("CONSUL_HTTP_SSL_VERIFY", "false"),
                ("CONSUL_CACERT", "/env-ca.pem"),
                ("CONSUL_TLS_SERVER_NAME", "env.name"),
            ],
        );
        assert_eq!(r.address.as_str(), "https://cfg:1/");
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("cfg-token"));
        assert_eq!(r.datacenter.as_deref(), Some("dc2"));
        assert!(r.stale);
        assert!(r.tls.verify);
        assert_eq!(r.tls.ca, Some("/cfg-ca.pem".into()));
        assert_eq!(r.tls.server_name.as_deref(), Some("cfg.name"));
    }

    #[test]
    fn token_files_are_read_and_trimmed() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "  file-token  ").unwrap();
        let path = f.path().to_str().unwrap().to_string();

        let r = resolve_with(
            &ConsulSettings::default(),
            &[("CONSUL_HTTP_TOKEN_FILE", path.as_str())],
        );
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("file-token"));

        // CONSUL_HTTP_TOKEN beats CONSUL_HTTP_TOKEN_FILE; the config's file beats both.
        let r = resolve_with(
            &ConsulSettings::default(),
            &[
                ("CONSUL_HTTP_TOKEN_FILE", path.as_str()),
                ("CONSUL_HTTP_TOKEN", "env-token"),
            ],
        );
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("env-token"));
        let settings = ConsulSettings {
            token_file: Some(f.path().to_path_buf()),
            ..ConsulSettings::default()
        };
        let r = resolve_with(&settings, &[("CONSUL_HTTP_TOKEN", "env-token")]);
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("file-token"));
    }

    #[test]
    fn unusable_token_files_are_errors_without_their_content() {
        let missing = ConsulSettings {
            token_file: Some("/nonexistent/token".into()),
            ..ConsulSettings::default()
        };
        let err = resolve(&missing, &env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/token"), "{err}");

        let empty = tempfile::NamedTempFile::new().unwrap();
        let settings = ConsulSettings {
            token_file: Some(empty.path().to_path_buf()),
            ..ConsulSettings::default()
        };
        let err = resolve(&settings, &env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn bad_env_values_are_named() {
        let err = resolve(
            &ConsulSettings::default(),
            &env_of(&[("CONSUL_HTTP_SSL_VERIFY", "maybe")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CONSUL_HTTP_SSL_VERIFY"), "{err}");

        let err = resolve(
            &ConsulSettings::default(),
            &env_of(&[("CONSUL_HTTP_ADDR", "unix:///tmp/consul.sock")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CONSUL_HTTP_ADDR"), "{err}");

        let err = resolve(
            &ConsulSettings::default(),
            &env_of(&[("CONSUL_CLIENT_CERT", "/c.pem")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("both a cert and a key"), "{err}");
    }

    #[test]
    fn a_tls_table_beside_a_plain_http_address_is_an_error() {
        let settings = ConsulSettings {
            address: Some("127.0.0.1:8500".into()),
            tls: TlsSettings {
                ca: Some("/etc/consul/ca.pem".into()),
                ..TlsSettings::default()
            },
            ..ConsulSettings::default()
        };
        let err = resolve(&settings, &env_of(&[])).unwrap_err().to_string();
        assert!(
            err.contains("[catalog.tls]") && err.contains("https://"),
            "{err}"
        );
        // https (written, or by CONSUL_HTTP_SSL) takes it; the CA env var alone does not.
        assert!(resolve(&settings, &env_of(&[("CONSUL_HTTP_SSL", "true")])).is_ok());
        // Also with the default address (no scheme, so CONSUL_HTTP_SSL applies to it).
        let default_address = ConsulSettings {
            address: None,
            ..settings.clone()
        };
        let r = resolve(&default_address, &env_of(&[("CONSUL_HTTP_SSL", "true")])).unwrap();
        assert_eq!(r.address.as_str(), "https://127.0.0.1:8500/");
        // An explicit http:// is not changed by CONSUL_HTTP_SSL: the hint does not offer it.
        let explicit = ConsulSettings {
            address: Some("http://127.0.0.1:8500".into()),
            ..settings.clone()
        };
        let err = resolve(&explicit, &env_of(&[("CONSUL_HTTP_SSL", "true")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("CONSUL_HTTP_SSL"), "{err}");
        let https = ConsulSettings {
            address: Some("https://127.0.0.1:8501".into()),
            ..settings
        };
        assert!(resolve(&https, &env_of(&[])).is_ok());
        assert!(
            resolve(
                &ConsulSettings::default(),
                &env_of(&[("CONSUL_CACERT", "/etc/consul/ca.pem")])
            )
            .is_ok()
        );
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let r = resolve_with(
            &ConsulSettings::default(),
            &[("CONSUL_HTTP_ADDR", ""), ("CONSUL_HTTP_TOKEN", " ")],
        );
        assert_eq!(r.address.as_str(), "http://127.0.0.1:8500/");
        assert_eq!(r.token, None);
    }

    #[test]
    fn server_name_moves_into_the_url_and_tls_files_are_checked() {
        let r = resolve_with(
            &ConsulSettings::default(),
            &[
                ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
                ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
            ],
        );
        let (_client, base) = build_client(&r).unwrap();
        assert_eq!(base.as_str(), "https://server.dc1.consul:8501/");

        let r = resolve_with(
            &ConsulSettings::default(),
            &[
                ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
                ("CONSUL_CACERT", "/nonexistent/ca.pem"),
            ],
        );
        let err = build_client(&r).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");

        let mut junk = tempfile::NamedTempFile::new().unwrap();
        writeln!(junk, "not a certificate").unwrap();
        let ca = junk.path().to_str().unwrap().to_string();
        let r = resolve_with(
            &ConsulSettings::default(),
            &[
                ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
                ("CONSUL_CACERT", ca.as_str()),
            ],
        );
        assert!(build_client(&r).is_err());
    }
}
