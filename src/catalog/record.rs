//! The JSON record of one instance, shared by the dir and etcd catalogs, and the checks every
//! backend applies to catalog data before a template may see it.
//!
//! Catalog data is never trusted: an address that is neither an IP nor a hostname, or a port
//! outside 1–65535, would end up in an nginx or haproxy config. Such an instance is skipped
//! with a warning; the rest of the list still renders.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Instance, Registration, Status};

/// `PATH/services/<service>/<id>.json` (dir) and `PREFIX/services/<service>/<id>` (etcd).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub address: String,
    pub port: i64,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default = "default_status")]
    pub status: Status,
    /// RFC 3339; past it the instance counts as critical (dir catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The health command's last output, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// The node (host) the instance runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn default_status() -> Status {
    Status::Passing
}

impl Record {
    pub fn from_registration(reg: &Registration, status: Status, node: &str) -> Record {
        Record {
            address: reg.address.clone(),
            port: i64::from(reg.port),
            tags: reg.tags.clone(),
            meta: reg.meta.clone(),
            status,
            expires_at: None,
            notes: None,
            node: Some(node.to_string()),
        }
    }

    /// Parses the expiry time, if any.
    pub fn expiry(&self) -> Result<Option<SystemTime>, String> {
        match &self.expires_at {
            None => Ok(None),
            Some(s) => humantime::parse_rfc3339_weak(s)
                .map(Some)
                .map_err(|e| format!("expires_at {s:?} is not an RFC 3339 time: {e}")),
        }
    }

    /// Turns the record into a validated instance. `now` decides expiry.
    pub fn into_instance(
        self,
        service: &str,
        id: &str,
        default_node: &str,
        now: SystemTime,
    ) -> Result<Instance, String> {
        check_name(service).map_err(|e| format!("service name: {e}"))?;
        check_address(&self.address)?;
        let port = check_port(self.port)?;
        let mut status = self.status;
        if let Some(expiry) = self.expiry()?
            && expiry <= now
        {
            status = Status::Critical;
        }
        let mut tags = self.tags;
        tags.sort();
        tags.dedup();
        Ok(Instance {
            id: id.to_string(),
            name: service.to_string(),
            node: self.node.unwrap_or_else(|| default_node.to_string()),
            address: self.address,
            port,
            tags,
            meta: self.meta,
            status,
        })
    }
}

/// An IP address (v4 or v6) or an RFC 1123 hostname.
pub fn check_address(addr: &str) -> Result<(), String> {
    if addr.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !addr.is_empty()
        && addr.len() <= 253
        && addr.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "address {addr:?} is neither an IP address nor a hostname"
        ))
    }
}

/// A port between 1 and 65535.
pub fn check_port(port: i64) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {port} is outside 1-65535")),
    }
}

/// Service names and instance ids become file names and URL path segments: keep them plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} may only hold letters, digits and - _ . : @ (and may not start with a dot)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn addresses_are_checked() {
        assert!(check_address("10.0.0.5").is_ok());
        assert!(check_address("::1").is_ok());
        assert!(check_address("web-1.internal").is_ok());
        assert!(check_address("").is_err());
        assert!(check_address("evil; rm -rf /").is_err());
        assert!(check_address("a b").is_err());
        assert!(check_address("-x.y").is_err());
    }

    #[test]
    fn ports_are_checked() {
        assert_eq!(check_port(80), Ok(80));
        assert!(check_port(0).is_err());
        assert!(check_port(65536).is_err());
        assert!(check_port(-1).is_err());
    }

    #[test]
    fn expired_record_is_critical() {
        let r: Record = serde_json::from_str(
            r#"{"address":"10.0.0.1","port":80,"expires_at":"2020-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let i = r
            .into_instance("web", "w1", "host", SystemTime::now())
            .unwrap();
        assert_eq!(i.status, Status::Critical);
    }

    #[test]
    fn unexpired_record_keeps_its_status() {
        let now = SystemTime::now();
        let later = humantime::format_rfc3339(now + Duration::from_secs(60)).to_string();
        let r = Record {
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec![],
            meta: BTreeMap::new(),
            status: Status::Passing,
            expires_at: Some(later),
            notes: None,
            node: None,
        };
        let i = r.into_instance("web", "w1", "host", now).unwrap();
        assert_eq!(i.status, Status::Passing);
        assert_eq!(i.node, "host");
    }
}
