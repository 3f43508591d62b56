//! Locking a `std::sync::Mutex` whose data stays valid whatever panicked while holding it.
//!
//! rewire's std mutexes guard plain values (a map of leases, the status report, the latest
//! snapshot, a slot's last error) that every write leaves consistent, so a poisoned lock is
//! taken anyway instead of spreading one panic to every task that touches the value.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poison (see the module docs).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
