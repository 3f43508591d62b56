//! The control socket: `rewire status` and `rewire maintenance on|off` talk to the daemon here.
//!
//! A unix stream socket (`[control] socket`, mode 0600, or 0660 for `[control] group`).
//! Maintenance takes the container out of the catalog, so only root and the daemon's own user
//! may switch it (checked by the peer's uid); anyone who can connect may read the status. Both
//! sides refuse a socket (or directory) another user owns ([`trust`]). One request per
//! connection, one JSON object per line each way:
//!
//! ```text
//! → {"command":"status"}                    ← {"ok":true,"status":{...the report...}}
//! → {"command":"maintenance","on":true}     ← {"ok":true,"maintenance":true}
//!                                           ← {"ok":false,"error":"..."}
//! ```
//!
//! Both sides speak through the types below ([`Request`], [`Answer`], and
//! [`Report`](crate::status::Report) inside it): [`server`] answers, [`client`] asks,
//! [`text`] turns a report into the lines `rewire status` prints.

pub mod client;
pub mod server;
pub mod text;
pub mod trust;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::status::Report;

/// How long a client may take to send its request, and the client to get its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
    Maintenance { on: bool },
}

/// A request the daemon cannot take; the text goes back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("not a JSON request: {0}")]
    NotJson(String),
    #[error("the request needs a \"command\"")]
    NoCommand,
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("maintenance needs \"on\": true or false")]
    MaintenanceNeedsOn,
}

impl Request {
    /// Reads one request line.
    pub fn parse(line: &str) -> Result<Request, RequestError> {
        let req: Value =
            serde_json::from_str(line).map_err(|e| RequestError::NotJson(e.to_string()))?;
        match req.get("command").and_then(Value::as_str) {
            Some("status") => Ok(Request::Status),
            Some("maintenance") => match req.get("on").and_then(Value::as_bool) {
                Some(on) => Ok(Request::Maintenance { on }),
                None => Err(RequestError::MaintenanceNeedsOn),
            },
            Some(other) => Err(RequestError::UnknownCommand(other.to_string())),
            None => Err(RequestError::NoCommand),
        }
    }

    /// The request line (without its newline).
    pub fn to_line(self) -> String {
        let value = match self {
            Request::Status => serde_json::json!({"command": "status"}),
            Request::Maintenance { on } => {
                serde_json::json!({"command": "maintenance", "on": on})
            }
        };
        value.to_string()
    }
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Missing counts as not ok.
    #[serde(default)]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Report>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<bool>,
}

impl Answer {
    pub fn refused(error: impl Into<String>) -> Answer {
        Answer {
            ok: Some(false),
            error: Some(error.into()),
            ..Answer::default()
        }
    }
}

/// What the daemon is asked to do (the server hands it to the daemon's loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Maintenance(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_what_the_client_writes() {
        for r in [Request::Status, Request::Maintenance { on: true }] {
            assert_eq!(Request::parse(&r.to_line()), Ok(r));
        }
        assert_eq!(
            Request::parse(r#"{"command":"maintenance"}"#),
            Err(RequestError::MaintenanceNeedsOn)
        );
        assert_eq!(
            Request::parse(r#"{"command":"reboot"}"#)
                .unwrap_err()
                .to_string(),
            "unknown command \"reboot\""
        );
        assert_eq!(Request::parse("[1]"), Err(RequestError::NoCommand));
        assert!(matches!(
            Request::parse("nope"),
            Err(RequestError::NotJson(_))
        ));
    }

    #[test]
    fn a_report_survives_the_socket() {
        let mut report = Report {
            pid: 7,
            config: "/etc/rewire.toml".into(),
            ..Report::default()
        };
        report.templates.insert(
            "nginx".into(),
            crate::status::TemplateStatus {
                destination: "/etc/nginx.conf".into(),
                state: crate::status::TemplateState::Ok,
                detail: String::new(),
                last_render: Some(std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
                last_written: None,
                renders: 1,
                writes: 1,
                ready: true,
                last_path: String::new(),
                leaving: Vec::new(),
            },
        );
        let answer = Answer {
            ok: Some(true),
            status: Some(report.clone()),
            ..Answer::default()
        };
        let line = serde_json::to_string(&answer).unwrap();
        let back: Answer = serde_json::from_str(&line).unwrap();
        assert_eq!(back.status, Some(report));
    }
}
