//! The Prometheus text exposition format 0.0.4 (what `promtool check metrics` 2.42 reads):
//! `# HELP`, `# TYPE`, then one `name{label="value"} number` line per sample.
//!
//! Written here rather than with the `prometheus-client` crate, which writes OpenMetrics
//! only (its `info` type and `# EOF` are rejected by Debian's promtool), and rather than the
//! `prometheus` crate, whose registry of boxed collectors with their own atomics would
//! duplicate the counters the workers already keep. This writer is a string builder.

use std::fmt::Write;

use super::histogram::HistogramSnapshot;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The exposition being written; [`Exposition::finish`] gives the body.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family, written once before its samples.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.header(name, kind, help);
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One sample line: `name{a="x",b="y"} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels);
        self.out.push(' ');
        push_number(&mut self.out, value);
        self.out.push('\n');
    }

    /// A histogram family: cumulative `_bucket` lines ending with `le="+Inf"`, `_sum`, `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot) {
        self.header(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, count) in &snapshot.cumulative {
            let le = number(*bound);
            self.sample(&bucket, &[("le", &le)], *count as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], snapshot.count as f64);
        self.sample(&format!("{name}_sum"), &[], snapshot.sum_secs);
        self.sample(&format!("{name}_count"), &[], snapshot.count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        // HELP escapes only backslash and newline; label values also escape the quote.
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
        }
        self.out.push('}');
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Integers without a fraction (counters read best that way), others as Rust prints them,
/// which never uses an exponent and is what Go's ParseFloat reads back.
fn number(value: f64) -> String {
    let mut text = String::new();
    push_number(&mut text, value);
    text
}

fn push_number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_escaped_labels() {
        let mut exposition = Exposition::default();
        exposition.family("x_total", Kind::Counter, "Things, with a \\ and\na newline.");
        exposition.sample("x_total", &[("kind", "a\"b\\c\nd"), ("other", "e")], 3.0);
        exposition.single("y", Kind::Gauge, "A gauge.", 0.25);
        assert_eq!(
            exposition.finish(),
            "# HELP x_total Things, with a \\\\ and\\na newline.\n# TYPE x_total counter\n\
             x_total{kind=\"a\\\"b\\\\c\\nd\",other=\"e\"} 3\n\
             # HELP y A gauge.\n# TYPE y gauge\ny 0.25\n"
        );
    }

    #[test]
    fn histograms_end_with_inf_sum_and_count() {
        let snapshot = HistogramSnapshot { cumulative: vec![(0.005, 1), (1.0, 2)], count: 3, sum_secs: 7.5 };
        let mut exposition = Exposition::default();
        exposition.histogram("h_seconds", "Durations.", &snapshot);
        let text = exposition.finish();
        assert!(text.contains("# TYPE h_seconds histogram\n"));
        assert!(text.contains("h_seconds_bucket{le=\"0.005\"} 1\nh_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.ends_with("h_seconds_bucket{le=\"+Inf\"} 3\nh_seconds_sum 7.5\nh_seconds_count 3\n"));
    }

    #[test]
    fn numbers_print_without_exponents() {
        assert_eq!(number(1e-7), "0.0000001");
        assert_eq!(number(12345678.0), "12345678");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
