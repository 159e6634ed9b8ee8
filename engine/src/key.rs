//! Keys, bucket names, subject patterns and globs.

use crate::error::{Error, Result};

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a key: 1–1024 bytes of printable ASCII (0x21–0x7E) except `* > ? [ ]`,
/// not starting or ending with `.`, with no empty token (`..`).
pub fn validate_key(key: &str) -> Result<()> {
    let b = key.as_bytes();
    let bad = |why: &str| {
        Err(Error::BadKey(format!(
            "{why}: {:?}",
            truncate_for_message(key)
        )))
    };
    if b.is_empty() {
        return bad("empty key");
    }
    if b.len() > MAX_KEY_LEN {
        return Err(Error::BadKey(format!(
            "key of {} bytes is longer than {MAX_KEY_LEN}",
            b.len()
        )));
    }
    if let Some(&c) = b
        .iter()
        .find(|&&c| !(0x21..=0x7e).contains(&c) || matches!(c, b'*' | b'>' | b'?' | b'[' | b']'))
    {
        return bad(&format!("character {:?} not allowed", c as char));
    }
    if b.first() == Some(&b'.') || b.last() == Some(&b'.') {
        return bad("key starts or ends with '.'");
    }
    if key.contains("..") {
        return bad("key has an empty token ('..')");
    }
    Ok(())
}

fn truncate_for_message(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Checks a bucket name: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn validate_bucket_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(Error::BadBucket(format!(
            "{:?}: a bucket name is 1-64 characters of A-Z a-z 0-9 _ -",
            truncate_for_message(name)
        )));
    }
    Ok(())
}

/// A NATS-style subject pattern: tokens split on `.`, `*` matches one token,
/// a final `>` matches one or more tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pattern: String,
    wild: bool,
}

impl Subject {
    /// Parses and validates a pattern.
    pub fn new(pattern: &str) -> Result<Subject> {
        let bad = |why: &str| {
            Err(Error::BadKey(format!(
                "invalid pattern {:?}: {why}",
                truncate_for_message(pattern)
            )))
        };
        if pattern.is_empty() || pattern.len() > MAX_KEY_LEN {
            return bad("length must be 1-1024");
        }
        let tokens: Vec<&str> = pattern.split('.').collect();
        let mut wild = false;
        for (i, t) in tokens.iter().enumerate() {
            match *t {
                "" => return bad("empty token"),
                "*" => wild = true,
                ">" if i + 1 == tokens.len() => wild = true,
                ">" => return bad("'>' must be the last token"),
                t if t.bytes().any(|c| {
                    !(0x21..=0x7e).contains(&c) || matches!(c, b'*' | b'>' | b'?' | b'[' | b']')
                }) =>
                {
                    return bad("wildcards must be whole tokens")
                }
                _ => {}
            }
        }
        Ok(Subject {
            pattern: pattern.to_string(),
            wild,
        })
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether this pattern names exactly one key.
    pub fn is_literal(&self) -> bool {
        !self.wild
    }

    /// The longest prefix every matching key starts with (the tokens before the first wildcard).
    pub fn literal_prefix(&self) -> &str {
        if !self.wild {
            return &self.pattern;
        }
        let mut end = 0;
        for t in self.pattern.split('.') {
            if t == "*" || t == ">" {
                break;
            }
            end += t.len() + 1;
        }
        // `end` stops before a wildcard token, inside the pattern.
        self.pattern.get(..end).unwrap_or_default()
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        if !self.wild {
            return self.pattern == key;
        }
        let mut keys = key.split('.');
        let mut pats = self.pattern.split('.').peekable();
        while let Some(p) = pats.next() {
            if p == ">" {
                return keys.next().is_some();
            }
            match keys.next() {
                Some(k) if p == "*" || p == k => {}
                _ => return false,
            }
            if pats.peek().is_none() {
                return keys.next().is_none();
            }
        }
        false
    }
}

/// A glob over whole keys: `*` any run, `?` one character, `[abc]`, `[a-z]`,
/// `[!a]`/`[^a]` negated classes, `\x` a literal `x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<u8>,
}

impl Glob {
    /// Parses and validates a glob.
    pub fn new(pattern: &str) -> Result<Glob> {
        if pattern.is_empty() || pattern.len() > MAX_KEY_LEN {
            return Err(Error::BadArgument(format!(
                "invalid glob {:?}: length must be 1-1024",
                truncate_for_message(pattern)
            )));
        }
        let b = pattern.as_bytes();
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'\\' if i + 1 >= b.len() => {
                    return Err(Error::BadArgument("glob ends with '\\'".into()))
                }
                b'\\' => i += 1,
                b'[' => match class_end(b, i) {
                    Some(end) => i = end,
                    None => {
                        return Err(Error::BadArgument(format!(
                            "invalid glob {:?}: unclosed '['",
                            truncate_for_message(pattern)
                        )))
                    }
                },
                _ => {}
            }
            i += 1;
        }
        Ok(Glob {
            pattern: b.to_vec(),
        })
    }

    /// The literal prefix every match starts with.
    pub fn literal_prefix(&self) -> String {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&c) = self.pattern.get(i) {
            match c {
                b'*' | b'?' | b'[' => break,
                b'\\' => {
                    // `new` refused a trailing backslash: the escaped byte exists.
                    i += 1;
                    out.extend(self.pattern.get(i));
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whether `s` matches the whole glob.
    pub fn matches(&self, s: &str) -> bool {
        glob_match(&self.pattern, s.as_bytes())
    }
}

/// Index of the `]` closing the class that opens at `open`.
fn class_end(p: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if matches!(p.get(i), Some(b'!' | b'^')) {
        i += 1;
    }
    // A ']' right after the opening (or the negation) is a literal.
    if p.get(i) == Some(&b']') {
        i += 1;
    }
    while let Some(&c) = p.get(i) {
        match c {
            b'\\' => i += 2,
            b']' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Matches one character against the class at `p[open..=end]`.
#[allow(
    clippy::indexing_slicing,
    reason = "`end` is a `]` that class_end found after `open`, so every index below it is in `p`; each read is guarded by `< end`"
)]
fn class_matches(p: &[u8], open: usize, end: usize, c: u8) -> bool {
    let mut i = open + 1;
    let negate = p[i] == b'!' || p[i] == b'^';
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < end && (first || p[i] != b']') {
        first = false;
        let mut lo = p[i];
        if lo == b'\\' && i + 1 < end {
            i += 1;
            lo = p[i];
        }
        if i + 2 < end && p[i + 1] == b'-' {
            let mut hi = p[i + 2];
            let mut step = 3;
            if hi == b'\\' && i + 3 < end {
                hi = p[i + 3];
                step = 4;
            }
            if lo <= c && c <= hi {
                hit = true;
            }
            i += step;
        } else {
            if lo == c {
                hit = true;
            }
            i += 1;
        }
    }
    hit != negate
}

/// Iterative glob matching with single-star backtracking: linear in practice, never exponential.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = s.get(si) {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some(b'?') => {
                pi += 1;
                si += 1;
                continue;
            }
            Some(b'[') => {
                if let Some(end) = class_end(p, pi) {
                    if class_matches(p, pi, end, c) {
                        pi = end + 1;
                        si += 1;
                        continue;
                    }
                }
            }
            Some(b'\\') if p.get(pi + 1) == Some(&c) => {
                pi += 2;
                si += 1;
                continue;
            }
            Some(b'\\') if pi + 1 < p.len() => {}
            Some(&literal) if literal == c => {
                pi += 1;
                si += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while p.get(pi) == Some(&b'*') {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in [
            "a",
            "a.b",
            "a-b_c/d=e:f",
            "A.B.C",
            "x".repeat(1024).as_str(),
            "$KV.x",
            "a\\b",
        ] {
            assert!(validate_key(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "a b",
            "a..b",
            ".a",
            "a.",
            "a*",
            "a>",
            "a?",
            "a[",
            "a]",
            "é",
            "a\tb",
            &"x".repeat(1025),
        ] {
            assert!(
                matches!(validate_key(bad), Err(Error::BadKey(_))),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn bucket_names() {
        for ok in ["default", "a", "A-b_9", &"x".repeat(64)] {
            assert!(validate_bucket_name(ok).is_ok());
        }
        for bad in ["", "a.b", "a b", "é", &"x".repeat(65), "a/b"] {
            assert!(matches!(
                validate_bucket_name(bad),
                Err(Error::BadBucket(_))
            ));
        }
    }

    #[test]
    fn subjects() {
        let m = |p: &str, k: &str| Subject::new(p).unwrap().matches(k);
        assert!(m(">", "a"));
        assert!(m(">", "a.b.c"));
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a.b.c"));
        assert!(!m("a.*", "a"));
        assert!(m("a.>", "a.b.c"));
        assert!(!m("a.>", "a"));
        assert!(m("*.b.*", "a.b.c"));
        assert!(!m("*.b.*", "a.c.c"));
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.bc"));
        assert!(!m("a.b", "a.b.c"));
        assert!(Subject::new("a.>.b").is_err());
        assert!(Subject::new("a*").is_err());
        assert!(Subject::new("a..b").is_err());
        assert!(Subject::new("").is_err());
        assert_eq!(Subject::new("a.b.>").unwrap().literal_prefix(), "a.b.");
        assert_eq!(Subject::new("*.b").unwrap().literal_prefix(), "");
        assert_eq!(Subject::new("a.b").unwrap().literal_prefix(), "a.b");
    }

    #[test]
    fn globs() {
        let m = |p: &str, k: &str| Glob::new(p).unwrap().matches(k);
        assert!(m("*", "anything"));
        assert!(m("user:*", "user:1"));
        assert!(!m("user:*", "usr:1"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[a-c]x", "hbx"));
        assert!(m("h[!a-c]x", "hdx"));
        assert!(!m("h[^a-c]x", "hbx"));
        assert!(m("a*b*c", "a.x.b.y.c"));
        assert!(!m("a*b*c", "a.x.b.y.d"));
        assert!(m("a\\*", "a*"));
        assert!(m("*.*", "a.b"));
        assert!(!m("abc", "abcd"));
        assert!(m("[]]", "]"));
        assert!(Glob::new("a[b").is_err());
        assert!(Glob::new("a\\").is_err());
        assert_eq!(Glob::new("user:1*").unwrap().literal_prefix(), "user:1");
        // Pathological pattern stays fast (no exponential backtracking).
        let long = "a".repeat(1000);
        assert!(!m(&format!("{}b", "*a".repeat(30)), &long));
    }
}
