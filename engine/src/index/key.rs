//! Keys as the index holds them: inline when short.

use std::borrow::Borrow;

const INLINE: usize = 22;

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
    pub fn new(key: &[u8]) -> IKey {
        let mut buf = [0; INLINE];
        match (buf.get_mut(..key.len()), u8::try_from(key.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(key);
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
