//! Keys, values and seeded permutations, the same for every store.

/// Key length: `key:` and twelve digits.
pub const KEY_LEN: usize = 16;
/// Value length.
pub const VALUE_LEN: usize = 100;
/// Live bytes of one entry (key + value), the denominator of `W3.space`.
pub const ENTRY_LEN: u64 = (KEY_LEN + VALUE_LEN) as u64;
/// Puts of W4 (each durable), and the writes of `limit-fdatasync`.
pub const DURABLE_OPS: u32 = 2000;

/// `SplitMix64`: small, fast, and the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// `0..n` in a random order fixed by `seed` (Fisher–Yates).
pub fn permutation(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "below(i + 1) is at most i, a usize"
        )]
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Writes the key of item `i` (`key:%012d`) into `buf`.
#[allow(
    clippy::missing_panics_doc,
    reason = "it cannot panic: only ASCII is written"
)]
pub fn key(i: u64, buf: &mut [u8; KEY_LEN]) -> &str {
    buf[..4].copy_from_slice(b"key:");
    let mut x = i;
    for b in buf[4..].iter_mut().rev() {
        *b = b'0' + (x % 10) as u8;
        x /= 10;
    }
    // Only ASCII digits and "key:" were written.
    std::str::from_utf8(buf).expect("ASCII key")
}

/// Writes the value of item `i` in write round `round` into `buf`: 100 bytes whose first
/// 12 say which item and round they are, so reads can be checked.
pub fn value(i: u64, round: u32, buf: &mut [u8; VALUE_LEN]) -> &[u8] {
    buf[..8].copy_from_slice(&i.to_le_bytes());
    buf[8..12].copy_from_slice(&round.to_le_bytes());
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(round);
    for chunk in buf[12..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    buf
}

/// Whether `v` is the value of item `i` in round `round`.
pub fn check_value(v: &[u8], i: u64, round: u32) -> bool {
    v.len() == VALUE_LEN && v[..8] == i.to_le_bytes() && v[8..12] == round.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sixteen_bytes_and_zero_padded() {
        let mut b = [0; KEY_LEN];
        assert_eq!(key(42, &mut b), "key:000000000042");
        assert_eq!(key(999_999_999_999, &mut b), "key:999999999999");
        logkv::validate_key(key(7, &mut b)).unwrap();
    }

    #[test]
    fn permutation_is_a_seeded_permutation() {
        let p = permutation(1000, 7);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, permutation(1000, 7));
        assert_ne!(p, permutation(1000, 8));
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn values_identify_item_and_round() {
        let mut b = [0; VALUE_LEN];
        let v = value(5, 1, &mut b).to_vec();
        assert!(check_value(&v, 5, 1));
        assert!(!check_value(&v, 5, 0));
        assert!(!check_value(&v, 6, 1));
    }
}
