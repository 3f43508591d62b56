//! Facts about the machine rewire runs on: its hostname and its IP addresses.
//!
//! The dir and etcd catalogs write the hostname into the records they register, the registrar
//! builds default instance ids from it and resolves `[[service]]` addresses here, and every
//! child process learns those addresses from [`address_env`]. One module, so the backends and
//! the registrar agree on what "this machine" is called.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::{AddressSpec, ServiceConfig};

/// The hostname, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Why a service's address cannot be resolved now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("cannot list interfaces: {0}")]
    Interfaces(nix::Error),
    #[error("{} (yet)", match .0.as_slice() {
        [one] => format!("interface {one:?} has no IP address"),
        many => format!("none of the interfaces {many:?} has an IP address"),
    })]
    NoAddress(Vec<String>),
    #[error("{} here (yet): see `ip link` for the names this machine has", match .0.as_slice() {
        [one] => format!("there is no interface {one:?}"),
        many => format!("none of the interfaces {many:?} exists"),
    })]
    NoInterface(Vec<String>),
}

/// Whether this machine has a network interface of that name (with or without an address).
pub fn interface_exists(name: &str) -> bool {
    !name.contains('/') && std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Resolves where peers should connect: the literal, the first listed interface's first IPv4
/// (else its first IPv6) trying each in order, or the first non-loopback IPv4 of the machine
/// (`127.0.0.1` when there is none, with a warning from the caller).
pub fn resolve_address(spec: &AddressSpec) -> Result<String, AddressError> {
    match spec {
        AddressSpec::Literal(a) => Ok(a.clone()),
        AddressSpec::Interface(names) => {
            let addrs = interface_addresses().map_err(AddressError::Interfaces)?;
            let first_of = |name: &String| {
                if name == ANY_IPV4 {
                    return Some(first_ipv4(&addrs));
                }
                let mine: Vec<IpAddr> = addrs
                    .iter()
                    .filter(|(n, _, _)| n == name)
                    .map(|(_, ip, _)| *ip)
                    .collect();
                mine.iter()
                    .find(|ip| ip.is_ipv4())
                    .or_else(|| mine.iter().find(|ip| !is_link_local(ip)))
                    .or(mine.first())
                    .map(|ip| ip.to_string())
            };
            names.iter().find_map(first_of).ok_or_else(|| {
                // /sys may be missing (some sandboxes): then say only what is known.
                let sys = std::path::Path::new("/sys/class/net").is_dir();
                if sys && !names.iter().any(|n| interface_exists(n)) {
                    AddressError::NoInterface(names.clone())
                } else {
                    AddressError::NoAddress(names.clone())
                }
            })
        }
        AddressSpec::Auto => {
            let addrs = interface_addresses().map_err(AddressError::Interfaces)?;
            Ok(first_ipv4(&addrs))
        }
    }
}

/// In an `interface` list, the machine's first non-loopback IPv4 address (ContainerPilot's
/// `inet`, the usual last fallback: `["eth1", "inet"]`).
pub const ANY_IPV4: &str = "inet";

/// The first non-loopback IPv4 address of an interface that is up; `127.0.0.1` without one.
fn first_ipv4(addrs: &[(String, IpAddr, bool)]) -> String {
    addrs
        .iter()
        .find(|(_, ip, up)| *up && ip.is_ipv4() && !ip.is_loopback())
        .map(|(_, ip, _)| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

/// (interface, address, is up) for every IP address of this machine, in the kernel's order.
fn interface_addresses() -> nix::Result<Vec<(String, IpAddr, bool)>> {
    use nix::net::if_::InterfaceFlags;
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let up = ifa.flags.contains(InterfaceFlags::IFF_UP);
        out.push((ifa.interface_name, ip, up));
    }
    Ok(out)
}

/// `REWIRE_<SERVICE>_IP` for every service whose address can be resolved now (hooks use it to
/// tell peers where they are). The name is upper-cased, anything else than A-Z0-9 becomes `_`.
pub fn address_env(services: &[ServiceConfig]) -> BTreeMap<String, String> {
    services
        .iter()
        .filter_map(|s| {
            let addr = resolve_address(&s.address).ok()?;
            Some((format!("REWIRE_{}_IP", env_name(&s.name)), addr))
        })
        .collect()
}

fn env_name(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn svc(name: &str, port: u16) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            id: None,
            port,
            address: AddressSpec::Literal("10.1.2.3".into()),
            tags: vec![],
            meta: BTreeMap::new(),
            health: None,
            interval: Duration::from_secs(10),
            ttl: Duration::from_secs(25),
            initial_status: None,
            deregister_after: Duration::from_secs(600),
            job: None,
        }
    }

    #[test]
    fn address_env_names_are_upper_case_and_safe() {
        let env = address_env(&[svc("my-web.v2", 80)]);
        assert_eq!(
            env.get("REWIRE_MY_WEB_V2_IP").map(String::as_str),
            Some("10.1.2.3")
        );
    }

    #[test]
    fn auto_address_is_never_loopback_unless_nothing_else() {
        let a: IpAddr = resolve_address(&AddressSpec::Auto)
            .unwrap()
            .parse()
            .unwrap();
        let others = interface_addresses()
            .unwrap()
            .into_iter()
            .any(|(_, ip, up)| up && ip.is_ipv4() && !ip.is_loopback());
        assert_eq!(a.is_loopback(), !others);
    }

    #[test]
    fn loopback_interface_resolves_to_127_0_0_1() {
        assert_eq!(
            resolve_address(&AddressSpec::Interface(vec!["lo".into()])).unwrap(),
            "127.0.0.1"
        );
        assert!(resolve_address(&AddressSpec::Interface(vec!["nope0".into()])).is_err());
        // A fallback list: the first that has an address; `inet` is any IPv4.
        assert!(
            resolve_address(&AddressSpec::Interface(vec!["nope0".into(), "inet".into()])).is_ok()
        );
        assert_eq!(
            resolve_address(&AddressSpec::Interface(vec!["nope0".into(), "lo".into()])).unwrap(),
            "127.0.0.1"
        );
        let e = resolve_address(&AddressSpec::Interface(vec![
            "nope0".into(),
            "nope1".into(),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("interfaces [\"nope0\", \"nope1\"]"), "{e}");
    }
}
