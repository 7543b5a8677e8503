//! # qpq-server — the quicproquo messenger server
pub mod store;
