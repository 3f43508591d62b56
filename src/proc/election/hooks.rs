//! What election hooks get: the holder in the environment, and `on_change` runs.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::model::Holder;
use crate::proc::supervisor::run_hook;

/// `REWIRE_LEADER_ID`, `_ADDRESS`, `_PORT` (empty without a port) and `REWIRE_FENCING_TOKEN`.
pub(super) fn leader_env(h: &Holder) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("REWIRE_LEADER_ID".to_string(), h.value.id.clone()),
        ("REWIRE_LEADER_ADDRESS".to_string(), h.value.address.clone()),
        (
            "REWIRE_LEADER_PORT".to_string(),
            h.value.port.map(|p| p.to_string()).unwrap_or_default(),
        ),
        ("REWIRE_FENCING_TOKEN".to_string(), h.token.to_string()),
    ])
}

/// Runs `on_change` for each new holder: never twice at once, always with the latest. A run
/// that fails is tried again (0.5 s, doubling up to 10 s, with jitter) until it succeeds or
/// another holder appears: the app may not be listening yet when the first holder is seen.
pub(super) async fn run_on_change(
    spec: crate::config::CommandSpec,
    mut changes: watch::Receiver<Option<Holder>>,
    env: BTreeMap<String, String>,
    stop: CancellationToken,
) {
    let mut done: Option<u64> = None;
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
            .expect("500ms <= 10s");
    let mut retry_at: Option<Instant> = None;
    loop {
        let latest = changes.borrow_and_update().clone();
        let due = retry_at.is_none_or(|at| Instant::now() >= at);
        if let Some(h) = latest.filter(|h| done != Some(h.token))
            && due
        {
            let mut env = env.clone();
            env.extend(leader_env(&h));
            info!(leader = %h.value.id, token = h.token, "new leader: running on_change");
            let ok = tokio::select! {
                _ = stop.cancelled() => return,
                r = run_hook("on_change", &spec, &env) => r == Some(0),
            };
            if ok {
                done = Some(h.token);
                retry_at = None;
                backoff.reset();
            } else {
                let delay = backoff.next_delay();
                warn!(retry_in = ?delay, "on_change failed; trying again");
                retry_at = Some(Instant::now() + delay);
            }
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                // A new holder is tried at once.
                retry_at = None;
                backoff.reset();
            }
            _ = async { tokio::time::sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {}
        }
    }
}
