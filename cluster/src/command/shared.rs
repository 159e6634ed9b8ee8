//! Decoding without copying: the byte strings of a message received from a peer (each
//! proposal's encoded form, each write's value) become slices of the received buffer, which
//! they share (`Bytes`), instead of copies allocated one by one.
//!
//! A decoder that has the buffer as `Bytes` runs the decoding inside [`decode_within`]; the
//! types that hold byte strings ([`super::Proposal`], [`super::Op`]'s value) then take
//! [`share`]'s slice of it for the bytes postcard lends them. Anywhere else (another
//! buffer, a format that does not lend) they copy, as before.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, Error, SeqAccess, Visitor};

thread_local! {
    /// The buffer being decoded on this thread, if its decoder shares it.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` on `buf`'s bytes with `buf` shared: the byte strings decoded from it are
/// slices of it. Nested calls share the innermost buffer.
pub fn decode_within<T>(buf: &Bytes, decode: impl FnOnce(&[u8]) -> T) -> T {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SOURCE.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(SOURCE.with(|s| s.borrow_mut().replace(buf.clone())));
    decode(buf)
}

/// `bytes` as a slice of the buffer being decoded, if it lies in it.
pub fn share(bytes: &[u8]) -> Option<Bytes> {
    SOURCE.with(|s| {
        let source = s.borrow();
        let source = source.as_ref()?;
        let start = source.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        let inside = at >= start && at + bytes.len() <= start + source.len();
        // `slice_ref` is checked to lie inside, so it cannot panic.
        inside.then(|| source.slice_ref(bytes))
    })
}

/// A byte string as `Bytes`: a slice of the buffer being decoded when it lies in it (see
/// [`decode_within`]), a copy otherwise. For `#[serde(deserialize_with)]`; the wire form is
/// serde's byte string, as `Bytes` itself writes it.
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    struct ShareVisitor;
    impl<'de> Visitor<'de> for ShareVisitor {
        type Value = Bytes;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            Ok(share(v).unwrap_or_else(|| Bytes::copy_from_slice(v)))
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(Bytes::from(out))
        }
    }
    d.deserialize_bytes(ShareVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "bytes")]
        value: Bytes,
    }

    #[test]
    fn byte_strings_are_slices_of_the_shared_buffer_and_copies_elsewhere() {
        let wire = Bytes::from(
            postcard::to_stdvec(&Holder {
                value: Bytes::from_static(b"value"),
            })
            .unwrap(),
        );
        let shared: Holder = decode_within(&wire, |b| postcard::from_bytes(b).unwrap());
        assert_eq!(&shared.value[..], b"value");
        let inside = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        assert!(
            inside.contains(&(shared.value.as_ptr() as usize)),
            "a slice of the buffer"
        );

        let copied: Holder = postcard::from_bytes(&wire).unwrap();
        assert_eq!(&copied.value[..], b"value");
        assert!(
            !inside.contains(&(copied.value.as_ptr() as usize)),
            "a copy"
        );
        assert!(
            share(&wire).is_none(),
            "nothing shared outside decode_within"
        );
    }
}
