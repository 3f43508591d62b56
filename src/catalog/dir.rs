//! dir (being written)
