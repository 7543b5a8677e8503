//! # qpq-cli — the quicproquo terminal messenger
//!
//! The `qpq` binary: `qpq demo` (a self-contained scripted conversation), `qpq` / `qpq repl`
//! (a line-editing REPL) and `qpq tui` (a full-screen client), all thin front ends over
//! [`qpq_sdk`]. This library holds their parts so they can be tested without a terminal:
//! command parsing, the session that runs commands, formatting, the TUI's pure rendering,
//! key maps, configuration and passphrase sources, and the local-server launcher.
//! See `docs/cli.md`.

pub mod commands;
pub mod config;
pub mod demo;
pub mod embedded;
pub mod format;
pub mod keys;
pub mod launcher;
pub mod passphrase;
pub mod play;
pub mod progress;
pub mod repl;
pub mod script;
pub mod session;
pub mod tui;
