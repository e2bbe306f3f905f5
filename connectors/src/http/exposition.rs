//! A strict reader of the Prometheus text exposition format (version 0.0.4), so tests and
//! tools check what a scraper would see: names and labels by the format's grammar, one
//! `# TYPE` per family before its samples, samples of a family together and each once,
//! counters with `_total`, histograms with ascending `le`, cumulative buckets and a `+Inf`
//! bucket equal to `_count`. Anything else is an error naming the line.

use std::collections::HashSet;

/// Label pairs in the order they were written.
pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: Type,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// One histogram series: cumulative `(le, count)` buckets, sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSeries {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl HistogramSeries {
    /// The cumulative count of the bucket with upper bound `le`.
    pub fn bucket(&self, le: f64) -> Option<f64> {
        self.buckets.iter().find(|(b, _)| *b == le).map(|(_, c)| *c)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exposition {
    pub families: Vec<Family>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.families.iter().flat_map(|f| f.samples.iter())
    }

    /// The value of the sample `name` whose labels are exactly `labels` (any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples()
            .find(|s| s.name == name && same_labels(&s.labels, labels))
            .map(|s| s.value)
    }

    /// The histogram series of `family` with exactly `labels` besides `le`.
    pub fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> Option<HistogramSeries> {
        let f = self.family(family).filter(|f| f.kind == Type::Histogram)?;
        let bucket_name = format!("{family}_bucket");
        let buckets = f
            .samples
            .iter()
            .filter(|s| s.name == bucket_name)
            .filter_map(|s| {
                let (le, rest) = split_le(&s.labels)?;
                same_labels(&rest, labels).then_some((le, s.value))
            })
            .collect::<Vec<_>>();
        Some(HistogramSeries {
            sum: self.value(&format!("{family}_sum"), labels)?,
            count: self.value(&format!("{family}_count"), labels)?,
            buckets: (!buckets.is_empty()).then_some(buckets)?,
        })
    }
}

fn same_labels(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

fn split_le(labels: &[(String, String)]) -> Option<(f64, Vec<(String, String)>)> {
    let le = labels.iter().find(|(k, _)| k == "le")?;
    let rest = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
    Some((parse_value(&le.1)?, rest))
}

pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut p = Parser::default();
    for (i, line) in text.lines().enumerate() {
        p.line(i + 1, line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?;
    }
    p.finish(text.lines().count())
}

#[derive(Default)]
struct Parser {
    out: Exposition,
    /// Families already closed (a later sample of theirs would be out of place).
    closed: HashSet<String>,
    seen: HashSet<(String, Vec<(String, String)>)>,
    pending_help: Option<(String, String)>,
}

impl Parser {
    fn line(&mut self, _n: usize, line: &str) -> Result<(), String> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            check_metric_name(name)?;
            self.pending_help = Some((name.to_string(), unescape_help(help)));
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            return self.type_line(rest);
        }
        if line.starts_with('#') {
            return Ok(()); // a comment
        }
        self.sample(line)
    }

    fn type_line(&mut self, rest: &str) -> Result<(), String> {
        let (name, kind) = rest.split_once(' ').ok_or("TYPE without a type")?;
        check_metric_name(name)?;
        let kind = match kind {
            "counter" => Type::Counter,
            "gauge" => Type::Gauge,
            "histogram" => Type::Histogram,
            "summary" => Type::Summary,
            "untyped" => Type::Untyped,
            other => return Err(format!("unknown type `{other}`")),
        };
        if self.out.family(name).is_some() || self.closed.contains(name) {
            return Err(format!("second TYPE for `{name}`"));
        }
        if kind == Type::Counter && !name.ends_with("_total") {
            return Err(format!("counter `{name}` does not end in `_total`"));
        }
        let help = match self.pending_help.take() {
            Some((h, text)) if h == name => Some(text),
            Some((h, _)) => return Err(format!("HELP for `{h}` followed by TYPE for `{name}`")),
            None => None,
        };
        self.open(Family {
            name: name.to_string(),
            kind,
            help,
            samples: Vec::new(),
        });
        Ok(())
    }

    fn open(&mut self, family: Family) {
        if let Some(prev) = self.out.families.last() {
            self.closed.insert(prev.name.clone());
        }
        self.out.families.push(family);
    }

    fn sample(&mut self, line: &str) -> Result<(), String> {
        let s = parse_sample(line)?;
        let family = self
            .out
            .families
            .last()
            .filter(|f| belongs(&s.name, f))
            .map(|f| f.name.clone());
        let family = match family {
            Some(f) => f,
            None => {
                if self.closed.contains(&s.name) || self.out.family(&s.name).is_some() {
                    return Err(format!("sample `{}` apart from its family", s.name));
                }
                // A sample with no TYPE line is an untyped family of its own.
                self.open(Family {
                    name: s.name.clone(),
                    kind: Type::Untyped,
                    help: None,
                    samples: Vec::new(),
                });
                s.name.clone()
            }
        };
        if !self.seen.insert((s.name.clone(), sorted(&s.labels))) {
            return Err(format!("duplicate sample `{}` {:?}", s.name, s.labels));
        }
        let f = self.out.families.last_mut().expect("opened above");
        debug_assert_eq!(f.name, family);
        f.samples.push(s);
        Ok(())
    }

    fn finish(self, lines: usize) -> Result<Exposition, ParseError> {
        for f in &self.out.families {
            if f.kind == Type::Histogram {
                check_histogram(f).map_err(|message| ParseError {
                    line: lines,
                    message,
                })?;
            }
        }
        Ok(self.out)
    }
}

fn sorted(labels: &[(String, String)]) -> Vec<(String, String)> {
    let mut l = labels.to_vec();
    l.sort();
    l
}

/// Whether sample `name` is one of family `f`'s series names.
fn belongs(name: &str, f: &Family) -> bool {
    let suffixes: &[&str] = match f.kind {
        Type::Counter | Type::Gauge | Type::Untyped => &[""],
        Type::Histogram => &["_bucket", "_sum", "_count"],
        Type::Summary => &["", "_sum", "_count"],
    };
    suffixes
        .iter()
        .any(|s| name.strip_suffix(s) == Some(f.name.as_str()))
}

fn check_histogram(f: &Family) -> Result<(), String> {
    let bucket_name = format!("{}_bucket", f.name);
    let mut series: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    for s in f.samples.iter().filter(|s| s.name == bucket_name) {
        let (le, rest) = split_le(&s.labels)
            .ok_or_else(|| format!("bucket of `{}` without a valid `le`", f.name))?;
        let rest = sorted(&rest);
        match series.iter_mut().find(|(l, _)| *l == rest) {
            Some((_, b)) => b.push((le, s.value)),
            None => series.push((rest, vec![(le, s.value)])),
        }
    }
    for (labels, buckets) in &series {
        for w in buckets.windows(2) {
            if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
                return Err(format!(
                    "`{}` {labels:?}: buckets not ascending and cumulative at le={}",
                    f.name, w[1].0
                ));
            }
        }
        let last = buckets.last().expect("one bucket at least");
        if last.0 != f64::INFINITY {
            return Err(format!("`{}` {labels:?}: no +Inf bucket", f.name));
        }
        let want: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let count = f
            .samples
            .iter()
            .find(|s| s.name == format!("{}_count", f.name) && same_labels(&s.labels, &want))
            .ok_or_else(|| format!("`{}` {labels:?}: no _count", f.name))?;
        if count.value != last.1 {
            return Err(format!(
                "`{}` {labels:?}: +Inf bucket {} != count {}",
                f.name, last.1, count.value
            ));
        }
    }
    Ok(())
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let ok = name.chars().enumerate().all(|(i, c)| {
        c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
    });
    if ok && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid metric name `{name}`"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if ok && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid label name `{name}`"))
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

fn unescape_help(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\\\", "\\")
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value in `{line}`"))?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let mut parts = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = parts.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("invalid value `{value}`"))?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("invalid timestamp `{ts}`"))?;
    }
    if parts.next().is_some() {
        return Err("trailing text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"}` → the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let key = &s[..eq];
        check_label_name(key)?;
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("label `{key}` twice"));
        }
        let (value, rest) = quoted(&s[eq + 1..])?;
        labels.push((key.to_string(), value));
        s = rest.strip_prefix(',').unwrap_or(rest);
        if !rest.starts_with(',') && !rest.starts_with('}') {
            return Err("labels not separated by `,`".into());
        }
    }
}

/// `"..."` with `\\`, `\"`, `\n` escapes → the value and what follows.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let body = s.strip_prefix('"').ok_or("label value not quoted")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('n') => out.push('\n'),
                other => return Err(format!("invalid escape `\\{}`", other.unwrap_or(' '))),
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP up_total Things.\n# TYPE up_total counter\nup_total 3\n\
# TYPE lat histogram\nlat_bucket{stage=\"a\",le=\"0.1\"} 1\nlat_bucket{stage=\"a\",le=\"+Inf\"} 2\n\
lat_sum{stage=\"a\"} 0.3\nlat_count{stage=\"a\"} 2\n# TYPE g gauge\ng{p=\"x \\\"q\\\"\"} -1.5e3\n";

    #[test]
    fn reads_a_valid_exposition() {
        let e = parse(GOOD).unwrap();
        assert_eq!(e.value("up_total", &[]), Some(3.0));
        assert_eq!(
            e.family("up_total").unwrap().help.as_deref(),
            Some("Things.")
        );
        let h = e.histogram("lat", &[("stage", "a")]).unwrap();
        assert_eq!((h.count, h.sum, h.bucket(0.1)), (2.0, 0.3, Some(1.0)));
        assert_eq!(e.value("g", &[("p", "x \"q\"")]), Some(-1500.0));
    }

    #[test]
    fn rejects_what_a_scraper_would() {
        let bad = [
            ("# TYPE up counter\nup 1\n", "_total"),
            ("# TYPE a gauge\na 1\n# TYPE a gauge\n", "second TYPE"),
            ("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n", "apart from its family"),
            ("a 1\na 2\n", "duplicate"),
            ("a{x=1} 1\n", "not quoted"),
            ("a{x=\"1\" 1\n", "separated"),
            ("1a 1\n", "invalid metric name"),
            ("a one\n", "invalid value"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "cumulative"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "+Inf"),
            ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n", "!= count"),
        ];
        for (text, why) in bad {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
