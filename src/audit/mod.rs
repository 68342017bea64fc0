//! Audit: re-checking recorded decisions against today's deciders.

pub mod check;
