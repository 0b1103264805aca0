//! The registry's state digest, kept up to date row by row. A write changes a handful of rows;
//! hashing every row of every table again for it made each write cost CPU in proportion to the
//! whole registry (building n tenants was O(n²)). The digest is instead a homomorphic multiset
//! hash, LtHash (Lewi et al., "Securing Update Propagation with Homomorphic Hashing", 2019) with
//! the parameters Solana's validators use for their accounts state: each row maps to 1024
//! 16-bit lanes read from BLAKE3's extendable output, the state is their lane-wise sum modulo
//! 2¹⁶, and a write subtracts the rows it replaced and adds those it wrote: O(changed rows)
//! whatever the registry's size.
//!
//! It protects what the full digest did: the state sealed with a version is one exact multiset
//! of rows, so a row put back from an older copy, deleted or added changes it. Finding another
//! multiset with the same sum is a short-integer-solution lattice problem (about 200-bit
//! security for these parameters, per the paper), and the host cannot even make new authentic
//! rows, only replay old ones. The lanes are few enough (2 KiB) to write out here rather than
//! depend on a chain's crate for them.

/// Lanes of the hash: 1024 × 16 bits.
const LANES: usize = 1024;

/// The sum over a multiset of rows (table, stored key, sealed value).
#[derive(Clone)]
pub(crate) struct StateHash(Box<[u16; LANES]>);

impl StateHash {
    /// The hash of no rows at all.
    pub(crate) fn empty() -> Self {
        StateHash(Box::new([0; LANES]))
    }

    /// Adds a row that now exists.
    pub(crate) fn insert(&mut self, table: &str, key: &[u8], value: &[u8]) {
        for (sum, lane) in self.0.iter_mut().zip(row(table, key, value)) {
            *sum = sum.wrapping_add(lane);
        }
    }

    /// Takes out a row that no longer exists.
    pub(crate) fn remove(&mut self, table: &str, key: &[u8], value: &[u8]) {
        for (sum, lane) in self.0.iter_mut().zip(row(table, key, value)) {
            *sum = sum.wrapping_sub(lane);
        }
    }

    /// A row changed from `old` to `new` (`None`: absent).
    pub(crate) fn replace(
        &mut self,
        table: &str,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) {
        if let Some(old) = old {
            self.remove(table, key, old);
        }
        if let Some(new) = new {
            self.insert(table, key, new);
        }
    }

    /// The 32 bytes sealed with the version: BLAKE3 of the lanes (little-endian).
    pub(crate) fn digest(&self) -> [u8; 32] {
        let mut bytes = [0u8; LANES * 2];
        for (out, lane) in bytes.chunks_exact_mut(2).zip(self.0.iter()) {
            out.copy_from_slice(&lane.to_le_bytes());
        }
        blake3::hash(&bytes).into()
    }
}

/// One row's lanes: BLAKE3 in key-derivation mode (a context string of its own) over the
/// length-prefixed table name, key and value, read out to 2 KiB.
fn row(table: &str, key: &[u8], value: &[u8]) -> impl Iterator<Item = u16> {
    let mut hasher = blake3::Hasher::new_derive_key("cella registry state row v1");
    for part in [table.as_bytes(), key, value] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let mut bytes = [0u8; LANES * 2];
    hasher.finalize_xof().fill(&mut bytes);
    (0..LANES).map(move |i| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]))
}

#[cfg(test)]
mod tests {
    use super::StateHash;

    #[test]
    fn the_digest_depends_on_the_set_of_rows_only() {
        let mut a = StateHash::empty();
        a.insert("t", b"1", b"one");
        a.insert("t", b"2", b"two");
        let mut b = StateHash::empty();
        b.insert("t", b"2", b"two");
        b.insert("t", b"1", b"one");
        assert_eq!(a.digest(), b.digest(), "order does not matter");

        // Changing a row and changing it back, removing one and adding it back.
        let before = a.digest();
        a.replace("t", b"1", Some(b"one"), Some(b"uno"));
        assert_ne!(a.digest(), before);
        a.replace("t", b"1", Some(b"uno"), Some(b"one"));
        assert_eq!(a.digest(), before);
        a.remove("t", b"2", b"two");
        assert_ne!(a.digest(), before);
        a.insert("t", b"2", b"two");
        assert_eq!(a.digest(), before);
    }

    #[test]
    fn rows_are_told_apart_by_table_key_and_value_and_count() {
        let one = |table: &str, key: &[u8], value: &[u8]| {
            let mut h = StateHash::empty();
            h.insert(table, key, value);
            h.digest()
        };
        let base = one("t", b"k", b"v");
        assert_ne!(base, one("u", b"k", b"v"));
        assert_ne!(base, one("t", b"kk", b"v"));
        assert_ne!(base, one("t", b"k", b"vv"));
        // The length prefixes keep boundaries: ("t", "kv", "") is not ("t", "k", "v").
        assert_ne!(base, one("t", b"kv", b""));
        assert_ne!(base, StateHash::empty().digest());
        // A row twice is not the row once (a multiset, not a set).
        let mut twice = StateHash::empty();
        twice.insert("t", b"k", b"v");
        twice.insert("t", b"k", b"v");
        assert_ne!(twice.digest(), base);
    }
}
