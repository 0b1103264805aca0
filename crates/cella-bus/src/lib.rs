//! Sealed messages for cella's bus. Gateways and workers talk over a message bus (NATS) that
//! the operator runs, so the bus is untrusted: it may read, change, drop, reorder, replay or
//! redirect anything. Every message is therefore sealed between attested enclaves:
//!
//! - **encrypted and authenticated** with a key derived from the cluster key (which only
//!   nodes whose evidence passed the cluster's policy receive) and its epoch, so rotating the
//!   cluster key retires every older key at once;
//! - **bound to where it belongs**: the header — subject, kind, sender, message id, the
//!   request a reply answers, the time it was issued — is the associated data, so a message
//!   moved to another subject, or a reply handed to another request, fails to open;
//! - **fresh**: a receiver refuses a message older than its window and any message id it has
//!   already seen within it ([`ReplayGuard`]).
//!
//! Joining ([`JoinKey`], [`admit`]): a worker gets the cluster key only sealed (HPKE) to a key
//! its evidence binds, and only if that evidence passes the cluster's policy.
//!
//! No I/O and no clock (callers pass the time), so the rules are tested exhaustively.
#![forbid(unsafe_code)]

mod envelope;
mod join;
mod replay;

pub use envelope::{
    BusKey, Envelope, Header, Kind, MAX_SUBJECT, MessageId, Opened, SealError, random_id,
};
pub use join::{JoinError, JoinGrant, JoinKey, JoinRequest, admit};
pub use replay::{ReplayGuard, Stale};
