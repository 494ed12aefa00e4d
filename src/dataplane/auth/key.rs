//! Cache keys of the auth stage: a keyed SHA-256 of the decision's inputs.
//! Keyed with a random secret per auth object so that a key (held in
//! memory next to decisions) says nothing about the credentials it came
//! from, and nobody outside the node can aim collisions at an entry.

use sha2::{Digest, Sha256};

use super::cache::CacheKey;

/// Hashes inputs into cache keys with this auth object's own secret.
pub struct KeyHasher {
    secret: [u8; 32],
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
        let mut h = Sha256::new();
        h.update(self.secret);
        for part in parts {
            match part {
                None => h.update([0u8]),
                Some(bytes) => {
                    h.update([1u8]);
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(bytes);
                }
            }
        }
        let digest = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        u128::from_le_bytes(first)
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
