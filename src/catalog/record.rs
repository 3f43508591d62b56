//! The JSON record of one instance, shared by the dir and etcd catalogs.
//!
//! Catalog data is never trusted: a record becomes an [`Instance`] only after the checks in
//! [`model`](crate::model) (an address that is neither an IP nor a hostname, or a port outside
//! 1–65535, would end up in an nginx or haproxy config). Such an instance is skipped with a
//! warning; the rest of the list still renders.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::{
    Instance, Invalid, MAX_META, MAX_TAGS, Registration, Status, check_address, check_name,
    check_port,
};

/// Why a record is not a usable instance.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not an instance record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("service name: {0}")]
    ServiceName(Invalid),
    #[error("instance id: {0}")]
    InstanceId(Invalid),
    #[error("node name: {0}")]
    NodeName(Invalid),
    #[error("expires_at {value:?} is not an RFC 3339 time: {source}")]
    Expiry {
        value: String,
        source: humantime::TimestampError,
    },
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error(
        "{n} {what}, more than the {max} rewire keeps per instance (a few hundred thousand tags \
         in a 1 MiB file took 8 MB of memory each)"
    )]
    TooMany {
        what: &'static str,
        n: usize,
        max: usize,
    },
}

/// `PATH/services/<service>/<id>.json` (dir) and `PREFIX/services/<service>/<id>` (etcd).
///
/// A field rewire does not know is refused ([`Record::parse`]): in a file written by hand,
/// `"stauts": "critical"` would otherwise give a passing instance without a word. Records
/// other tools write to etcd may carry fields of their own: [`Record::parse_lenient`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
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

/// Every field of [`Record`], for [`Record::parse_lenient`].
const FIELDS: [&str; 8] = [
    "address",
    "port",
    "tags",
    "meta",
    "status",
    "expires_at",
    "notes",
    "node",
];

impl Record {
    /// A record as rewire writes it: an unknown field is an error that names it.
    pub fn parse(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// A record some other tool may have written: fields rewire does not know are ignored.
    pub fn parse_lenient(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        match Record::parse(bytes) {
            Err(e) if e.is_data() && e.to_string().starts_with("unknown field") => {
                let mut fields: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(bytes)?;
                fields.retain(|k, _| FIELDS.contains(&k.as_str()));
                serde_json::from_value(serde_json::Value::Object(fields))
            }
            other => other,
        }
    }
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
    pub fn expiry(&self) -> Result<Option<SystemTime>, RecordError> {
        match &self.expires_at {
            None => Ok(None),
            Some(s) => parse_time(s)
                .map(Some)
                .map_err(|source| RecordError::Expiry {
                    value: s.clone(),
                    source,
                }),
        }
    }

    /// Turns the record into a validated instance. `now` decides expiry.
    pub fn into_instance(
        self,
        service: &str,
        id: &str,
        default_node: &str,
        now: SystemTime,
    ) -> Result<Instance, RecordError> {
        check_name(service).map_err(RecordError::ServiceName)?;
        // The node reaches templates (`s.node`) like the id: it may not carry config syntax.
        if let Some(node) = &self.node {
            check_name(node).map_err(RecordError::NodeName)?;
        }
        check_address(&self.address)?;
        let port = check_port(self.port)?;
        for (what, n, max) in [
            ("tags", self.tags.len(), MAX_TAGS),
            ("meta entries", self.meta.len(), MAX_META),
        ] {
            if n > max {
                return Err(RecordError::TooMany { what, n, max });
            }
        }
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

/// Cuts a health note (the check command's output, kept for humans) to `max` bytes on a
/// character boundary, marked with `…` when cut.
pub fn truncate_note(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An RFC 3339 time: `Z` or a numeric offset (`+01:00`, as `date -Iseconds` writes outside
/// UTC), or no zone at all, read as UTC (humantime's "weak" form: a space for the `T`, no
/// fraction needed).
fn parse_time(s: &str) -> Result<SystemTime, humantime::TimestampError> {
    let b = s.as_bytes();
    let n = b.len();
    let offset = (n > 6
        && matches!(b[n - 6], b'+' | b'-')
        && b[n - 3] == b':'
        && [1, 2, 4, 5].iter().all(|&i| b[n - 6 + i].is_ascii_digit()))
    .then(|| {
        let num = |i: usize| u64::from(b[n - 6 + i] - b'0');
        let secs = (num(1) * 10 + num(2)) * 3600 + (num(4) * 10 + num(5)) * 60;
        (b[n - 6] == b'+', std::time::Duration::from_secs(secs))
    });
    match offset {
        None => humantime::parse_rfc3339_weak(s),
        Some((east, by)) => {
            let local = humantime::parse_rfc3339_weak(&s[..n - 6])?;
            // 12:00+02:00 is 10:00 UTC.
            Ok(if east { local - by } else { local + by })
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Found by a new user: `date -Iseconds` outside UTC writes an offset, which was refused.
    #[test]
    fn expiry_times_take_z_a_numeric_offset_or_no_zone() {
        let utc = parse_time("2026-12-04T10:00:00Z").unwrap();
        assert_eq!(parse_time("2026-12-04T11:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_time("2026-12-04T05:30:00-04:30").unwrap(), utc);
        assert_eq!(parse_time("2026-12-04T10:00:00.000+00:00").unwrap(), utc);
        assert_eq!(parse_time("2026-12-04T10:00:00").unwrap(), utc);
        for bad in [
            "2026-12-04T10:00:00+1:00",
            "tomorrow",
            "2026-12-04T10:00:00+01:0x",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
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
    fn a_misspelt_field_is_refused_by_name_unless_read_leniently() {
        let typo = br#"{"address":"10.0.0.1","port":80,"stauts":"critical"}"#;
        let e = Record::parse(typo).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `stauts`") && e.contains("status"),
            "{e}"
        );
        let lenient = Record::parse_lenient(typo).unwrap();
        assert_eq!(lenient, passing_record());
        // A lenient read still refuses wrong types and bad JSON.
        assert!(Record::parse_lenient(br#"{"address":"10.0.0.1","port":"80","x":1}"#).is_err());
        assert!(Record::parse_lenient(b"{").is_err());
        assert_eq!(
            Record::parse(br#"{"address":"10.0.0.1","port":80}"#).unwrap(),
            passing_record()
        );
    }

    /// A passing record of 10.0.0.1:80, nothing else set.
    fn passing_record() -> Record {
        Record {
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec![],
            meta: BTreeMap::new(),
            status: Status::Passing,
            expires_at: None,
            notes: None,
            node: None,
        }
    }

    /// Found by a hunt: 100 files of 133 000 tags each (96 MB) took 805 MB of memory.
    #[test]
    fn records_past_the_tag_or_meta_bound_are_refused() {
        let mut r = passing_record();
        r.tags = (0..MAX_TAGS).map(|i| i.to_string()).collect();
        r.meta = (0..MAX_META).map(|i| (i.to_string(), "v".into())).collect();
        assert!(
            r.clone()
                .into_instance("web", "a", "h", SystemTime::now())
                .is_ok()
        );
        let mut many = r.clone();
        many.tags.push("one more".into());
        let err = many
            .into_instance("web", "a", "h", SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("257 tags, more than the 256"), "{err}");
        r.meta.insert("x".into(), "y".into());
        let err = r
            .into_instance("web", "a", "h", SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("65 meta entries"), "{err}");
    }

    #[test]
    fn unexpired_record_keeps_its_status() {
        let now = SystemTime::now();
        let later = humantime::format_rfc3339(now + Duration::from_secs(60)).to_string();
        let r = Record {
            expires_at: Some(later),
            ..passing_record()
        };
        let i = r.into_instance("web", "w1", "host", now).unwrap();
        assert_eq!(i.status, Status::Passing);
        assert_eq!(i.node, "host");
    }

    #[test]
    fn a_node_name_that_could_carry_config_syntax_is_refused() {
        let r = Record {
            node: Some("n1;\n}".into()),
            expires_at: None,
            ..passing_record()
        };
        let e = r
            .into_instance("web", "w1", "host", SystemTime::now())
            .unwrap_err();
        assert!(e.to_string().starts_with("node name: \"n1;\\n}\""), "{e}");
    }

    #[test]
    fn notes_are_cut_on_a_char_boundary() {
        assert_eq!(truncate_note("short", 10), "short");
        assert_eq!(truncate_note("héllo", 2), "h…");
    }
}
