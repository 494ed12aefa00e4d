//! Cache keys of the auth stage: a keyed 128-bit SipHash-1-3 of the
//! decision's inputs. Keyed with a random secret per auth object so that a
//! key (held in memory next to decisions) says nothing about the
//! credentials it came from, and nobody outside the node can aim
//! collisions at an entry. SipHash is a keyed PRF made for exactly this
//! (hash-flooding resistance for in-memory tables) and costs a fraction of
//! the SHA-256 it replaced on every request's cache lookup.

use std::hash::Hasher as _;

use siphasher::sip128::{Hasher128 as _, SipHasher13};

use super::cache::CacheKey;

/// Hashes inputs into cache keys with this auth object's own secret.
pub struct KeyHasher {
    secret: [u8; 16],
}

impl KeyHasher {
    /// A fresh random secret: keys of two auth objects never coincide.
    pub fn random() -> KeyHasher {
        KeyHasher {
            secret: rand::random(),
        }
    }

    /// The key of `parts`, in order. Each part is tagged (absent or
    /// present) and length-prefixed, so `("ab", "c")`, `("a", "bc")` and
    /// `(None, "")` all hash apart.
    pub fn key(&self, parts: &[Option<&[u8]>]) -> CacheKey {
        let mut h = SipHasher13::new_with_key(&self.secret);
        for part in parts {
            match part {
                None => h.write_u8(0),
                Some(bytes) => {
                    h.write_u8(1);
                    h.write_u64(bytes.len() as u64);
                    h.write(bytes);
                }
            }
        }
        h.finish128().as_u128()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_inputs_give_equal_keys_and_boundaries_count() {
        let k = KeyHasher::random();
        let ab_c = k.key(&[Some(b"ab"), Some(b"c")]);
        assert_eq!(ab_c, k.key(&[Some(b"ab"), Some(b"c")]));
        assert_ne!(ab_c, k.key(&[Some(b"a"), Some(b"bc")]));
        assert_ne!(k.key(&[None]), k.key(&[Some(b"")]));
        assert_ne!(k.key(&[None, Some(b"x")]), k.key(&[Some(b"x"), None]));
    }

    #[test]
    fn two_auth_objects_key_the_same_inputs_apart() {
        let parts: &[Option<&[u8]>] = &[Some(b"alice"), Some(b"pw")];
        assert_ne!(
            KeyHasher::random().key(parts),
            KeyHasher::random().key(parts)
        );
    }
}
