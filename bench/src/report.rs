//! Result rows: one JSON object per line on stdout, and a human table on stderr.
//!
//! The JSON is written (and, for the rows a child process hands to its parent, read back)
//! by hand: the objects are flat, so a few dozen lines do it without a serde dependency.

use std::fmt::Write as _;
use std::io::Write as _;

/// Prints one result row as a JSON line on stdout (what a child process of the
/// embedded suite hands its parent).
pub fn out(row: &Row) {
    println!("{}", row.to_json());
}

/// An extra field of a row, after the standard ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Extra {
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Num(f64),
    /// A whole number, written without a fraction.
    Int(i64),
    /// A string.
    Str(String),
}

impl Extra {
    /// A count (threads, rounds, watchers, …) as a whole number; saturates at
    /// `i64::MAX`, which no count here comes near.
    pub fn count<N: TryInto<i64>>(n: N) -> Extra {
        Extra::Int(n.try_into().unwrap_or(i64::MAX))
    }
}

/// One measured result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `embedded` or `server`.
    pub suite: String,
    /// The store (`logkv`, `redb`, …), `limit`, or `logkv/redis` for ratios.
    pub store: String,
    /// The workload name, e.g. `W1`, `W2.t2`, `W7.p99`.
    pub workload: String,
    /// The number.
    pub value: f64,
    /// `ops/s`, `s`, `bytes`, `bytes/key`, `ratio` or `ms`.
    pub unit: String,
    /// Operations (or keys) the workload used.
    pub n: u64,
    /// Further fields, e.g. `("durable", Bool(false))`.
    pub extra: Vec<(String, Extra)>,
}

impl Row {
    /// A row with no extra fields.
    pub fn new(suite: &str, store: &str, workload: &str, value: f64, unit: &str, n: u64) -> Row {
        Row {
            suite: suite.to_string(),
            store: store.to_string(),
            workload: workload.to_string(),
            value,
            unit: unit.to_string(),
            n,
            extra: Vec::new(),
        }
    }

    /// Adds an extra field.
    #[must_use]
    pub fn with(mut self, name: &str, value: Extra) -> Row {
        self.extra.push((name.to_string(), value));
        self
    }

    /// The value of an extra field.
    pub fn extra(&self, name: &str) -> Option<&Extra> {
        self.extra.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The row as one line of JSON (no newline).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(128);
        s.push('{');
        push_field(&mut s, "suite", &Extra::Str(self.suite.clone()), true);
        push_field(&mut s, "store", &Extra::Str(self.store.clone()), false);
        push_field(
            &mut s,
            "workload",
            &Extra::Str(self.workload.clone()),
            false,
        );
        push_field(&mut s, "value", &Extra::Num(round_value(self.value)), false);
        push_field(&mut s, "unit", &Extra::Str(self.unit.clone()), false);
        push_field(&mut s, "n", &Extra::count(self.n), false);
        for (k, v) in &self.extra {
            push_field(&mut s, k, v, false);
        }
        s.push('}');
        s
    }

    /// Parses a line written by [`Row::to_json`]; `None` if it is not one.
    pub fn from_json(line: &str) -> Option<Row> {
        let fields = parse_flat_object(line)?;
        let mut row = Row::new("", "", "", 0.0, "", 0);
        let mut seen = 0;
        for (k, v) in fields {
            match (k.as_str(), v) {
                ("suite", Extra::Str(s)) => (row.suite, seen) = (s, seen | 1),
                ("store", Extra::Str(s)) => (row.store, seen) = (s, seen | 2),
                ("workload", Extra::Str(s)) => (row.workload, seen) = (s, seen | 4),
                ("value", Extra::Num(x)) => (row.value, seen) = (x, seen | 8),
                ("unit", Extra::Str(s)) => (row.unit, seen) = (s, seen | 16),
                ("n", Extra::Int(x)) => (row.n, seen) = (u64::try_from(x).ok()?, seen | 32),
                (_, v) => row.extra.push((k, v)),
            }
        }
        (seen == 63).then_some(row)
    }
}

/// Rounds for printing: 0.1 for large numbers, six significant digits below 1,000.
pub fn round_value(v: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    if v.abs() >= 1000.0 {
        return (v * 10.0).round() / 10.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the log10 of a finite, non-zero f64 lies within -324..309"
    )]
    let digits = 6 - 1 - v.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

fn push_field(s: &mut String, name: &str, value: &Extra, first: bool) {
    if !first {
        s.push(',');
    }
    push_str(s, name);
    s.push(':');
    match value {
        Extra::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Extra::Num(x) if x.is_finite() => {
            // Debug prints the shortest round-tripping form, with ".0" on whole numbers.
            let _ = write!(s, "{x:?}");
        }
        Extra::Num(_) => s.push_str("null"),
        Extra::Int(i) => {
            let _ = write!(s, "{i}");
        }
        Extra::Str(t) => push_str(s, t),
    }
}

fn push_str(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Parses a flat JSON object whose values are strings, numbers, booleans or null
/// (null becomes NaN).
pub fn parse_flat_object(line: &str) -> Option<Vec<(String, Extra)>> {
    let mut p = Parser {
        b: line.trim().as_bytes(),
        i: 0,
    };
    p.eat(b'{')?;
    let mut out = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
        return p.at_end().then_some(out);
    }
    loop {
        p.ws();
        let k = p.string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        let v = match p.peek()? {
            b'"' => Extra::Str(p.string()?),
            b't' => p.word("true", Extra::Bool(true))?,
            b'f' => p.word("false", Extra::Bool(false))?,
            b'n' => p.word("null", Extra::Num(f64::NAN))?,
            _ => p.number()?,
        };
        out.push((k, v));
        p.ws();
        match p.peek()? {
            b',' => p.i += 1,
            b'}' => {
                p.i += 1;
                return p.at_end().then_some(out);
            }
            _ => return None,
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }
    fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }
    fn word(&mut self, w: &str, v: Extra) -> Option<Extra> {
        let end = self.i + w.len();
        (self.b.get(self.i..end)? == w.as_bytes()).then(|| {
            self.i = end;
            v
        })
    }
    fn number(&mut self) -> Option<Extra> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        match text.parse::<i64>() {
            Ok(i) => Some(Extra::Int(i)),
            Err(_) => text.parse().ok().map(Extra::Num),
        }
    }
    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = std::str::from_utf8(self.b.get(self.i..self.i + 4)?).ok()?;
                            self.i += 4;
                            let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return None,
                    }
                }
                c => out.push(c),
            }
        }
    }
}

/// Collects rows, prints each as JSON on stdout as it comes, and the table on stderr at the end.
#[derive(Debug, Default)]
pub struct Reporter {
    rows: Vec<Row>,
}

impl Reporter {
    /// An empty reporter.
    pub fn new() -> Reporter {
        Reporter::default()
    }

    /// Prints a row on stdout (flushed at once) and keeps it for the table.
    pub fn emit(&mut self, row: Row) {
        let line = row.to_json();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        self.rows.push(row);
    }

    /// The rows so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Prints the human table on stderr.
    pub fn print_table(&self, title: &str) {
        eprintln!("\n{}", table(title, &self.rows));
    }
}

/// A human table: one line per workload, one column per store.
pub fn table(title: &str, rows: &[Row]) -> String {
    let mut stores: Vec<&str> = Vec::new();
    let mut workloads: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !stores.contains(&r.store.as_str()) {
            stores.push(&r.store);
        }
        if !workloads.iter().any(|(w, _)| *w == r.workload) {
            workloads.push((&r.workload, &r.unit));
        }
    }
    let cell = |w: &str, s: &str| -> String {
        match rows.iter().find(|r| r.workload == w && r.store == s) {
            None => "-".to_string(),
            Some(r) => {
                let mut c = human(r.value);
                if r.extra("durable") == Some(&Extra::Bool(false)) {
                    c.push('*');
                }
                c
            }
        }
    };
    let wcol = workloads
        .iter()
        .map(|(w, _)| w.len())
        .chain([8])
        .max()
        .unwrap_or(8);
    let ucol = workloads
        .iter()
        .map(|(_, u)| u.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let widths: Vec<usize> = stores
        .iter()
        .map(|s| {
            workloads
                .iter()
                .map(|(w, _)| cell(w, s).len())
                .chain([s.len()])
                .max()
                .unwrap_or(1)
        })
        .collect();
    let mut t = format!("== {title} ==\n{:<wcol$}  {:<ucol$}", "workload", "unit");
    for (s, w) in stores.iter().zip(&widths) {
        let _ = write!(t, "  {s:>w$}");
    }
    t.push('\n');
    for (w, u) in &workloads {
        let _ = write!(t, "{w:<wcol$}  {u:<ucol$}");
        for (s, width) in stores.iter().zip(&widths) {
            let _ = write!(t, "  {:>width$}", cell(w, s));
        }
        t.push('\n');
    }
    if rows
        .iter()
        .any(|r| r.extra("durable") == Some(&Extra::Bool(false)))
    {
        t.push_str("* not durable: left out of durable comparisons\n");
    }
    t
}

/// A number for people: thousands separated, a few significant digits.
pub fn human(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v.abs() >= 100.0 {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a measured figure for a table; a saturating cast is what is wanted"
        )]
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_contract_shape() {
        let r = Row::new("embedded", "logkv", "W1", 812_345.0, "ops/s", 1_000_000);
        assert_eq!(
            r.to_json(),
            r#"{"suite":"embedded","store":"logkv","workload":"W1","value":812345.0,"unit":"ops/s","n":1000000}"#
        );
    }

    #[test]
    fn extra_fields_follow_and_strings_are_escaped() {
        let r = Row::new("embedded", "sl\"ed", "W4", 1.5, "ops/s", 2000)
            .with("durable", Extra::Bool(false))
            .with("note", Extra::Str("a\\b\nc".into()))
            .with("fsyncs", Extra::Int(12));
        assert_eq!(
            r.to_json(),
            r#"{"suite":"embedded","store":"sl\"ed","workload":"W4","value":1.5,"unit":"ops/s","n":2000,"durable":false,"note":"a\\b\nc","fsyncs":12}"#
        );
    }

    #[test]
    fn values_are_rounded_and_non_finite_is_null() {
        let r = Row::new("s", "x", "w", 812_345.678_9, "ops/s", 1);
        assert!(r.to_json().contains(r#""value":812345.7,"#));
        let r = Row::new("s", "x", "w", 0.123_456_789, "s", 1);
        assert!(r.to_json().contains(r#""value":0.123457,"#));
        let r = Row::new("s", "x", "w", 3.000_000_1, "ratio", 1);
        assert!(r.to_json().contains(r#""value":3.0,"#));
        let r = Row::new("s", "x", "w", f64::NAN, "ms", 1);
        assert!(r.to_json().contains(r#""value":null,"#));
        let r = Row::new("s", "x", "w", 1e-9, "s", 1);
        assert!(r.to_json().contains(r#""value":1e-9,"#));
    }

    #[test]
    fn round_trips_through_the_parser() {
        let r = Row::new(
            "server",
            "logkv/redis",
            "set.p16.always",
            1.234,
            "ratio",
            100_000,
        )
        .with("durable", Extra::Bool(true))
        .with("note", Extra::Str("tab\there \u{1} é".into()));
        let back = Row::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn parser_rejects_what_is_not_a_row() {
        assert!(Row::from_json("").is_none());
        assert!(Row::from_json("hello").is_none());
        assert!(Row::from_json(r#"{"suite":"x"}"#).is_none());
        assert!(Row::from_json(
            r#"{"suite":"a","store":"b","workload":"c","value":1,"unit":"s","n":1"#
        )
        .is_none());
        assert!(Row::from_json(
            r#"{"suite":"a","store":"b","workload":"c","value":1,"unit":"s","n":1} x"#
        )
        .is_none());
        assert!(parse_flat_object(r#"{ "a" : 1 , "b":"\u00e9" }"#).is_some());
    }

    #[test]
    fn table_pivots_workloads_by_store() {
        let rows = vec![
            Row::new("embedded", "logkv", "W1", 1_234_567.0, "ops/s", 1),
            Row::new("embedded", "sled", "W1", 99.5, "ops/s", 1),
            Row::new("embedded", "sled", "W4", 500.0, "ops/s", 1)
                .with("durable", Extra::Bool(false)),
        ];
        let t = table("embedded", &rows);
        assert!(t.contains("1,234,567"));
        assert!(t.contains("99.50"));
        assert!(t.contains("500*"));
        assert!(t.lines().any(|l| l.starts_with("W4") && l.contains(" - ")));
    }
}
