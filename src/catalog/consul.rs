//! Consul backend (being written).
