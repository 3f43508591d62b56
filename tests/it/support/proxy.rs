//! A TCP proxy the test can cut: every connection through it, open or new, stops at once
//! (for Consul, which ships no proxy of its own; etcd has `etcd gateway start`).

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct TcpProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to `target` ("host:port").
    pub fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("local address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let target = target.to_string();
        let acceptor = {
            let (cut, open) = (cut.clone(), open.clone());
            std::thread::Builder::new()
                .name("tcp-proxy".into())
                .spawn(move || {
                    while !cut.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((client, _)) => {
                                let _ = client.set_nonblocking(false);
                                if let Ok(server) = TcpStream::connect(&target) {
                                    let _ = pipe(client, server, &open);
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                    // The listener closes here: new connections are refused.
                })
                .expect("spawn the proxy thread")
        };
        TcpProxy {
            port,
            cut,
            open,
            acceptor: Some(acceptor),
        }
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts every connection and refuses new ones. Idempotent.
    pub fn cut(&mut self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Copies both ways on two threads; keeps clones so `cut` can shut them.
fn pipe(client: TcpStream, server: TcpStream, open: &Mutex<Vec<TcpStream>>) -> io::Result<()> {
    {
        let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
        open.push(client.try_clone()?);
        open.push(server.try_clone()?);
    }
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let (mut s_read, mut c_write) = (server, client);
    std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Write);
    });
    Ok(())
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
