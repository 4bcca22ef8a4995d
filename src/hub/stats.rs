//! The hub's numbers for `/metrics`: kept by the room thread and the outboxes with relaxed
//! atomics, read by the status thread.

use std::sync::atomic::AtomicU64;

/// Clients in the room now (stored by the room thread after each join and leave).
pub static CLIENTS: AtomicU64 = AtomicU64::new(0);
/// Lines clients sent to the room.
pub static LINES: AtomicU64 = AtomicU64::new(0);
/// Lines not queued for a client because its outbox was full.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
