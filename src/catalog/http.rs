//! The HTTP client the Consul and etcd backends build on: one builder, one set of rules.
//!
//! - Redirects are refused: a redirect would carry the ACL token (`X-Consul-Token`) or the
//!   etcd auth token to wherever it points, and neither Consul's API nor etcd's gateway ever
//!   redirects a call, so one means a misconfiguration: fail rather than follow.
//! - TCP keepalive on every socket, so a long poll or a watch stream notices a vanished server
//!   (or a NAT that forgot the connection) without waiting for its own timeout.
//! - TLS: a CA file or a directory of CA files (`CONSUL_CAPATH`), a client certificate (cert
//!   and key, both or neither), and verification that can be turned off only explicitly.
//!
//! Timeouts and keepalive timing differ by protocol (a Consul long poll, an etcd watch with
//! short unary calls), so each backend passes its [`Tuning`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::CatalogError;

/// TLS material, already resolved from the config and the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// A PEM file, or a directory of PEM files.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to verify the server's certificate against when it differs from the host
    /// the connection goes to (each backend routes it: see their settings).
    pub server_name: Option<String>,
    pub verify: bool,
}

/// Connection timing for one protocol.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub connect_timeout: Duration,
    /// Idle time before the first keepalive probe.
    pub keepalive: Duration,
    /// Between probes, and how many unanswered probes end the connection (the system's
    /// defaults when unset).
    pub keepalive_probes: Option<(Duration, u32)>,
    /// How long an idle pooled connection is kept (reqwest's default when unset).
    pub pool_idle_timeout: Option<Duration>,
}

/// A client builder with rewire's rules for `backend` (`"consul"`, `"etcd"`: used in messages).
/// `tls` is applied when given; callers may add what is theirs (a resolver) and build.
pub fn builder(
    backend: &str,
    tuning: &Tuning,
    tls: Option<&Tls>,
) -> Result<reqwest::ClientBuilder, CatalogError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(tuning.connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(tuning.keepalive)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rewire/", env!("CARGO_PKG_VERSION")));
    if let Some((interval, retries)) = tuning.keepalive_probes {
        b = b
            .tcp_keepalive_interval(interval)
            .tcp_keepalive_retries(retries);
    }
    if let Some(idle) = tuning.pool_idle_timeout {
        b = b.pool_idle_timeout(idle);
    }
    let Some(tls) = tls else {
        return Ok(b);
    };
    let invalid = |msg: String| CatalogError::Unsupported(format!("{backend} settings: {msg}"));
    if !tls.verify {
        b = b.danger_accept_invalid_certs(true);
    }
    if let Some(ca) = &tls.ca {
        let files: Vec<PathBuf> = if ca.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(ca)
                .map_err(|e| invalid(format!("CA directory {}: {e}", ca.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            files
        } else {
            vec![ca.clone()]
        };
        let mut certs = Vec::new();
        for file in &files {
            let pem = read_file(backend, file, "CA certificate")?;
            certs.extend(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| invalid(format!("CA file {}: {e}", file.display())))?,
            );
        }
        if certs.is_empty() {
            return Err(invalid(format!(
                "CA file {} holds no PEM certificate",
                ca.display()
            )));
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let mut pem = read_file(backend, cert, "client certificate")?;
            pem.push(b'\n');
            pem.extend(read_file(backend, key, "client key")?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                invalid(format!(
                    "client certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            b = b.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(invalid(
                "a client certificate needs both a cert and a key".into(),
            ));
        }
    }
    Ok(b)
}

/// Builds the client, naming the backend if that fails.
pub fn build(backend: &str, b: reqwest::ClientBuilder) -> Result<reqwest::Client, CatalogError> {
    b.build().map_err(|e| {
        CatalogError::Unsupported(format!(
            "{backend} settings: cannot set up the HTTP client: {e}"
        ))
    })
}

/// Why a response body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is over the limit of {} ([catalog] max_response)", crate::config::show_size(*.max))]
    TooBig { max: u64 },
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
}

/// Reads a response body of at most `max` bytes (`[catalog] max_response`) chunk by chunk: a
/// bigger one, announced by `Content-Length` or found while reading, is refused before it
/// fills memory.
pub async fn read_body(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(BodyError::TooBig { max });
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = resp.chunk().await? {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(BodyError::TooBig { max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn read_file(backend: &str, path: &Path, what: &str) -> Result<Vec<u8>, CatalogError> {
    std::fs::read(path).map_err(|source| CatalogError::Io {
        path: format!("{backend} {what} {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUNING: Tuning = Tuning {
        connect_timeout: Duration::from_secs(1),
        keepalive: Duration::from_secs(10),
        keepalive_probes: None,
        pool_idle_timeout: None,
    };

    #[test]
    fn tls_files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Tls {
            ca: Some(dir.path().join("nope.pem")),
            verify: true,
            ..Tls::default()
        };
        let e = builder("etcd", &TUNING, Some(&missing)).unwrap_err();
        assert!(e.to_string().contains("etcd CA certificate"), "{e}");
        let empty_dir = Tls {
            ca: Some(dir.path().to_path_buf()),
            verify: true,
            ..Tls::default()
        };
        let e = builder("etcd", &TUNING, Some(&empty_dir)).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let half = Tls {
            cert: Some(dir.path().join("c.pem")),
            verify: true,
            ..Tls::default()
        };
        let e = builder("consul", &TUNING, Some(&half)).unwrap_err();
        assert!(e.to_string().contains("needs both a cert and a key"), "{e}");
    }

    #[test]
    fn without_tls_any_builder_builds() {
        let b = builder("consul", &TUNING, None).unwrap();
        assert!(build("consul", b).is_ok());
    }
}
