//! The store's own answer to a change, seen by the plainest client there is: the floor rewire's
//! reaction is measured against, in the same run and for the same change.
//!
//! - dir: an inotify watch on the service's directory, read by a thread of its own blocked in
//!   `poll`, noting when the writer's rename of `marker.json` is reported;
//! - etcd: one raw watch on the same prefix rewire watches, through the same JSON gateway
//!   (`POST /v3/watch`, HTTP/1.0 so the stream is bare lines), read by a thread of its own,
//!   noting when the event carrying the new value arrives;
//! - Consul: a raw blocking query on the same endpoint rewire uses
//!   (`/v1/health/service/web?index=N`, HTTP/1.0, no connection reuse), sent before the change
//!   and read to its end by a thread of its own, noting when the whole answer holding the
//!   new port has arrived (for 1 000 instances that includes the agent's time to serve 1.9 MB).
//!
//! Every observer is a blocked thread that the kernel wakes, like rewire's own watchers: no
//! polling. The instant is taken right after the read that completed the answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

/// One store's observer of the marker instance's changes.
pub trait Floor {
    /// Prepares to see the change that gives the marker `port` (called before the write).
    fn arm(&mut self, port: u16);
    /// When the store showed that change; None when it was not seen within `timeout`.
    fn seen(&mut self, timeout: Duration) -> Option<Instant>;
}

/// Stops the observer's thread when dropped.
struct StopFlag(Arc<AtomicBool>);

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn drain<T>(rx: &Receiver<T>) {
    while rx.try_recv().is_ok() {}
}

// ---- dir ----------------------------------------------------------------------------------

/// Renames of `marker.json` into the watched directory.
pub struct DirFloor {
    rx: Receiver<Instant>,
    _stop: StopFlag,
}

impl DirFloor {
    pub fn new(dir: &Path) -> std::io::Result<DirFloor> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: plain syscalls; the thread below owns and closes the descriptor.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a valid descriptor and a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MOVED_TO) } < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: ours.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || dir_thread(fd, &tx, &flag));
        Ok(DirFloor {
            rx,
            _stop: StopFlag(stop),
        })
    }
}

fn dir_thread(fd: libc::c_int, tx: &Sender<Instant>, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Acquire) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. The timeout only bounds how long a stopped floor lingers.
        if unsafe { libc::poll(&mut p, 1, 200) } <= 0 {
            continue;
        }
        // SAFETY: reads into a buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let at = Instant::now();
        if n <= 0 {
            continue;
        }
        let mut off = 0usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        while off + header <= n as usize {
            // SAFETY: the kernel wrote a whole event header at `off` (read_unaligned: the
            // buffer is bytes).
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
            let name = &buf[off + header..off + header + ev.len as usize];
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            if name == b"marker.json" {
                let _ = tx.send(at);
            }
            off += header + ev.len as usize;
        }
    }
    // SAFETY: ours.
    unsafe { libc::close(fd) };
}

impl Floor for DirFloor {
    fn arm(&mut self, _port: u16) {
        drain(&self.rx);
    }
    fn seen(&mut self, timeout: Duration) -> Option<Instant> {
        self.rx.recv_timeout(timeout).ok()
    }
}

// ---- etcd ---------------------------------------------------------------------------------

/// One raw watch stream on a prefix; reports when a given value goes by.
pub struct EtcdFloor {
    rx: Receiver<(Instant, Vec<u8>)>,
    /// The base64 of the value the armed change writes (the gateway sends values in base64).
    expect: Vec<u8>,
    value_of: Box<dyn Fn(u16) -> String>,
    _stop: StopFlag,
}

impl EtcdFloor {
    /// Watches `prefix` at `addr` ("127.0.0.1:PORT"); `value_of(port)` is the exact value
    /// the writer puts for the marker with that port.
    pub fn new(
        addr: &str,
        prefix: &str,
        value_of: Box<dyn Fn(u16) -> String>,
    ) -> std::io::Result<EtcdFloor> {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = format!(
            r#"{{"create_request":{{"key":"{}","range_end":"{}"}}}}"#,
            b64(prefix.as_bytes()),
            b64(&end)
        );
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        write!(
            s,
            "POST /v3/watch HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !flag.load(Ordering::Acquire) {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let _ = tx.send((Instant::now(), buf[..n].to_vec()));
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(EtcdFloor {
            rx,
            expect: Vec::new(),
            value_of,
            _stop: StopFlag(stop),
        })
    }
}

impl Floor for EtcdFloor {
    fn arm(&mut self, port: u16) {
        use base64::Engine;
        drain(&self.rx);
        self.expect = base64::engine::general_purpose::STANDARD
            .encode((self.value_of)(port))
            .into_bytes();
    }
    fn seen(&mut self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        // The stream since the arm: a message may come in several reads.
        let mut text: Vec<u8> = Vec::new();
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (at, bytes) = self.rx.recv_timeout(left).ok()?;
            text.extend_from_slice(&bytes);
            if contains(&text, &self.expect) {
                return Some(at);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

// ---- Consul -------------------------------------------------------------------------------

/// A raw blocking query per change on `/v1/health/service/<service>`.
pub struct ConsulFloor {
    addr: String,
    service: String,
    /// The index to block on: the last answer's `X-Consul-Index`.
    index: Arc<std::sync::Mutex<u64>>,
    rx: Option<Receiver<Option<Instant>>>,
}

impl ConsulFloor {
    pub fn new(addr: &str, service: &str) -> std::io::Result<ConsulFloor> {
        let (_, index, _) = consul_get(addr, &format!("/v1/health/service/{service}"))?;
        Ok(ConsulFloor {
            addr: addr.to_string(),
            service: service.to_string(),
            index: Arc::new(std::sync::Mutex::new(index)),
            rx: None,
        })
    }
}

/// One GET with HTTP/1.0 (the answer ends with the connection): the instant the whole answer
/// was read, its `X-Consul-Index` and its body.
fn consul_get(addr: &str, path: &str) -> std::io::Result<(Instant, u64, Vec<u8>)> {
    consul_get_signalled(addr, path, None)
}

/// How long after sending the query the write waits, so the agent holds the query when the
/// change arrives.
pub const CONSUL_PARK: Duration = Duration::from_millis(20);

impl Floor for ConsulFloor {
    fn arm(&mut self, port: u16) {
        let (tx, rx) = channel();
        let (sent_tx, sent_rx) = channel::<()>();
        let (addr, service, index) = (self.addr.clone(), self.service.clone(), self.index.clone());
        // A `-dev` agent pretty-prints its answers ("Port": 8080); others do not.
        let markers = [format!("\"Port\":{port}"), format!("\"Port\": {port}")];
        std::thread::spawn(move || {
            let mut first = true;
            let seen = loop {
                let at = *index.lock().unwrap();
                let path = format!("/v1/health/service/{service}?index={at}&wait=60s");
                // The query is on its way once connect and write returned; the first arm waits
                // for that (see CONSUL_PARK).
                let got = consul_get_signalled(&addr, &path, first.then_some(&sent_tx));
                first = false;
                match got {
                    Ok((t, next, body)) => {
                        *index.lock().unwrap() = next;
                        if markers.iter().any(|m| contains(&body, m.as_bytes())) {
                            break Some(t);
                        }
                    }
                    Err(_) => break None,
                }
            };
            let _ = tx.send(seen);
        });
        // Sent (or failed: then `seen` says None).
        let _ = sent_rx.recv_timeout(Duration::from_secs(5));
        std::thread::sleep(CONSUL_PARK);
        self.rx = Some(rx);
    }
    fn seen(&mut self, timeout: Duration) -> Option<Instant> {
        self.rx.take()?.recv_timeout(timeout).ok().flatten()
    }
}

/// [`consul_get`], telling `sent` once the request is written.
fn consul_get_signalled(
    addr: &str,
    path: &str,
    sent: Option<&Sender<()>>,
) -> std::io::Result<(Instant, u64, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    if let Some(tx) = sent {
        let _ = tx.send(());
    }
    let mut all = Vec::with_capacity(1 << 16);
    s.read_to_end(&mut all)?;
    let at = Instant::now();
    let head_end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let head = String::from_utf8_lossy(&all[..head_end]).to_ascii_lowercase();
    let index = head
        .lines()
        .find_map(|l| l.strip_prefix("x-consul-index:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no X-Consul-Index"))?;
    Ok((at, index, all[head_end + 4..].to_vec()))
}
