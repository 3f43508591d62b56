//! Registering this container's services with the agent: the service definition with its one
//! TTL check, TTL updates, and the verdict on the ACL token at start.

use std::borrow::Cow;

use serde_json::json;

use super::agent::go_duration;
use super::decode::{self, BACKEND};
use crate::catalog::CatalogError;
use crate::model::Registration;

/// Check output sent with TTL updates; Consul keeps 4 KiB (`check_output_max_size`).
pub const MAX_CHECK_OUTPUT: usize = 4096;

/// The id of the one TTL check each registration carries (Consul's own default for a
/// service's single check).
pub fn check_id(service_id: &str) -> String {
    format!("service:{service_id}")
}

/// The body of `PUT /v1/agent/service/register`.
pub(super) fn registration_body(reg: &Registration) -> serde_json::Value {
    json!({
        "ID": reg.id,
        "Name": reg.name,
        "Address": reg.address,
        "Port": reg.port,
        "Tags": reg.tags,
        "Meta": reg.meta,
        "Check": {
            "CheckID": check_id(&reg.id),
            "Name": format!("{} health (rewire)", reg.name),
            "TTL": go_duration(reg.ttl),
            "DeregisterCriticalServiceAfter": go_duration(reg.deregister_after),
            "Status": reg.status.as_str(),
        },
    })
}

/// Cuts check output to what Consul keeps, on a character boundary, saying so.
pub fn truncate_output(note: &str, max: usize) -> Cow<'_, str> {
    const MARK: &str = "\n... (output truncated by rewire)";
    if note.len() <= max {
        return Cow::Borrowed(note);
    }
    let mut cut = max.saturating_sub(MARK.len());
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}{MARK}", &note[..cut]))
}

/// The verdict on `GET /v1/acl/token/self`.
pub(crate) fn preflight_verdict(
    status: u16,
    body: &[u8],
    token_set: bool,
) -> Result<(), CatalogError> {
    const WHAT: &str = "GET /v1/acl/token/self";
    let text = String::from_utf8_lossy(body);
    // 1.8.7 answers 401 with this body when ACLs are off: nothing to check then.
    if text.contains("ACL support disabled") || (200..300).contains(&status) {
        return Ok(());
    }
    if matches!(status, 401 | 403)
        || text.contains("ACL not found")
        || text.contains("Permission denied")
    {
        return Err(CatalogError::Denied {
            backend: BACKEND.into(),
            detail: format!("{WHAT} answered {status}: {}", decode::snippet(body)),
            // Any valid token may read itself: a refusal here is about the token, not a rule.
            hint: decode::token_hint(token_set, b""),
        });
    }
    Err(decode::status_error(WHAT, status, body, token_set))
}
