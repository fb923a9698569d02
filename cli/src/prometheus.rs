//! The Prometheus text exposition format, version 0.0.4 (what a node exporter's textfile
//! collector reads): metric families, each written as one group, `# HELP` then `# TYPE` then
//! all its samples, with help text and label values escaped as the format says. Which
//! metrics modctl prints is `commands::metrics`; this file knows only the format.

use std::fmt::Write;

/// A metric family's type. Only the two modctl uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A metric family: its name (a counter's ends in `_total`), type and one-line help.
#[derive(Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    /// Milliseconds, written as seconds with three decimals (`1234` is `1.234`), exactly.
    Millis(u64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Millis(ms) => write!(f, "{}.{:03}", ms / 1000, ms % 1000),
        }
    }
}

struct Family {
    metric: &'static Metric,
    /// Each sample's labels, already written as `{a="x",b="y"}` (empty without labels).
    samples: Vec<(String, Value)>,
}

/// Samples gathered in any order, written family by family: the families of `with_families`
/// in that order, then any other in the order it was first used.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// An exposition that writes these families first, in this order (those with samples).
    pub fn with_families(order: &[&'static Metric]) -> Self {
        Exposition { families: order.iter().map(|&metric| Family { metric, samples: Vec::new() }).collect() }
    }

    /// A sample of `metric` with these labels (names as given, values escaped here).
    pub fn sample(&mut self, metric: &'static Metric, labels: &[(&str, &str)], value: Value) {
        debug_assert!(valid_metric(metric).is_ok(), "{:?}", valid_metric(metric));
        let mut text = String::new();
        if !labels.is_empty() {
            text.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                debug_assert!(valid_label_name(name), "label {name}");
                if i > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{name}=\"{}\"", escape_label_value(value));
            }
            text.push('}');
        }
        let i = match self.families.iter().position(|f| f.metric.name == metric.name) {
            Some(i) => i,
            None => {
                self.families.push(Family { metric, samples: Vec::new() });
                self.families.len() - 1
            }
        };
        self.families[i].samples.push((text, value));
    }

    /// The whole exposition; every line ends with a line feed. A family without samples is
    /// left out; empty when there is no sample.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let m = f.metric;
            let _ = writeln!(out, "# HELP {} {}", m.name, escape_help(m.help));
            let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind.as_str());
            for (labels, value) in &f.samples {
                let _ = writeln!(out, "{}{labels} {value}", m.name);
            }
        }
        out
    }
}

/// A label value between its double quotes: `\` as `\\`, `"` as `\"`, a line feed as `\n`.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text: `\` as `\\` and a line feed as `\n` (quotes stay as they are).
pub fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a family is named as the format and its conventions want: a valid name with
/// modctl's `switchboard_` prefix, `_total` on a counter and only on a counter, one-line help.
pub fn valid_metric(m: &Metric) -> Result<(), String> {
    if !valid_metric_name(m.name) || !m.name.starts_with("switchboard_") {
        return Err(format!("{}: not a valid metric name with the switchboard_ prefix", m.name));
    }
    if (m.kind == Kind::Counter) != m.name.ends_with("_total") {
        return Err(format!("{}: a counter's name ends in _total, and only a counter's", m.name));
    }
    if m.help.is_empty() || m.help.contains('\n') {
        return Err(format!("{}: the help is one line", m.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static IN: Metric = Metric { name: "switchboard_test_in_total", kind: Kind::Counter, help: "In \\ out" };
    static UP: Metric = Metric { name: "switchboard_test_up", kind: Kind::Gauge, help: "Up \"or\" down" };

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed_and_help_backslash_and_line_feed() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("two\nlines"), r"two\nlines");
        assert_eq!(escape_label_value("tab\tand é"), "tab\tand é");
        assert_eq!(escape_help("a \\ \"b\"\nc"), "a \\\\ \"b\"\\nc");
    }

    #[test]
    fn each_family_is_one_group_with_one_help_and_one_type_whatever_the_order_of_samples() {
        let mut e = Exposition::default();
        e.sample(&IN, &[("rank", "0"), ("module", "kvs")], Value::Int(3));
        e.sample(&UP, &[("rank", "0")], Value::Int(1));
        e.sample(&IN, &[("rank", "1"), ("module", "a\"b\\c\nd")], Value::Int(0));
        e.sample(&UP, &[], Value::Millis(1234));
        let text = e.render();
        assert_eq!(
            text,
            "# HELP switchboard_test_in_total In \\\\ out\n\
             # TYPE switchboard_test_in_total counter\n\
             switchboard_test_in_total{rank=\"0\",module=\"kvs\"} 3\n\
             switchboard_test_in_total{rank=\"1\",module=\"a\\\"b\\\\c\\nd\"} 0\n\
             # HELP switchboard_test_up Up \"or\" down\n\
             # TYPE switchboard_test_up gauge\n\
             switchboard_test_up{rank=\"0\"} 1\n\
             switchboard_test_up 1.234\n"
        );
        assert_eq!(Exposition::default().render(), "");
    }

    #[test]
    fn declared_families_come_first_in_their_order_and_empty_ones_are_left_out() {
        let mut e = Exposition::with_families(&[&UP, &IN]);
        e.sample(&IN, &[], Value::Int(1));
        assert!(e.render().starts_with("# HELP switchboard_test_in_total"), "{}", e.render());
        e.sample(&UP, &[], Value::Int(1));
        let text = e.render();
        assert!(text.starts_with("# HELP switchboard_test_up "), "{text}");
        assert_eq!(text.matches("# TYPE").count(), 2);
    }

    #[test]
    fn milliseconds_are_exact_seconds() {
        assert_eq!(Value::Millis(0).to_string(), "0.000");
        assert_eq!(Value::Millis(5).to_string(), "0.005");
        assert_eq!(Value::Millis(61_010).to_string(), "61.010");
        assert_eq!(Value::Int(u64::MAX).to_string(), "18446744073709551615");
    }

    #[test]
    fn names_follow_the_format_and_its_conventions() {
        assert!(valid_metric(&IN).is_ok() && valid_metric(&UP).is_ok());
        let two_lines = Metric { name: "switchboard_x", kind: Kind::Gauge, help: "a\nb" };
        assert!(valid_metric(&two_lines).is_err());
        let bad = [
            Metric { name: "switchboard_x", kind: Kind::Counter, help: "x" },
            Metric { name: "switchboard_x_total", kind: Kind::Gauge, help: "x" },
            Metric { name: "other_x", kind: Kind::Gauge, help: "x" },
            Metric { name: "switchboard-x", kind: Kind::Gauge, help: "x" },
        ];
        for m in &bad {
            assert!(valid_metric(m).is_err(), "{m:?}");
        }
        assert!(valid_label_name("module") && valid_label_name("_x1"));
        assert!(!valid_label_name("__name__") && !valid_label_name("1x") && !valid_label_name("a-b"));
    }
}
