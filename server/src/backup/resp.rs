//! A small RESP reader for the receiving side of `BACKUP STREAM`: simple strings, errors,
//! integers, bulk strings and arrays (RESP2), each bounded, so that a broken or hostile
//! peer gets an error, never unbounded memory or a panic.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest line (a simple string, an error, a length).
const MAX_LINE: u64 = 64 * 1024;
/// Largest bulk string accepted (the server sends at most 512 KiB of data per frame).
pub const MAX_BULK: usize = 8 << 20;
/// Most elements of an array (a header lists two per bucket).
const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting of arrays.
const MAX_DEPTH: usize = 2;

/// A RESP value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+text`
    Simple(String),
    /// `-CODE message`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` and its bytes
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Null,
    /// `*n` and its elements
    Array(Vec<Value>),
}

/// Why a value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed or ended.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// Bytes that are not RESP, or past a limit.
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn protocol(why: impl Into<String>) -> ReadError {
    ReadError::Protocol(why.into())
}

/// Reads one line without its `\r\n`.
async fn line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    let n = (&mut *r).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !buf.ends_with(b"\r\n") {
        return Err(protocol("a line longer than 64 KiB or not ended by CRLF"));
    }
    buf.truncate(buf.len() - 2);
    Ok(buf)
}

fn number(text: &[u8]) -> Result<i64, ReadError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            protocol(format!(
                "{:?} is not a number",
                String::from_utf8_lossy(text)
            ))
        })
}

/// A length prefix: -1 (null) or 0..=max.
fn length(text: &[u8], max: usize) -> Result<Option<usize>, ReadError> {
    match number(text)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .map(Some)
            .ok_or_else(|| protocol(format!("length {n} outside 0..={max}"))),
    }
}

/// Reads one value.
pub fn read_value<R: AsyncBufRead + Unpin + Send>(
    r: &mut R,
) -> Pin<Box<dyn Future<Output = Result<Value, ReadError>> + Send + '_>> {
    read_nested(r, 0)
}

fn read_nested<R: AsyncBufRead + Unpin + Send>(
    r: &mut R,
    depth: usize,
) -> Pin<Box<dyn Future<Output = Result<Value, ReadError>> + Send + '_>> {
    Box::pin(async move {
        let head = line(r).await?;
        let (&tag, rest) = head
            .split_first()
            .ok_or_else(|| protocol("an empty line"))?;
        match tag {
            b'+' => Ok(Value::Simple(String::from_utf8_lossy(rest).into_owned())),
            b'-' => Ok(Value::Error(String::from_utf8_lossy(rest).into_owned())),
            b':' => Ok(Value::Int(number(rest)?)),
            b'$' => {
                let Some(n) = length(rest, MAX_BULK)? else {
                    return Ok(Value::Null);
                };
                let mut body = vec![0; n + 2];
                r.read_exact(&mut body).await?;
                if !body.ends_with(b"\r\n") {
                    return Err(protocol("a bulk string not ended by CRLF"));
                }
                body.truncate(n);
                Ok(Value::Bulk(body))
            }
            b'*' => {
                let Some(n) = length(rest, MAX_ARRAY)? else {
                    return Ok(Value::Null);
                };
                if depth >= MAX_DEPTH {
                    return Err(protocol("arrays nested too deep"));
                }
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(read_nested(r, depth + 1).await?);
                }
                Ok(Value::Array(items))
            }
            other => Err(protocol(format!(
                "unexpected reply type {:?}",
                char::from(other)
            ))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Value, ReadError> {
        let mut r = tokio::io::BufReader::new(bytes);
        read_value(&mut r).await
    }

    #[tokio::test]
    async fn values_and_limits() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Value::Simple("OK".into()));
        assert_eq!(
            parse(b"-ERR no\r\n").await.unwrap(),
            Value::Error("ERR no".into())
        );
        assert_eq!(
            parse(b"*3\r\n$4\r\nfile\r\n$1\r\nx\r\n:7\r\n")
                .await
                .unwrap(),
            Value::Array(vec![
                Value::Bulk(b"file".to_vec()),
                Value::Bulk(b"x".to_vec()),
                Value::Int(7)
            ])
        );
        for bad in [
            &b"$5\r\nab\r\n"[..],
            b"$999999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n:1\r\n",
            b"?\r\n",
            b":x\r\n",
            b"+OK",
            b"$2\r\nabcd",
        ] {
            assert!(
                parse(bad).await.is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
