//! A tiny deterministic PRNG, so tests need no extra crates and replay exactly.

/// xorshift64*.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi);
        lo + self.below(hi - lo)
    }

    /// Uniform in `[lo, hi)`, for lengths and indexes (the same draw as [`Rng::range`]).
    pub fn range_usize(&mut self, lo: usize, hi: usize) -> usize {
        let n = self.range(lo as u64, hi as u64);
        usize::try_from(n).expect("below hi, a usize")
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "the low byte is the random byte"
    )]
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The seed of a randomized test: the environment variable `var` when it is set (to
/// replay a run), else a fresh random seed, so that every run tries new cases. Printed
/// either way, so the output of a failure says how to replay it.
pub fn seed_from_env(var: &str) -> u64 {
    use std::hash::BuildHasher;
    let seed = match std::env::var(var) {
        Ok(v) => {
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{var}={v:?} is not a number"))
        }
        // RandomState is keyed from the operating system's randomness.
        Err(_) => {
            std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
        }
    };
    println!("seed {seed} (replay with {var}={seed})");
    seed
}
