//! Password comparison, shared by `AUTH` on the RESP port and `Authorization: Bearer` on
//! the HTTP gateway.

/// Compares two secrets in constant time: their SHA-256 digests (32 bytes whatever the
/// lengths) with `subtle`'s constant-time equality, so the time taken tells neither where
/// they differ nor how long the configured one is.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(!same_secret(b"abc", b"ABC"));
        let long = vec![b'x'; 10_000];
        assert!(same_secret(&long, &long.clone()));
        assert!(!same_secret(&long, &long[..9_999]));
    }
}
