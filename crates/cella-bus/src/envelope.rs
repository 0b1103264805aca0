//! The sealed envelope: a binary header (also the associated data), a random nonce, and the
//! payload encrypted with XChaCha20-Poly1305.
//!
//! ```text
//! "CELLABUS" | version u8 | kind u8 | epoch u32 | sender [16] | id [16] | in_reply_to [16]
//!   | issued_at_ms u64 | subject_len u16 | subject | nonce [24] | ciphertext+tag
//! ```
//! All integers little-endian.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

const MAGIC: &[u8; 8] = b"CELLABUS";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Longest subject a message may be bound to (NATS subjects are far shorter in practice).
pub const MAX_SUBJECT: usize = 256;
const FIXED_HEADER: usize = 8 + 1 + 1 + 4 + 16 + 16 + 16 + 8 + 2;

/// 16 random bytes naming one message (or a node, as sender).
pub type MessageId = [u8; 16];

/// What a message is; part of the associated data, so a request cannot pass for a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Request = 1,
    Reply = 2,
    Event = 3,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Request),
            2 => Some(Kind::Reply),
            3 => Some(Kind::Event),
            _ => None,
        }
    }
}

/// What a message says about itself, authenticated with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// The cluster key's epoch it is sealed under.
    pub epoch: u32,
    /// The node that sealed it.
    pub sender: MessageId,
    pub id: MessageId,
    /// For a reply: the id of the request it answers (zeros otherwise).
    pub in_reply_to: MessageId,
    /// Milliseconds since the Unix epoch, by the sender's (guarded) clock.
    pub issued_at_ms: u64,
    /// The bus subject it was sent on.
    pub subject: String,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER + self.subject.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.in_reply_to);
        out.extend_from_slice(&self.issued_at_ms.to_le_bytes());
        out.extend_from_slice(&(self.subject.len() as u16).to_le_bytes());
        out.extend_from_slice(self.subject.as_bytes());
        out
    }

    /// Parses a header, bounds-checked; returns it and its length.
    fn decode(bytes: &[u8]) -> Result<(Header, usize), SealError> {
        let fixed = bytes.get(..FIXED_HEADER).ok_or(SealError::Malformed)?;
        if &fixed[..8] != MAGIC || fixed[8] != VERSION {
            return Err(SealError::Malformed);
        }
        let kind = Kind::from_byte(fixed[9]).ok_or(SealError::Malformed)?;
        let array = |range: std::ops::Range<usize>| -> [u8; 16] {
            fixed[range].try_into().expect("16 bytes")
        };
        let epoch = u32::from_le_bytes(fixed[10..14].try_into().expect("4 bytes"));
        let issued_at_ms = u64::from_le_bytes(fixed[62..70].try_into().expect("8 bytes"));
        let subject_len = u16::from_le_bytes([fixed[70], fixed[71]]) as usize;
        if subject_len > MAX_SUBJECT {
            return Err(SealError::Malformed);
        }
        let end = FIXED_HEADER + subject_len;
        let subject = bytes.get(FIXED_HEADER..end).ok_or(SealError::Malformed)?;
        let subject = std::str::from_utf8(subject).map_err(|_| SealError::Malformed)?;
        Ok((
            Header {
                kind,
                epoch,
                sender: array(14..30),
                id: array(30..46),
                in_reply_to: array(46..62),
                issued_at_ms,
                subject: subject.to_owned(),
            },
            end,
        ))
    }
}

/// The key messages are sealed with: derived from the cluster key for one epoch.
#[derive(Clone)]
pub struct BusKey {
    epoch: u32,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BusKey(epoch {})", self.epoch)
    }
}

impl BusKey {
    /// The bus key of `epoch`, from the 32-byte cluster key of that epoch.
    pub fn derive(cluster_key: &[u8; 32], epoch: u32) -> BusKey {
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"cella bus v1"), cluster_key)
            .expand(&epoch.to_le_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        BusKey {
            epoch,
            cipher: XChaCha20Poly1305::new((&key).into()),
        }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}

/// A sealed message as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope(pub Vec<u8>);

/// An envelope that opened: its authenticated header and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub header: Header,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a cella bus message (malformed or truncated header)")]
    Malformed,
    #[error("sealed under key epoch {found}, not the current {expected}")]
    WrongEpoch { found: u32, expected: u32 },
    #[error("the message failed authentication: changed, truncated, or sealed with another key")]
    Unauthentic,
    #[error("the message was sent on `{found}`, not `{expected}`: moved on the bus")]
    WrongSubject { found: String, expected: String },
    #[error("the message is a {found:?}, not a {expected:?}")]
    WrongKind { found: Kind, expected: Kind },
    #[error("the reply answers another request")]
    NotTheReply,
}

/// A fresh random id.
pub fn random_id() -> MessageId {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the operating system's random number generator");
    id
}

impl Envelope {
    /// Seals `payload` under `key` with `header` (its epoch is set from the key).
    pub fn seal(key: &BusKey, mut header: Header, payload: &[u8]) -> Result<Envelope, SealError> {
        if header.subject.len() > MAX_SUBJECT {
            return Err(SealError::Malformed);
        }
        header.epoch = key.epoch;
        let aad = header.encode();
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random number generator");
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: payload,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Malformed)?;
        let mut out = aad;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(Envelope(out))
    }

    /// Opens a message that must have been sent on `subject` as a `kind`; any change to any
    /// byte, another key or epoch, another subject or kind is refused.
    pub fn open(&self, key: &BusKey, subject: &str, kind: Kind) -> Result<Opened, SealError> {
        let (header, end) = Header::decode(&self.0)?;
        if header.epoch != key.epoch {
            return Err(SealError::WrongEpoch {
                found: header.epoch,
                expected: key.epoch,
            });
        }
        let rest = &self.0[end..];
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let payload = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &self.0[..end],
                },
            )
            .map_err(|_| SealError::Unauthentic)?;
        // Checked after authentication, so the error speaks of what was really sent.
        if header.subject != subject {
            return Err(SealError::WrongSubject {
                found: header.subject,
                expected: subject.to_owned(),
            });
        }
        if header.kind != kind {
            return Err(SealError::WrongKind {
                found: header.kind,
                expected: kind,
            });
        }
        Ok(Opened { header, payload })
    }

    /// Opens the reply to `request` (sent on `subject`): it must name the request's id.
    pub fn open_reply(
        &self,
        key: &BusKey,
        subject: &str,
        request: &MessageId,
    ) -> Result<Opened, SealError> {
        let opened = self.open(key, subject, Kind::Reply)?;
        if opened.header.in_reply_to != *request {
            return Err(SealError::NotTheReply);
        }
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: Kind, subject: &str) -> Header {
        Header {
            kind,
            epoch: 0,
            sender: [7; 16],
            id: random_id(),
            in_reply_to: [0; 16],
            issued_at_ms: 1_700_000_000_000,
            subject: subject.to_owned(),
        }
    }

    #[test]
    fn a_sealed_message_opens_only_where_it_belongs() {
        let key = BusKey::derive(&[1; 32], 3);
        let sent = header(Kind::Request, "cella.invoke.echo");
        let envelope = Envelope::seal(&key, sent.clone(), b"input").unwrap();
        let opened = envelope
            .open(&key, "cella.invoke.echo", Kind::Request)
            .unwrap();
        assert_eq!(opened.payload, b"input");
        assert_eq!(opened.header, Header { epoch: 3, ..sent });
        // Moved to another subject, taken for another kind, or under another key or epoch.
        assert!(matches!(
            envelope.open(&key, "cella.invoke.other", Kind::Request),
            Err(SealError::WrongSubject { .. })
        ));
        assert!(matches!(
            envelope.open(&key, "cella.invoke.echo", Kind::Reply),
            Err(SealError::WrongKind { .. })
        ));
        assert_eq!(
            envelope.open(
                &BusKey::derive(&[2; 32], 3),
                "cella.invoke.echo",
                Kind::Request
            ),
            Err(SealError::Unauthentic)
        );
        assert_eq!(
            envelope.open(
                &BusKey::derive(&[1; 32], 4),
                "cella.invoke.echo",
                Kind::Request
            ),
            Err(SealError::WrongEpoch {
                found: 3,
                expected: 4
            })
        );
    }

    #[test]
    fn a_reply_answers_only_its_request() {
        let key = BusKey::derive(&[1; 32], 0);
        let request = random_id();
        let reply = Header {
            in_reply_to: request,
            ..header(Kind::Reply, "_INBOX.1")
        };
        let envelope = Envelope::seal(&key, reply, b"output").unwrap();
        assert!(envelope.open_reply(&key, "_INBOX.1", &request).is_ok());
        assert_eq!(
            envelope.open_reply(&key, "_INBOX.1", &random_id()),
            Err(SealError::NotTheReply)
        );
    }

    proptest! {
        #[test]
        fn any_changed_byte_or_truncation_is_refused(
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let key = BusKey::derive(&[9; 32], 1);
            let envelope = Envelope::seal(&key, header(Kind::Event, "orders.new"), &payload).unwrap();
            let mut changed = envelope.clone();
            let i = at.index(changed.0.len());
            changed.0[i] ^= flip;
            prop_assert!(changed.open(&key, "orders.new", Kind::Event).is_err());
            let mut cut_short = envelope.clone();
            cut_short.0.truncate(cut.index(envelope.0.len()));
            prop_assert!(cut_short.open(&key, "orders.new", Kind::Event).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let key = BusKey::derive(&[9; 32], 1);
            let _ = Envelope(bytes).open(&key, "orders.new", Kind::Event);
        }
    }
}
