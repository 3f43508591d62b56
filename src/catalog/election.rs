//! What an `[[election]]` needs from a catalog: a [`Ballot`], one per election per process.
//!
//! Each backend implements it with the catalog's own locking primitive (the issue's measured
//! facts decided which):
//!
//! - **dir** (`dir/election.rs`): `flock` on a lock file, held for the whole term on a
//!   close-on-exec descriptor; a counter file bumped under the lock is the token; the holder's
//!   record is written beside it.
//! - **Consul** (`consul/election.rs`): a session bound to `serfHealth` and a TTL check that
//!   rewire registers and passes every ttl/3, `Behavior = release`; `?acquire=` on a KV key;
//!   the key's `ModifyIndex` as the holder took it is the token.
//! - **etcd** (`etcd/election.rs`): a lease kept alive every ttl/3 and a transaction that
//!   creates the key only while its `create_revision` is 0; that revision is the token.
//!
//! The ballot knows nothing of hooks, health or deadlines:
//! `proc::election` runs the term. A ballot holds at most one term
//! at a time.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::CatalogError;
use crate::model::{Holder, LeaderValue};

/// One election as a backend needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BallotSpec {
    pub name: String,
    /// This candidate's id (the published value's id): names its Consul check and session.
    pub candidate: String,
    pub ttl: Duration,
    /// Consul only.
    pub lock_delay: Duration,
}

/// What a candidate knows of an election.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Sight {
    /// Not read yet (or not since the catalog came back).
    #[default]
    Unknown,
    /// Nobody holds it.
    Vacant,
    Held(Holder),
}

impl Sight {
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Sight::Held(h) => Some(h),
            _ => None,
        }
    }
}

/// A backend's side of one election.
#[async_trait]
pub trait Ballot: Send + Sync + 'static {
    /// Tries once to take the election with `value`. `Ok(Some(token))` when this process now
    /// holds it, `Ok(None)` when someone else does (or a Consul lock delay runs).
    async fn campaign(&self, value: &LeaderValue) -> Result<Option<u64>, CatalogError>;

    /// Renews the term: `Ok(true)` while this process still holds the election, `Ok(false)`
    /// once it has lost it. Called every ttl/3; the caller bounds it with a timeout.
    async fn renew(&self) -> Result<bool, CatalogError>;

    /// Called every ttl/3 while this process does not hold the election, to keep what a
    /// campaign needs alive (Consul: the candidate's check, which its session depends on).
    async fn standby(&self) -> Result<(), CatalogError> {
        Ok(())
    }

    /// Gives the election up, so a successor can take it at once. Holding nothing is fine.
    async fn resign(&self) -> Result<(), CatalogError>;

    /// Removes what the ballot keeps in the catalog besides the term (Consul: the candidate's
    /// check). Called once, at the end.
    async fn leave(&self) -> Result<(), CatalogError> {
        Ok(())
    }

    /// Keeps `sight` current (who holds the election) until `stop` fires, retrying through
    /// outages; it says `Unknown` while it cannot read.
    async fn follow(&self, sight: watch::Sender<Sight>, stop: CancellationToken);
}

/// Publishes what a follower saw, waking readers only when it differs from what they have.
pub fn set_sight(sight: &watch::Sender<Sight>, seen: Sight) {
    sight.send_if_modified(|s| {
        if *s == seen {
            false
        } else {
            *s = seen;
            true
        }
    });
}

/// Decodes a holder's published value. Catalog data is never trusted: the value reaches
/// templates and hook environments, so it passes the checks instance records pass.
pub fn decode_value(bytes: &[u8]) -> Result<LeaderValue, String> {
    let value: LeaderValue = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a leader value ({{\"id\", \"address\", \"port\"}}): {e}"))?;
    value.check().map_err(|e| e.to_string())?;
    Ok(value)
}

/// Encodes the value a holder publishes.
pub fn encode_value(value: &LeaderValue) -> Vec<u8> {
    serde_json::to_vec(value).expect("a LeaderValue always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_values_are_checked_when_read() {
        let ok = decode_value(br#"{"id":"redis-a","address":"10.0.0.5","port":6379}"#).unwrap();
        assert_eq!(ok.port, Some(6379));
        assert_eq!(decode_value(&encode_value(&ok)).unwrap(), ok);
        assert!(decode_value(br#"{"id":"a","address":"x; rm -rf /"}"#).is_err());
        assert!(decode_value(br#"{"id":"../etc","address":"10.0.0.1"}"#).is_err());
        assert!(decode_value(b"garbage").is_err());
    }
}
