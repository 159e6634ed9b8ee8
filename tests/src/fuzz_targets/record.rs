//! The `record` target: the record decoder and encoder.

use logkv::log::record::{self, decode, find_next_valid, Decoded};

/// The record decoder: a decoded record re-encodes to the same bytes, and a
/// damaged copy, or the same bytes under another segment's salt, never decodes.
/// The first four input bytes are the salt.
///
/// # Panics
///
/// When the decoder breaks one of those rules (a finding).
pub fn record(data: &[u8]) {
    let Some((salt, data)) = data.split_first_chunk::<4>() else {
        return;
    };
    let salt = u32::from_le_bytes(*salt);
    if let Decoded::Record(r) = decode(data, salt) {
        let h = r.header;
        let mut again = Vec::new();
        record::encode(
            &mut again,
            salt,
            h.op,
            h.flags,
            h.revision,
            h.created_ms,
            h.expires_ms,
            r.key,
            r.value,
        );
        assert_eq!(&again[..], &data[..h.record_len()]);
        assert!(!matches!(
            decode(&again, salt ^ 0x8000_0001),
            Decoded::Record(_)
        ));
        if let Some(last) = again.last_mut() {
            *last ^= 0x40;
            assert!(!matches!(decode(&again, salt), Decoded::Record(_)));
        }
    }
    if let Some(at) = find_next_valid(data, 0, salt) {
        assert!(matches!(decode(&data[at..], salt), Decoded::Record(_)));
    }
}
