//! The link handshake: wire version check and mutual authentication.
//!
//! ```text
//! dialer   -> Hello     { wire, node, nonce_d }
//! acceptor -> Challenge { wire, node, nonce_a, proof_a = HMAC(pw, "acceptor" | nonce_d | nonce_a | node_a) }
//! dialer   -> Proof     { proof_d = HMAC(pw, "dialer" | nonce_a | nonce_d | node_d) }
//! acceptor -> Welcome   (or Refused { why })
//! ```
//!
//! HMAC-SHA256 keyed with the cluster password (the server's `--password`): each side proves
//! it knows it without sending it, over fresh nonces from both sides, so a recorded handshake
//! cannot be replayed. Without a password both proofs are absent; a node with a password
//! refuses one without. Proofs are compared in constant time.

use std::io;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{self, Frame, Kind};
use crate::types::NodeId;

/// The wire version: raised on any change of the messages, including openraft's (whose
/// types travel in them, serialized by position). Nodes of different versions refuse each
/// other at the handshake.
pub const WIRE_VERSION: u32 = 2_0010_0037;

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    wire: u32,
    node: NodeId,
    nonce: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
struct Challenge {
    wire: u32,
    node: NodeId,
    nonce: [u8; 32],
    proof: Option<Vec<u8>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Proof {
    proof: Option<Vec<u8>>,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The link failed.
    #[error("link error during the handshake: {0}")]
    Io(#[from] io::Error),
    /// The peer speaks another wire version.
    #[error("the peer speaks wire version {theirs}, this node {WIRE_VERSION}: run the same logkv version on every node")]
    Version {
        /// The peer's version.
        theirs: u32,
    },
    /// Authentication failed.
    #[error("authentication failed: {0}")]
    Auth(&'static str),
    /// The peer refused the link.
    #[error("the peer refused the link: {0}")]
    Refused(String),
    /// The node at the address is not the one expected.
    #[error("expected node {expected} at that address, found node {found}")]
    WrongNode {
        /// Expected id.
        expected: NodeId,
        /// Id found.
        found: NodeId,
    },
    /// A message that does not decode or comes out of order.
    #[error("protocol error during the handshake: {0}")]
    Protocol(String),
}

fn nonce() -> Result<[u8; 32], HandshakeError> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| HandshakeError::Io(io::Error::other(e.to_string())))?;
    Ok(n)
}

fn mac(secret: &[u8], role: &[u8], a: &[u8; 32], b: &[u8; 32], node: NodeId) -> Hmac<Sha256> {
    // A key of any length is accepted by HMAC.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| {
        <Hmac<Sha256> as Mac>::new_from_slice(b"").unwrap_or_else(|_| unreachable!())
    });
    m.update(role);
    m.update(a);
    m.update(b);
    m.update(&node.to_le_bytes());
    m
}

fn verify(
    m: Hmac<Sha256>,
    proof: Option<&[u8]>,
    secret: Option<&[u8]>,
) -> Result<(), HandshakeError> {
    match (secret, proof) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(HandshakeError::Auth(
            "the peer has a cluster password and this node none",
        )),
        (Some(_), None) => Err(HandshakeError::Auth(
            "this node has a cluster password and the peer none",
        )),
        (Some(_), Some(p)) => m
            .verify_slice(p)
            .map_err(|_| HandshakeError::Auth("the peer's proof does not match the password")),
    }
}

async fn send<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    kind: Kind,
    msg: &T,
) -> Result<(), HandshakeError> {
    let payload = postcard::to_stdvec(msg).map_err(|e| HandshakeError::Protocol(e.to_string()))?;
    let mut buf = Vec::new();
    frame::encode(kind, 0, &payload, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

async fn recv<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
    kind: Kind,
) -> Result<T, HandshakeError> {
    let Frame {
        kind: got, payload, ..
    } = frame::read(r).await?;
    if got == Kind::Refused {
        return Err(HandshakeError::Refused(
            String::from_utf8_lossy(&payload).into_owned(),
        ));
    }
    if got != kind {
        return Err(HandshakeError::Protocol(format!(
            "expected {kind:?}, got {got:?}"
        )));
    }
    postcard::from_bytes(&payload).map_err(|e| HandshakeError::Protocol(e.to_string()))
}

/// The node id a dialer gives in its first frame (`Hello`), from that frame's payload: lets
/// a test's TCP proxy tell which node a link comes from.
pub fn dialer_of(hello_payload: &[u8]) -> Option<NodeId> {
    postcard::from_bytes::<Hello>(hello_payload)
        .ok()
        .map(|h| h.node)
}

/// The dialer's side: returns the peer's id.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    me: NodeId,
    expected: Option<NodeId>,
    secret: Option<&[u8]>,
) -> Result<NodeId, HandshakeError> {
    let mine = nonce()?;
    send(
        s,
        Kind::Hello,
        &Hello {
            wire: WIRE_VERSION,
            node: me,
            nonce: mine,
        },
    )
    .await?;
    let c: Challenge = recv(s, Kind::Challenge).await?;
    if c.wire != WIRE_VERSION {
        return Err(HandshakeError::Version { theirs: c.wire });
    }
    if let Some(e) = expected.filter(|e| *e != c.node) {
        return Err(HandshakeError::WrongNode {
            expected: e,
            found: c.node,
        });
    }
    let m = mac(
        secret.unwrap_or_default(),
        b"acceptor",
        &mine,
        &c.nonce,
        c.node,
    );
    verify(m, c.proof.as_deref(), secret)?;
    let proof = secret.map(|k| {
        mac(k, b"dialer", &c.nonce, &mine, me)
            .finalize()
            .into_bytes()
            .to_vec()
    });
    send(s, Kind::Proof, &Proof { proof }).await?;
    let Frame { kind, payload, .. } = frame::read(s).await?;
    match kind {
        Kind::Welcome => Ok(c.node),
        Kind::Refused => Err(HandshakeError::Refused(
            String::from_utf8_lossy(&payload).into_owned(),
        )),
        other => Err(HandshakeError::Protocol(format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

/// The acceptor's side: returns the dialer's id.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    me: NodeId,
    secret: Option<&[u8]>,
) -> Result<NodeId, HandshakeError> {
    let h: Hello = recv(s, Kind::Hello).await?;
    if h.wire != WIRE_VERSION {
        let why = format!("wire version {} is not {WIRE_VERSION}", h.wire);
        let _ = refuse(s, &why).await;
        return Err(HandshakeError::Version { theirs: h.wire });
    }
    let mine = nonce()?;
    let proof = secret.map(|k| {
        mac(k, b"acceptor", &h.nonce, &mine, me)
            .finalize()
            .into_bytes()
            .to_vec()
    });
    send(
        s,
        Kind::Challenge,
        &Challenge {
            wire: WIRE_VERSION,
            node: me,
            nonce: mine,
            proof,
        },
    )
    .await?;
    let p: Proof = recv(s, Kind::Proof).await?;
    let m = mac(
        secret.unwrap_or_default(),
        b"dialer",
        &mine,
        &h.nonce,
        h.node,
    );
    if let Err(e) = verify(m, p.proof.as_deref(), secret) {
        let _ = refuse(s, &e.to_string()).await;
        return Err(e);
    }
    let mut buf = Vec::new();
    frame::encode(Kind::Welcome, 0, &[], &mut buf)?;
    s.write_all(&buf).await?;
    s.flush().await?;
    Ok(h.node)
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, why: &str) -> io::Result<()> {
    let mut buf = Vec::new();
    frame::encode(Kind::Refused, 0, why.as_bytes(), &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        dialer_secret: Option<&'static [u8]>,
        acceptor_secret: Option<&'static [u8]>,
    ) -> (
        Result<NodeId, HandshakeError>,
        Result<NodeId, HandshakeError>,
    ) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let acceptor = tokio::spawn(async move { accept(&mut b, 2, acceptor_secret).await });
        let d = dial(&mut a, 1, Some(2), dialer_secret).await;
        drop(a);
        (d, acceptor.await.unwrap())
    }

    #[tokio::test]
    async fn same_password_or_none_is_accepted() {
        let (d, a) = pair(Some(b"pw"), Some(b"pw")).await;
        assert_eq!((d.unwrap(), a.unwrap()), (2, 1));
        let (d, a) = pair(None, None).await;
        assert_eq!((d.unwrap(), a.unwrap()), (2, 1));
    }

    #[tokio::test]
    async fn a_wrong_or_missing_password_is_refused() {
        let (d, a) = pair(Some(b"pw"), Some(b"other")).await;
        assert!(matches!(d, Err(HandshakeError::Auth(_))), "{d:?}");
        assert!(a.is_err());
        let (d, a) = pair(None, Some(b"pw")).await;
        assert!(d.is_err() && a.is_err());
        let (d, a) = pair(Some(b"pw"), None).await;
        assert!(d.is_err() && a.is_err());
    }

    #[tokio::test]
    async fn the_wrong_node_is_noticed() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        tokio::spawn(async move { accept(&mut b, 3, None).await });
        let d = dial(&mut a, 1, Some(2), None).await;
        assert!(
            matches!(
                d,
                Err(HandshakeError::WrongNode {
                    expected: 2,
                    found: 3
                })
            ),
            "{d:?}"
        );
    }
}
