//! Support for tests/systemd.rs: the nspawn container, the package, a hub client.
#![allow(dead_code)]

pub mod container;
pub mod hub_client;
pub mod package;
