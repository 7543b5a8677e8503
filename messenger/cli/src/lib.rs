//! # qpq-cli — the quicproquo terminal messenger
//!
//! The `qpq` binary: `qpq demo` (a self-contained scripted conversation), `qpq` / `qpq repl`
//! (a line-editing REPL) and `qpq tui` (a full-screen client), all thin front ends over
//! [`qpq_sdk`]. This library holds their parts so they can be tested without a terminal:
//! command parsing, the session that runs commands, formatting, the TUI's pure rendering,
//! key maps, configuration and passphrase sources, and the local-server launcher. The
//! `embedded-server` feature (on by default) links the server in for `qpq demo`, `qpq play`
//! and `qpq server`; without it the launcher starts a `qpq-server` found on PATH.
//! See `docs/cli.md`.

pub mod background;
pub mod commands;
pub mod config;
#[cfg(feature = "embedded-server")]
pub mod demo;
#[cfg(feature = "embedded-server")]
pub mod embedded;
pub mod format;
pub mod keys;
pub mod launcher;
pub mod passphrase;
#[cfg(feature = "embedded-server")]
pub mod play;
pub mod progress;
pub mod repl;
pub mod script;
pub mod session;
pub mod tui;
