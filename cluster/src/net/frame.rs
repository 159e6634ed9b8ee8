//! Frames on a node-to-node link: `length u32 | crc32 u32 | kind u8 | id u64 | payload`
//! (little-endian). The length counts from `kind` on; the checksum covers the same bytes. A
//! frame over [`MAX_FRAME`], or whose checksum fails, ends the link.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame accepted (a snapshot moves in chunks far below it).
pub const MAX_FRAME: usize = 64 << 20;
const HEAD: usize = 8;
const FIXED: usize = 9;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Handshake, dialer first: its wire version, id and nonce.
    Hello = 1,
    /// Handshake: the acceptor's id, nonce and proof.
    Challenge = 2,
    /// Handshake: the dialer's proof.
    Proof = 3,
    /// Handshake accepted.
    Welcome = 4,
    /// Handshake refused, or a link-level error: a message, then the link closes.
    Refused = 5,
    /// A request; `id` is the caller's.
    Request = 6,
    /// The reply to request `id`.
    Reply = 7,
    /// A chunk of the byte stream that follows request `id` (a snapshot).
    Chunk = 8,
    /// The end of the byte stream of request `id`.
    End = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Challenge,
            3 => Kind::Proof,
            4 => Kind::Welcome,
            5 => Kind::Refused,
            6 => Kind::Request,
            7 => Kind::Reply,
            8 => Kind::Chunk,
            9 => Kind::End,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: Kind,
    /// The request it belongs to (0 in the handshake).
    pub id: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Appends the encoding of a frame to `out` (emptied on an error).
pub fn encode(kind: Kind, id: u64, payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    *out = encode_with(kind, id, std::mem::take(out), |mut buf| {
        buf.extend_from_slice(payload);
        Ok(buf)
    })?;
    Ok(())
}

/// Appends to `out` a frame whose payload `payload` appends (a message serialized straight
/// into the frame, not copied into it); returns `out`. On an error `out` is lost.
pub fn encode_with(
    kind: Kind,
    id: u64,
    mut out: Vec<u8>,
    payload: impl FnOnce(Vec<u8>) -> io::Result<Vec<u8>>,
) -> io::Result<Vec<u8>> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEAD]);
    out.push(kind as u8);
    out.extend_from_slice(&id.to_le_bytes());
    let mut out = payload(out)?;
    let len = out.len() - start - HEAD;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a frame of {len} bytes is over the limit of {MAX_FRAME}"
        )));
    }
    let crc = crc32fast::hash(&out[start + HEAD..]);
    out[start..start + 4]
        .copy_from_slice(&u32::try_from(len).map_err(io::Error::other)?.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Reads one frame.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Frame> {
    let mut head = [0u8; HEAD];
    r.read_exact(&mut head).await?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(FIXED..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} out of range"),
        ));
    }
    // Kind and id, then the payload read straight into its own buffer.
    let mut fixed = [0u8; FIXED];
    r.read_exact(&mut fixed).await?;
    // Into the buffer's spare capacity: not zeroed first (a frame can be megabytes).
    let want = len - FIXED;
    let mut payload = Vec::with_capacity(want);
    while payload.len() < want {
        let rest = (want - payload.len()) as u64;
        if (&mut *r).take(rest).read_buf(&mut payload).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&fixed);
    hasher.update(&payload);
    if hasher.finalize() != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame fails its checksum",
        ));
    }
    let kind = Kind::from_u8(fixed[0]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown frame kind {}", fixed[0]),
        )
    })?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&fixed[1..]);
    Ok(Frame {
        kind,
        id: u64::from_le_bytes(id),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_damage_is_caught() {
        let mut buf = Vec::new();
        encode(Kind::Request, 7, b"hello", &mut buf).unwrap();
        encode(Kind::End, 8, b"", &mut buf).unwrap();
        let mut r = &buf[..];
        let f = read(&mut r).await.unwrap();
        assert_eq!(
            (f.kind, f.id, &f.payload[..]),
            (Kind::Request, 7, &b"hello"[..])
        );
        let f = read(&mut r).await.unwrap();
        assert_eq!((f.kind, f.id, f.payload.len()), (Kind::End, 8, 0));
        assert!(read(&mut r).await.is_err(), "end of input");
        let mut bad = buf.clone();
        bad[12] ^= 1;
        let err = read(&mut &bad[..]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(&mut &huge[..]).await.is_err());
        assert!(encode(Kind::Chunk, 1, &vec![0u8; MAX_FRAME], &mut Vec::new()).is_err());
    }

    #[tokio::test]
    async fn a_large_frame_arriving_in_small_pieces_is_read_whole_and_a_cut_one_fails() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = Vec::new();
        encode(Kind::Request, 9, &payload, &mut buf).unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(100);
        let sent = buf.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&sent).await.unwrap();
        });
        let f = read(&mut rx).await.unwrap();
        writer.await.unwrap();
        assert_eq!((f.kind, f.id), (Kind::Request, 9));
        assert!(f.payload == payload, "the payload arrives intact");
        let cut = &buf[..buf.len() - 1];
        let err = read(&mut &cut[..]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
