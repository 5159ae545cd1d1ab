//! Just enough of the Prometheus text exposition format to read ctx's `/metrics` and compare two
//! scrapes: samples with their labels and values, and each family's `# TYPE`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A series: metric name and its labels, sorted by label name.
pub type Series = (String, Labels);
pub type Labels = Vec<(String, String)>;

#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub samples: BTreeMap<Series, f64>,
    /// Family name to type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
}

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    // `s` starts just after `{`.
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(r) = rest.strip_prefix('}') {
            labels.sort();
            return Ok((labels, r));
        }
        let (name, r) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("label without =\" in {s:?}"))?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated escape in {s:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        labels.push((name.trim().to_owned(), value));
        rest = &r[end + 1..];
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad sample value {s:?}")),
    }
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            let at = |e: String| format!("line {}: {e}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(r) = line.strip_prefix("# TYPE ") {
                let mut it = r.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    out.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) = match line.find(['{', ' ']) {
                Some(i) if line[i..].starts_with('{') => {
                    let (labels, rest) = parse_labels(&line[i + 1..]).map_err(at)?;
                    (&line[..i], labels, rest)
                }
                Some(i) => (&line[..i], Vec::new(), &line[i..]),
                None => return Err(at(format!("no value in {line:?}"))),
            };
            let value = rest
                .split_whitespace()
                .next()
                .ok_or_else(|| at(format!("no value in {line:?}")))?;
            let value = parse_value(value).map_err(at)?;
            if out
                .samples
                .insert((name.to_owned(), labels), value)
                .is_some()
            {
                return Err(at(format!("series repeated: {line:?}")));
            }
        }
        Ok(out)
    }

    /// The family a sample belongs to, and its type: `x_bucket` of histogram `x` is a
    /// histogram sample; an untyped name falls back to its own.
    pub fn kind(&self, name: &str) -> Option<&str> {
        if let Some(k) = self.types.get(name) {
            return Some(k);
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some(k) = self.types.get(base)
                && (k == "histogram" || k == "summary")
            {
                return Some(k);
            }
        }
        None
    }

    /// Samples that must never go down: counters and histogram buckets, sums and counts.
    pub fn monotonic(&self) -> impl Iterator<Item = (&Series, f64)> {
        self.samples.iter().filter_map(|(s, v)| {
            matches!(self.kind(&s.0), Some("counter" | "histogram")).then_some((s, *v))
        })
    }

    /// All series of one metric.
    pub fn metric<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a Series, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(s, _)| s.0 == name)
            .map(|(s, v)| (s, *v))
    }

    /// Every series of `name` that has all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a Series, f64)> + 'a {
        self.metric(name)
            .filter(move |(s, _)| labels.iter().all(|(k, v)| label(s, k) == Some(*v)))
    }

    /// The value of one series, given some of its labels; `None` unless exactly one matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.matching(name, labels);
        let first = found.next()?;
        found.next().is_none().then_some(first.1)
    }

    /// Sum over every series of `name` that has all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }
}

/// The value of label `name` of a series.
pub fn label<'a>(s: &'a Series, name: &str) -> Option<&'a str> {
    s.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn render(s: &Series) -> String {
    if s.1.is_empty() {
        return s.0.clone();
    }
    let l: Vec<String> = s.1.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{}{{{}}}", s.0, l.join(","))
}

/// Counters and histograms of `before` compared with `after`.
#[derive(Debug, Default)]
pub struct Monotonic {
    /// Samples compared.
    pub compared: usize,
    /// Samples whose value went down: (series, before, after).
    pub decreased: Vec<(String, f64, f64)>,
    /// Samples of `before` that `after` no longer has.
    pub missing: Vec<String>,
    /// `*_total` samples not typed as counters: a contract slip, reported.
    pub untyped_totals: Vec<String>,
}

impl Monotonic {
    /// What was compared and the first few of what went wrong, in one line.
    pub fn describe(&self) -> String {
        let mut d = format!("{} samples compared", self.compared);
        for (s, a, b) in self.decreased.iter().take(4) {
            let _ = write!(d, "; {s} went {a} -> {b}");
        }
        if !self.decreased.is_empty() {
            let _ = write!(d, "; {} decreased in all", self.decreased.len());
        }
        for s in self.missing.iter().take(4) {
            let _ = write!(d, "; {s} vanished");
        }
        for s in self.untyped_totals.iter().take(4) {
            let _ = write!(d, "; {s} is not typed counter");
        }
        d
    }

    pub fn ok(&self) -> bool {
        self.compared > 0
            && self.decreased.is_empty()
            && self.missing.is_empty()
            && self.untyped_totals.is_empty()
    }
}

pub fn monotonic(before: &Scrape, after: &Scrape) -> Monotonic {
    let mut m = Monotonic::default();
    for s in before.samples.keys() {
        if s.0.ends_with("_total") && before.kind(&s.0) != Some("counter") {
            m.untyped_totals.push(render(s));
        }
    }
    for (s, v) in before.monotonic() {
        m.compared += 1;
        match after.samples.get(s) {
            None => m.missing.push(render(s)),
            Some(w) if *w < v => m.decreased.push((render(s), v, *w)),
            Some(_) => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"# HELP ctx_cpu_seconds_total Time per state.
# TYPE ctx_cpu_seconds_total counter
ctx_cpu_seconds_total{cpu="1",state="user"} 10.5
ctx_cpu_seconds_total{state="kernel",cpu="1"} 2
# TYPE ctx_sample_duration_seconds histogram
ctx_sample_duration_seconds_bucket{le="0.00001"} 3
ctx_sample_duration_seconds_bucket{le="+Inf"} 7
ctx_sample_duration_seconds_sum 0.001
ctx_sample_duration_seconds_count 7
# TYPE ctx_probes_attached_timestamp_seconds gauge
ctx_probes_attached_timestamp_seconds 1.7e9
# TYPE ctx_hook_info gauge
ctx_hook_info{group="nmi",tracepoint="nmi_handler",status="attached",note="a \"b\"\\c"} 1
"#;

    #[test]
    fn parses_exposition() {
        let s = Scrape::parse(A).unwrap();
        assert_eq!(s.samples.len(), 8);
        assert_eq!(
            s.get(
                "ctx_cpu_seconds_total",
                &[("cpu", "1"), ("state", "kernel")]
            ),
            Some(2.0)
        );
        assert_eq!(
            s.get("ctx_cpu_seconds_total", &[("cpu", "1")]),
            None,
            "two match"
        );
        assert!((s.sum("ctx_cpu_seconds_total", &[("cpu", "1")]) - 12.5).abs() < 1e-9);
        assert_eq!(
            s.get("ctx_sample_duration_seconds_bucket", &[("le", "+Inf")]),
            Some(7.0)
        );
        assert_eq!(s.get("ctx_hook_info", &[("note", "a \"b\"\\c")]), Some(1.0));
        assert_eq!(s.kind("ctx_sample_duration_seconds_sum"), Some("histogram"));
        assert_eq!(s.monotonic().count(), 6);
        assert!(Scrape::parse("x{a=\"1} 2").is_err());
        assert!(Scrape::parse("x 1\nx 2").is_err());
    }

    #[test]
    fn monotonic_catches_decrease_and_loss() {
        let base = Scrape::parse(A).unwrap();
        let same = monotonic(&base, &base);
        assert!(same.ok());
        assert_eq!(same.compared, 6);
        let later = Scrape::parse(
            &A.replace("\"user\"} 10.5", "\"user\"} 1")
                .replace("ctx_sample_duration_seconds_count 7\n", ""),
        )
        .unwrap();
        let m = monotonic(&base, &later);
        assert!(!m.ok());
        assert_eq!(m.decreased.len(), 1);
        assert_eq!(
            m.missing,
            vec!["ctx_sample_duration_seconds_count".to_owned()]
        );
        // A gauge may go down.
        let gauge_down = Scrape::parse(&A.replace("1.7e9", "1")).unwrap();
        assert!(monotonic(&base, &gauge_down).ok());
        let untyped = Scrape::parse("# TYPE x_total gauge\nx_total 1\n").unwrap();
        assert_eq!(
            monotonic(&untyped, &untyped).untyped_totals,
            vec!["x_total".to_owned()]
        );
    }
}
