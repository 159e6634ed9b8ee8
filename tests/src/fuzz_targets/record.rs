//! The `record` target: the record decoder and encoder.

use logkv::log::record::{
    self, decode, find_next_valid, Decoded, Op, FLAG_BATCH_CONT, FLAG_BATCH_MORE, HEADER_LEN,
    MAX_KEY_LEN, MAX_TIME_MS,
};

use super::input::Input;

/// Record framing, both ways. The first four input bytes are a segment's salt.
///
/// Decoding the rest of the input: a decoded record (an entry or a tag
/// record) re-encodes to the same bytes; under another salt, or with any one bit flipped, it never decodes;
/// `find_next_valid` finds the first offset where a record decodes.
///
/// Encoding a record built from the input (fields and a bit to flip taken
/// from it): it decodes to the same fields; every strict prefix is not a
/// record; with the chosen bit flipped it is not a record.
///
/// # Panics
///
/// When the framing breaks one of those rules (a finding).
pub fn record(data: &[u8]) {
    let Some((salt, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let salt = u32::from_le_bytes(*salt);
    decoded_bytes(rest, salt);
    encoded_fields(rest, salt);
}

fn decoded_bytes(data: &[u8], salt: u32) {
    if let Decoded::Record(r) = decode(data, salt) {
        let h = r.header;
        let mut again = Vec::new();
        if h.is_tag() {
            record::encode_tag(&mut again, salt, h.flags, h.revision, h.created_ms, r.key);
        } else {
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
        }
        assert_eq!(&again[..], &data[..h.record_len()]);
        assert!(!matches!(
            decode(&again, salt ^ 0x8000_0001),
            Decoded::Record(_)
        ));
        let bit = data.len() % (again.len() * 8);
        again[bit / 8] ^= 1 << (bit % 8);
        assert!(
            !matches!(decode(&again, salt), Decoded::Record(_)),
            "a record with bit {bit} flipped still decodes"
        );
    }
    let next = find_next_valid(data, 0, salt);
    let first = (0..data.len()).find(|&at| matches!(decode(&data[at..], salt), Decoded::Record(_)));
    assert_eq!(next, first, "find_next_valid finds the first record");
}

fn encoded_fields(data: &[u8], salt: u32) {
    let mut input = Input::new(data);
    let op = [Op::Put, Op::Del, Op::Purge][usize::from(input.below(3))];
    let flags = input.byte() & (FLAG_BATCH_MORE | FLAG_BATCH_CONT);
    let revision = u64::from_le_bytes(input.array());
    let created_ms = u64::from_le_bytes(input.array()) & MAX_TIME_MS;
    let expires_ms = u64::from_le_bytes(input.array()) & MAX_TIME_MS;
    let key_len = usize::from(input.u16()) % MAX_KEY_LEN + 1;
    let key: Vec<u8> = (b'a'..=b'z').cycle().take(key_len).collect();
    let flip = usize::from(input.u16());
    let value = input.take(data.len());
    let mut buf = Vec::new();
    record::encode(
        &mut buf, salt, op, flags, revision, created_ms, expires_ms, &key, value,
    );
    assert_eq!(buf.len(), HEADER_LEN + key.len() + value.len());
    match decode(&buf, salt) {
        Decoded::Record(r) => {
            let h = r.header;
            assert_eq!(
                (h.op, h.flags, h.revision, h.created_ms, h.expires_ms),
                (op, flags, revision, created_ms, expires_ms)
            );
            assert_eq!((r.key, r.value), (&key[..], value));
        }
        other => panic!("an encoded record decodes as {other:?}"),
    }
    for len in [0, 1, HEADER_LEN - 1, HEADER_LEN, buf.len() - 1] {
        assert!(
            !matches!(decode(&buf[..len], salt), Decoded::Record(_)),
            "the first {len} bytes of a record decode"
        );
    }
    let bit = flip % (buf.len() * 8);
    buf[bit / 8] ^= 1 << (bit % 8);
    assert!(
        !matches!(decode(&buf, salt), Decoded::Record(_)),
        "a record with bit {bit} flipped still decodes"
    );
}
