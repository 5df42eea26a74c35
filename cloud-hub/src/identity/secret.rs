//! Secrets: 32 random bytes, hex, with a prefix that says what they are
//! (`cvd_` a device's, `cvt_` an API token), kept only as SHA-256.

use sha2::{Digest, Sha256};

/// A new secret, `<prefix>_<64 hex digits>`.
pub fn new(prefix: &str) -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS has randomness");
    format!("{prefix}_{}", hex::encode(b))
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Two hashes compared in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `secret` hashes to `sha256`.
pub fn matches(secret: &str, sha256: &str) -> bool {
    same(&hash(secret), sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_checked_by_hash() {
        let (a, b) = (new("cvd"), new("cvd"));
        assert_ne!(a, b);
        assert!(a.starts_with("cvd_") && a.len() == 4 + 64, "{a}");
        assert!(matches(&a, &hash(&a)));
        assert!(!matches(&b, &hash(&a)));
        assert!(!same("ab", "abc"));
    }
}
