//! Keys as the index holds them: inline when short.

use std::borrow::Borrow;

/// The longest key stored inline; longer ones are on the heap.
pub(crate) const INLINE: usize = 22;

/// A key, stored inline when it is at most 22 bytes.
#[derive(Clone)]
pub enum IKey {
    /// Up to 22 bytes, stored in place: length and bytes.
    Inline(u8, [u8; INLINE]),
    /// Longer keys, on the heap.
    Heap(Box<[u8]>),
}

impl IKey {
    /// Stores `key`, inline if it fits.
    #[inline]
    pub fn new(key: &[u8]) -> IKey {
        let mut buf = [0; INLINE];
        match (buf.get_mut(..key.len()), u8::try_from(key.len())) {
            (Some(head), Ok(len)) => {
                copy_bytes(head, key);
                IKey::Inline(len, buf)
            }
            _ => IKey::Heap(key.into()),
        }
    }

    /// The key's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IKey::Inline(len, buf) => buf.get(..usize::from(*len)).unwrap_or_default(),
            IKey::Heap(b) => b,
        }
    }

    /// The key as text (keys are validated printable ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

/// Copies `src` into `dst`, of the same length: for the short keys of an
/// index, two fixed-size moves that overlap instead of a call to `memcpy`
/// (a tenth of a snapshot's decoding went to those calls).
#[inline]
pub(crate) fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    /// The first and the last `N` bytes (`N <= len <= 2N`).
    #[inline]
    fn ends<const N: usize>(dst: &mut [u8], src: &[u8]) {
        if let (Some(d), Some(s)) = (dst.first_chunk_mut::<N>(), src.first_chunk::<N>()) {
            *d = *s;
        }
        if let (Some(d), Some(s)) = (dst.last_chunk_mut::<N>(), src.last_chunk::<N>()) {
            *d = *s;
        }
    }
    match src.len() {
        0..4 => dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s),
        4..8 => ends::<4>(dst, src),
        8..16 => ends::<8>(dst, src),
        16..=32 => ends::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

impl PartialEq for IKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for IKey {}
impl PartialOrd for IKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for IKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}
impl Borrow<[u8]> for IKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}
impl std::fmt::Debug for IKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_every_short_length_are_exact() {
        let src: Vec<u8> = (1..=40).collect();
        for len in 0..=40 {
            let mut dst = vec![0u8; len];
            copy_bytes(&mut dst, &src[..len]);
            assert_eq!(dst, &src[..len], "{len}");
            assert_eq!(IKey::new(&src[..len]).as_bytes(), &src[..len], "{len}");
        }
    }
}
