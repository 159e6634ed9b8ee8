//! The argument cursor: a verb's arguments read in order, with the syntax and arity
//! errors made in one place.

use bytes::Bytes;

use crate::protocol::Reply;

/// The arguments after the verb, read front to back.
pub(crate) struct Args<'a> {
    /// The verb's lower-case name, for error messages.
    verb: &'static str,
    rest: &'a [Bytes],
}

impl<'a> Args<'a> {
    /// The arguments of `verb` (its name as error messages show it), verb excluded.
    pub fn new(verb: &'static str, rest: &'a [Bytes]) -> Args<'a> {
        Args { verb, rest }
    }

    /// How many arguments are left.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The next argument, if any.
    pub fn next(&mut self) -> Option<&'a Bytes> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// The next argument, which must be there.
    pub fn next_bytes(&mut self) -> Result<&'a Bytes, Reply> {
        self.next().ok_or_else(|| self.wrong_args())
    }

    /// The next argument as a key: text (the engine checks the rest).
    pub fn next_key(&mut self) -> Result<&'a str, Reply> {
        key(self.next_bytes()?)
    }

    /// The next argument as text (a pattern, a bucket name); `what` names it in errors.
    pub fn next_text(&mut self, what: &str) -> Result<&'a str, Reply> {
        text(self.next_bytes()?, what)
    }

    /// The next argument as a non-negative integer; `what` names it in errors.
    pub fn next_uint(&mut self, what: &str) -> Result<u64, Reply> {
        uint(self.next_bytes()?, what)
    }

    /// Takes the next argument if it is `word` (case-insensitive).
    pub fn keyword(&mut self, word: &str) -> bool {
        match self.rest.first() {
            Some(arg) if is(arg, word) => {
                self.rest = &self.rest[1..];
                true
            }
            _ => false,
        }
    }

    /// The value that must follow the option `option`: a syntax error near it otherwise.
    pub fn value_of(&mut self, option: &[u8]) -> Result<&'a Bytes, Reply> {
        self.next().ok_or_else(|| self.syntax(option))
    }

    /// Ends the reading: an argument left over is a syntax error near it.
    pub fn finish(&self) -> Result<(), Reply> {
        match self.rest.first() {
            None => Ok(()),
            Some(extra) => Err(self.syntax(extra)),
        }
    }

    /// Ends the reading: an argument left over is the wrong number of arguments.
    pub fn finish_arity(&self) -> Result<(), Reply> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.wrong_args())
        }
    }

    /// `-ERR wrong number of arguments for '<verb>' command`.
    pub fn wrong_args(&self) -> Reply {
        wrong_args(self.verb)
    }

    /// `-ERR syntax error in '<verb>' command near '<word>'`.
    pub fn syntax(&self, near: &[u8]) -> Reply {
        Reply::err(
            "ERR",
            format!(
                "syntax error in '{}' command near '{}'",
                self.verb,
                preview(near)
            ),
        )
    }
}

/// `-ERR wrong number of arguments for '<verb>' command`.
pub(crate) fn wrong_args(verb: &str) -> Reply {
    Reply::err(
        "ERR",
        format!("wrong number of arguments for '{verb}' command"),
    )
}

/// A short, printable rendering of client bytes for error messages.
pub(crate) fn preview(arg: &[u8]) -> String {
    let mut s: String = arg
        .iter()
        .take(64)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    if arg.len() > 64 {
        s.push_str("...");
    }
    s
}

/// A key argument: its bytes must be text (the engine checks the rest).
pub(crate) fn key(arg: &[u8]) -> Result<&str, Reply> {
    std::str::from_utf8(arg).map_err(|_| {
        Reply::err(
            "BADKEY",
            format!("invalid key: not printable ASCII: \"{}\"", preview(arg)),
        )
    })
}

/// A text argument (pattern, bucket name, cursor).
pub(crate) fn text<'a>(arg: &'a [u8], what: &str) -> Result<&'a str, Reply> {
    std::str::from_utf8(arg).map_err(|_| Reply::err("BADARG", format!("invalid {what}: not UTF-8")))
}

/// A non-negative decimal integer: ASCII digits only (no sign, no spaces), one that
/// fits in 64 bits. (`str::parse` also takes a leading `+`.)
pub(crate) fn decimal(arg: &[u8]) -> Option<u64> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// A non-negative integer argument.
pub(crate) fn uint(arg: &[u8], what: &str) -> Result<u64, Reply> {
    decimal(arg).ok_or_else(|| {
        Reply::err(
            "BADARG",
            format!(
                "invalid {what} '{}': not a non-negative integer",
                preview(arg)
            ),
        )
    })
}

/// Case-insensitive keyword comparison.
pub(crate) fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&'static str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::from_static(w.as_bytes()))
            .collect()
    }

    fn message(r: Reply) -> String {
        match r {
            Reply::Error { code, msg } => format!("{code} {msg}"),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn numbers_are_ascii_digits_only() {
        assert_eq!(decimal(b"5000"), Some(5000));
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b"+5000"[..],
            b"-1",
            b"",
            b" 5",
            b"5 ",
            b"5e3",
            b"18446744073709551616",
        ] {
            assert_eq!(decimal(bad), None, "{}", bad.escape_ascii());
            assert!(uint(bad, "ttl").is_err());
        }
    }

    #[test]
    fn reads_in_order_and_reports_in_one_voice() {
        let list = args(&["k", "12", "TTL", "5", "x"]);
        let mut a = Args::new("put", &list);
        assert_eq!(a.next_key().unwrap(), "k");
        assert_eq!(a.next_uint("revision").unwrap(), 12);
        assert!(!a.keyword("REV"));
        assert!(a.keyword("ttl"));
        assert_eq!(&a.value_of(b"TTL").unwrap()[..], b"5");
        assert_eq!(a.remaining(), 1);
        assert_eq!(
            message(a.finish().unwrap_err()),
            "ERR syntax error in 'put' command near 'x'"
        );
        assert_eq!(
            message(a.finish_arity().unwrap_err()),
            "ERR wrong number of arguments for 'put' command"
        );
        assert!(a.next().is_some());
        assert!(a.finish().is_ok() && a.finish_arity().is_ok());
        assert_eq!(
            message(a.next_bytes().unwrap_err()),
            "ERR wrong number of arguments for 'put' command"
        );
        assert_eq!(
            message(a.value_of(b"FROM").unwrap_err()),
            "ERR syntax error in 'put' command near 'FROM'"
        );
    }

    #[test]
    fn conversions() {
        assert_eq!(
            message(key(b"\xff").unwrap_err()),
            "BADKEY invalid key: not printable ASCII: \"\\xff\""
        );
        assert_eq!(
            message(text(b"\xff", "pattern").unwrap_err()),
            "BADARG invalid pattern: not UTF-8"
        );
        assert_eq!(
            message(uint(b"-1", "LIMIT").unwrap_err()),
            "BADARG invalid LIMIT '-1': not a non-negative integer"
        );
        assert_eq!(uint(b"42", "LIMIT").unwrap(), 42);
        assert_eq!(preview(&[b'a'; 70]), format!("{}...", "a".repeat(64)));
    }
}
