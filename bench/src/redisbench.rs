//! Parsing `redis-benchmark --csv` output.
//!
//! Redis 7 prints a header and latency columns:
//! `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`
//! then one line per test (`"SET","86956.52","0.310",...`). Redis 6 and older print only
//! `"SET","86956.52"` lines. Both are read.

/// One test's result.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// The test name as printed (`SET`, `GET`, …).
    pub test: String,
    /// Requests per second.
    pub rps: f64,
    /// Median latency in ms, when printed.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms, when printed.
    pub p99_ms: Option<f64>,
}

/// Splits one CSV line into fields (double-quoted fields, `""` inside them).
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches(['\r', '\n']).chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Parses the whole `--csv` output; lines that are not results are skipped.
pub fn parse_csv(text: &str) -> Vec<BenchResult> {
    let mut columns: Option<Vec<String>> = None;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f = csv_fields(line);
        if f.first().map(String::as_str) == Some("test") {
            columns = Some(f);
            continue;
        }
        if f.len() < 2 {
            continue;
        }
        let Ok(rps) = f[1].trim().parse::<f64>() else {
            continue;
        };
        let col = |name: &str| -> Option<f64> {
            let i = columns.as_ref()?.iter().position(|c| c == name)?;
            f.get(i)?.trim().parse().ok()
        };
        out.push(BenchResult {
            test: f[0].clone(),
            rps,
            p50_ms: col("p50_latency_ms"),
            p99_ms: col("p99_latency_ms"),
        });
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "figures parsed from short decimal text compare exactly with the same literals"
)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis7_csv_with_header() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
\"SET\",\"86956.52\",\"0.310\",\"0.096\",\"0.303\",\"0.431\",\"0.575\",\"1.191\"\n\
\"GET\",\"90090.09\",\"0.291\",\"0.072\",\"0.287\",\"0.399\",\"0.519\",\"0.879\"\n";
        let r = parse_csv(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            BenchResult {
                test: "SET".into(),
                rps: 86956.52,
                p50_ms: Some(0.303),
                p99_ms: Some(0.575)
            }
        );
        assert_eq!(r[1].test, "GET");
        assert_eq!(r[1].p99_ms, Some(0.519));
    }

    #[test]
    fn parses_old_csv_without_header_and_skips_noise() {
        let text = "WARNING: Could not fetch server CONFIG\r\n\"SET\",\"1234.50\"\r\n\"GET\",\"99.00\"\r\n\n";
        let r = parse_csv(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].rps, 1234.5);
        assert_eq!(r[0].p50_ms, None);
        assert_eq!(r[1].test, "GET");
    }

    #[test]
    fn csv_fields_handle_quotes_and_commas() {
        assert_eq!(csv_fields(r#""a,b","c""d",e"#), vec!["a,b", "c\"d", "e"]);
        assert_eq!(csv_fields(""), vec![""]);
    }
}
