//! End-to-end tests of the HTTP API: a real server on a random loopback port, real guests
//! built from `guests/` (by `./scripts/test`), and the Rust client.

mod harness;

mod access;
mod attestation;
mod bundles;
mod chains;
mod compile_bombs;
mod functions;
mod http_passthrough;
mod invariants;
mod limits;
mod lying_host;
mod outgoing;
mod permissions;
mod plugins;
mod validation;
