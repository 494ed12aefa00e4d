//! Passwords and API keys of `basic` and `api_key` auth: lbd stores an
//! argon2id hash (PHC string, salted), lb-node verifies against it. Both
//! are slow on purpose, so neither runs on an async runtime's thread:
//! lbd hashes inside its blocking store work, lb-node verifies on
//! `spawn_blocking` and caches the outcome.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

use crate::model::policy::SecretHasher;

/// OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): about 20-50 ms.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// lbd's [`SecretHasher`]: argon2id with a random salt.
pub struct Argon2Hasher;

impl SecretHasher for Argon2Hasher {
    fn hash(&self, secret: &str) -> String {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(secret.as_bytes(), &salt)
            .expect("argon2 hashes any input with valid parameters")
            .to_string()
    }
}

/// Whether `secret` is the one `hash` was made from. A hash that does not
/// parse verifies nothing.
pub fn verify(hash: &str, secret: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| argon2().verify_password(secret.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_secret_only_and_is_salted() {
        let h = Argon2Hasher.hash("correct horse");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify(&h, "correct horse"));
        assert!(!verify(&h, "correct horsf"));
        assert_ne!(Argon2Hasher.hash("correct horse"), h, "salted");
        assert!(!verify("not a hash", "x"));
    }
}
