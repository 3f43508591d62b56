//! Free loopback ports. A port from binding :0 can be taken again before the daemon binds it, so
//! the harness start functions retry with new ports when a daemon fails to start.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A free TCP port on 127.0.0.1 that this process has not handed out before.
pub fn free_port() -> u16 {
    pick(false)
}

/// A port free for both TCP and UDP on 127.0.0.1 (Consul DNS/serf use both).
pub fn free_port_tcp_udp() -> u16 {
    pick(true)
}

fn pick(udp_too: bool) -> u16 {
    for _ in 0..200 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if udp_too && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        if handed_out()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return port;
        }
    }
    panic!("could not find a free loopback port");
}

/// "127.0.0.1:PORT".
pub fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// True when a TCP connection to 127.0.0.1:port succeeds (within 500 ms).
pub fn port_open(port: u16) -> bool {
    let sa = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&sa, Duration::from_millis(500)).is_ok()
}
