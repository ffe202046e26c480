//! `stockctl`, the operator and client CLI of Stockade, as a library (the binary in
//! `main.rs` only parses, runs and maps errors to exit codes).
//!
//! - [`args`]: the command line and its validation (no I/O);
//! - [`client`]: HTTP requests with endpoint failover and the error→exit-code mapping;
//! - [`commands`]: one function per cluster, sale, order and waitlist command;
//! - [`bench`]: the flash-crowd load generator and its oversell check;
//! - [`restore`]: offline restore of a backup into a fresh node data directory;
//! - [`output`]: tables, key/value blocks and JSON.
//!
//! It talks to nodes only through their public HTTP and gRPC APIs, except `restore`,
//! which writes a data directory with the store's own code while no node runs.

pub mod args;
pub mod bench;
pub mod client;
pub mod commands;
pub mod output;
pub mod restore;

pub use args::Cli;
pub use commands::{run, CliError};
