//! Helpers shared by integration tests (each test binary uses what it needs).
#![allow(dead_code)]

pub mod bin;
pub mod events;
pub mod files;
pub mod ledger;
pub mod live;
pub mod redis;
pub mod tmpfs;
