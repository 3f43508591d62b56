//! Blocking HTTP for the harnesses and the tests, on reqwest.
//!
//! Tests call these from plain threads and from inside `#[tokio::test]` bodies alike.
//! reqwest's own blocking client panics inside a runtime, so the requests run on a small
//! runtime owned by this module and the caller waits for the answer on a channel (blocking the
//! calling thread, as a socket read would).
//!
//! One request per connection (no pool), no proxy from the environment: a test that kills a
//! daemon must not meet a pooled connection to the old one, and `http_proxy` must not route
//! loopback traffic.
//!
//! `addr` is "127.0.0.1:PORT" (an `http://` prefix and a trailing `/` are tolerated).

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::HeaderMap;

/// Timeout of a request unless [`Request::timeout`] sets another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A whole response: status, headers and the body read to its end.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) when it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.text()))
    }

    /// The first header named `name` (case-insensitive), when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A request to send with [`Request::send`] (panics on I/O errors) or [`Request::try_send`].
#[must_use = "a request does nothing until it is sent"]
pub struct Request {
    what: String,
    builder: reqwest::RequestBuilder,
}

impl Request {
    fn new(method: reqwest::Method, addr: &str, path: &str) -> Request {
        let url = format!("http://{}{path}", host_port(addr));
        Request {
            what: format!("{method} {url}"),
            builder: client().request(method, url),
        }
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Request {
        self.builder = self.builder.body(body.as_ref().to_vec());
        self
    }

    /// Appends `pairs` to the URL's query, percent-encoded.
    pub fn query(mut self, pairs: &[(&str, &str)]) -> Request {
        self.builder = self.builder.query(pairs);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.builder = self.builder.header(name, value);
        self
    }

    /// The whole request, connecting included, must be done within `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.builder = self.builder.timeout(timeout);
        self
    }

    /// Sends the request and reads the whole response.
    pub fn try_send(self) -> reqwest::Result<Response> {
        let request = self.builder;
        block_on(async move {
            let r = request.send().await?;
            let (status, headers) = (r.status().as_u16(), r.headers().clone());
            let body = r.bytes().await?.to_vec();
            Ok(Response {
                status,
                headers,
                body,
            })
        })
    }

    /// Sends the request; panics (at the caller) when it fails for want of an answer.
    #[track_caller]
    pub fn send(self) -> Response {
        let what = self.what.clone();
        self.try_send().unwrap_or_else(|e| {
            // reqwest's own message hides the cause (refused, reset, timed out): name it.
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause.push_str(&format!(": {s}"));
                source = s.source();
            }
            panic!("HTTP {what} failed: {cause}")
        })
    }
}

pub fn get(addr: &str, path: &str) -> Request {
    Request::new(reqwest::Method::GET, addr, path)
}

pub fn put(addr: &str, path: &str, body: impl AsRef<[u8]>) -> Request {
    Request::new(reqwest::Method::PUT, addr, path).body(body)
}

pub fn post(addr: &str, path: &str, body: impl AsRef<[u8]>) -> Request {
    Request::new(reqwest::Method::POST, addr, path).body(body)
}

pub fn delete(addr: &str, path: &str) -> Request {
    Request::new(reqwest::Method::DELETE, addr, path)
}

/// `s` as one URL path segment, percent-encoded where it must be.
pub fn segment(s: &str) -> String {
    let mut url = reqwest::Url::parse("http://segment/").expect("a valid base URL");
    url.path_segments_mut()
        .expect("an http URL has a path")
        .push(s);
    url.path()[1..].to_string()
}

fn host_port(addr: &str) -> &str {
    let a = addr.strip_prefix("http://").unwrap_or(addr);
    a.trim_end_matches('/')
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("support-http")
            .enable_all()
            .build()
            .expect("the support HTTP runtime")
    })
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let _in_runtime = runtime().enter();
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(5))
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .expect("the support HTTP client")
    })
}

/// Runs `f` on the support runtime; the calling thread waits for its output.
fn block_on<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the support HTTP task panicked")
}
