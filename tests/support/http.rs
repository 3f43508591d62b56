//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream` (one request per connection,
//! `Connection: close`; Content-Length, chunked and read-to-EOF bodies).
//!
//! `addr` is "127.0.0.1:PORT" (an `http://` prefix and a trailing `/` are tolerated).
//! `get`/`put`/`post`/`delete` panic on I/O errors (handy in tests); `request`/`try_*` return them.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Read/write timeout of the convenience functions.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Header names as received; look them up with [`Response::header`] (case-insensitive).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

fn host_port(addr: &str) -> &str {
    let a = addr.strip_prefix("http://").unwrap_or(addr);
    a.trim_end_matches('/')
}

/// Sends one request and reads the whole response.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let hp = host_port(addr);
    let sa = hp.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {addr:?}"))
    })?;
    let stream = TcpStream::connect_timeout(&sa, timeout.min(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;

    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hp}\r\nConnection: close\r\nUser-Agent: rewire-test-support\r\n"
    );
    let body = body.unwrap_or_default();
    if !body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut w = &stream;
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    w.write_all(&msg)?;
    w.flush()?;

    let mut r = BufReader::new(&stream);
    read_response(&mut r, method == "HEAD")
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before end of response head",
        ));
    }
    let s = String::from_utf8_lossy(&buf);
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

fn read_response(r: &mut impl BufRead, head_only: bool) -> io::Result<Response> {
    loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/") {
            return Err(bad(format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        if (100..200).contains(&status) {
            continue; // interim response (100 Continue): the real one follows
        }
        let mut resp = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("Transfer-Encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body = read_chunked(r)?;
        } else if let Some(cl) = resp.header("Content-Length") {
            let n: usize = cl
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
            let mut body = vec![0; n];
            r.read_exact(&mut body)?;
            resp.body = body;
        } else {
            r.read_to_end(&mut resp.body)?;
        }
        return Ok(resp);
    }
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // trailers, up to the empty line
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let crlf = read_line(r)?;
        if !crlf.is_empty() {
            return Err(bad("missing CRLF after chunk".into()));
        }
    }
}

pub fn try_get(addr: &str, path: &str) -> io::Result<Response> {
    request(addr, "GET", path, &[], None, DEFAULT_TIMEOUT)
}

pub fn try_put(addr: &str, path: &str, body: impl AsRef<[u8]>) -> io::Result<Response> {
    request(addr, "PUT", path, &[], Some(body.as_ref()), DEFAULT_TIMEOUT)
}

pub fn try_post(addr: &str, path: &str, body: impl AsRef<[u8]>) -> io::Result<Response> {
    request(
        addr,
        "POST",
        path,
        &[],
        Some(body.as_ref()),
        DEFAULT_TIMEOUT,
    )
}

#[track_caller]
fn must(r: io::Result<Response>, method: &str, addr: &str, path: &str) -> Response {
    match r {
        Ok(r) => r,
        Err(e) => panic!("HTTP {method} http://{}{path} failed: {e}", host_port(addr)),
    }
}

/// GET; panics on I/O errors.
#[track_caller]
pub fn get(addr: &str, path: &str) -> Response {
    must(try_get(addr, path), "GET", addr, path)
}

/// GET with extra headers (e.g. `[("X-Consul-Token", token)]`); panics on I/O errors.
#[track_caller]
pub fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    must(
        request(addr, "GET", path, headers, None, DEFAULT_TIMEOUT),
        "GET",
        addr,
        path,
    )
}

/// PUT with a body; panics on I/O errors.
#[track_caller]
pub fn put(addr: &str, path: &str, body: impl AsRef<[u8]>) -> Response {
    must(try_put(addr, path, body), "PUT", addr, path)
}

/// PUT with extra headers; panics on I/O errors.
#[track_caller]
pub fn put_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Response {
    must(
        request(
            addr,
            "PUT",
            path,
            headers,
            Some(body.as_ref()),
            DEFAULT_TIMEOUT,
        ),
        "PUT",
        addr,
        path,
    )
}

/// POST with a body; panics on I/O errors.
#[track_caller]
pub fn post(addr: &str, path: &str, body: impl AsRef<[u8]>) -> Response {
    must(try_post(addr, path, body), "POST", addr, path)
}

/// POST with extra headers; panics on I/O errors.
#[track_caller]
pub fn post_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Response {
    must(
        request(
            addr,
            "POST",
            path,
            headers,
            Some(body.as_ref()),
            DEFAULT_TIMEOUT,
        ),
        "POST",
        addr,
        path,
    )
}

/// DELETE; panics on I/O errors.
#[track_caller]
pub fn delete(addr: &str, path: &str) -> Response {
    must(
        request(addr, "DELETE", path, &[], None, DEFAULT_TIMEOUT),
        "DELETE",
        addr,
        path,
    )
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters kept).
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
