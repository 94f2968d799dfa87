//! Figures and their two outputs: a table per scenario on stdout for people, and one JSON
//! object per figure appended to `--json FILE` for machines.
//!
//! A figure's `fsync_p50_ms` / `fsync_p99_ms` are the worse of the probes taken just before
//! and just after it (so a reader can keep only figures measured on a quiet disk); both
//! probes are also in `extra` as `fsync_before_*` and `fsync_after_*`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value as Json};

use crate::error::{Context, Result};
use crate::probe::{Fsync, FsyncPair};
use crate::server::CpuUsage;

/// Latency percentiles of one figure, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds; `None` when it is empty.
    pub fn from_micros(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
        Some(Latency { p50_ms: ms(0.50), p99_ms: ms(0.99), p999_ms: ms(0.999) })
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The scenario group, as named on the command line.
    pub scenario: &'static str,
    /// What was measured within the group, such as `32 publishers`.
    pub case: String,
    /// Operations completed (events acked, deliveries, pages read…).
    pub ops: u64,
    /// Wall time the operations took.
    pub seconds: f64,
    /// Per-call latency, when the figure has one.
    pub latency: Option<Latency>,
    /// The disk's fsync speed around a durable figure.
    pub fsync: Option<FsyncPair>,
    /// CPU the server and the bench used over the figure's measured window.
    pub cpu: Option<CpuUsage>,
    /// Everything else worth keeping, by name.
    pub extra: Map<String, Json>,
}

impl Figure {
    /// An empty figure of `scenario` for `case`.
    pub fn new(scenario: &'static str, case: impl Into<String>) -> Self {
        Figure {
            scenario,
            case: case.into(),
            ops: 0,
            seconds: 0.0,
            latency: None,
            fsync: None,
            cpu: None,
            extra: Map::new(),
        }
    }

    /// Adds one `extra` entry.
    pub fn with(mut self, key: &str, value: impl Into<Json>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Adds one `extra` entry in place.
    pub fn set(&mut self, key: &str, value: impl Into<Json>) {
        self.extra.insert(key.to_string(), value.into());
    }

    /// Operations per second, when the figure has a duration.
    pub fn ops_per_sec(&self) -> Option<f64> {
        (self.seconds > 0.0 && self.ops > 0).then(|| self.ops as f64 / self.seconds)
    }

    /// CPU µs per operation of the server and of the bench (`None` without operations or
    /// without a measurement).
    pub fn cpu_per_op(&self) -> (Option<f64>, Option<f64>) {
        let Some(cpu) = self.cpu.filter(|_| self.ops > 0) else {
            return (None, None);
        };
        let per_op = |seconds: Option<f64>| seconds.map(|s| s * 1e6 / self.ops as f64);
        (per_op(cpu.server_seconds), per_op(cpu.bench_seconds))
    }

    /// The figure as one JSON object (the `--json` line).
    pub fn to_json(&self) -> Json {
        let worst = self.fsync.as_ref().and_then(FsyncPair::worst);
        let mut extra = self.extra.clone();
        if let Some(pair) = &self.fsync {
            for (label, probe) in [("before", &pair.before), ("after", &pair.after)] {
                if let Some(p) = probe {
                    extra.insert(format!("fsync_{label}_p50_ms"), round(p.p50_ms).into());
                    extra.insert(format!("fsync_{label}_p99_ms"), round(p.p99_ms).into());
                }
            }
        }
        let (server_cpu, bench_cpu) = self.cpu_per_op();
        json!({
            "scenario": self.scenario,
            "case": self.case,
            "ops": self.ops,
            "seconds": round(self.seconds),
            "ops_per_sec": self.ops_per_sec().map(round),
            "p50_ms": self.latency.map(|l| round(l.p50_ms)),
            "p99_ms": self.latency.map(|l| round(l.p99_ms)),
            "p999_ms": self.latency.map(|l| round(l.p999_ms)),
            "fsync_p50_ms": worst.map(|f| round(f.p50_ms)),
            "fsync_p99_ms": worst.map(|f| round(f.p99_ms)),
            "server_cpu_us_per_op": server_cpu.map(round),
            "bench_cpu_us_per_op": bench_cpu.map(round),
            "extra": extra,
        })
    }
}

/// One scenario's output: its figures and the notes that say how they were taken.
#[derive(Debug, Default)]
pub struct Section {
    /// Figures in the order measured.
    pub figures: Vec<Figure>,
    /// Sentences printed under the table.
    pub notes: Vec<String>,
    /// Further tables printed after the notes (such as a comparison).
    pub tables: Vec<Table>,
}

/// A free-form table of text cells.
#[derive(Debug, Default)]
pub struct Table {
    /// Printed above it.
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Cells, row by row.
    pub rows: Vec<Vec<String>>,
}

impl Section {
    /// Adds a note.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

/// Where figures go.
pub struct Report {
    json: Option<(PathBuf, File)>,
    /// Fields added to every JSON line: which run the figure belongs to.
    stamp: Map<String, Json>,
}

impl Report {
    /// Opens `--json FILE` for appending, if given. Every line also carries `stamp` (the
    /// run's scale and start time), so lines of several runs in one file stay apart.
    pub fn open(json: Option<&Path>, stamp: Map<String, Json>) -> Result<Self> {
        let json = match json {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .context(format!("cannot open {} for appending", path.display()))?;
                Some((path.to_path_buf(), file))
            }
            None => None,
        };
        Ok(Report { json, stamp })
    }

    /// Prints a scenario's table and notes, and appends its JSON lines.
    pub fn emit(&mut self, title: &str, section: &Section) -> Result<()> {
        println!("\n== {title}");
        if !section.figures.is_empty() {
            print!("{}", table(&section.figures));
        }
        for note in &section.notes {
            println!("  note: {note}");
        }
        for extra in &section.tables {
            println!("\n  {}", extra.title);
            let header: Vec<&str> = extra.header.iter().map(String::as_str).collect();
            print!("{}", render(&header, &extra.rows));
        }
        let Some((path, file)) = &mut self.json else {
            return Ok(());
        };
        for figure in &section.figures {
            let mut line = figure.to_json();
            if let Json::Object(fields) = &mut line {
                fields.extend(self.stamp.clone());
            }
            writeln!(file, "{line}").context(format!("cannot write to {}", path.display()))?;
        }
        file.flush().context(format!("cannot write to {}", path.display()))
    }
}

/// The human table of a list of figures.
fn table(figures: &[Figure]) -> String {
    let header = [
        "case",
        "ops",
        "seconds",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "fsync p50 ms before/after",
        "server CPU µs/op",
        "bench CPU µs/op",
        "notes",
    ];
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            let (server_cpu, bench_cpu) = f.cpu_per_op();
            let latency = |pick: fn(&Latency) -> f64| {
                f.latency.as_ref().map_or("-".to_string(), |l| format_ms(pick(l)))
            };
            vec![
                f.case.clone(),
                f.ops.to_string(),
                format!("{:.2}", f.seconds),
                f.ops_per_sec().map_or("-".into(), |r| format!("{r:.0}")),
                latency(|l| l.p50_ms),
                latency(|l| l.p99_ms),
                latency(|l| l.p999_ms),
                f.fsync.as_ref().map_or("-".into(), FsyncPair::short),
                cpu_cell(server_cpu),
                cpu_cell(bench_cpu),
                notes(&f.extra),
            ]
        })
        .collect();
    render(&header, &rows)
}

/// A CPU-per-operation cell: `12.3`, or `-` when not measured.
fn cpu_cell(micros: Option<f64>) -> String {
    micros.map_or("-".into(), |us| if us < 10.0 { format!("{us:.2}") } else { format!("{us:.0}") })
}

/// Left-aligned text columns, padded to the widest cell.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// `extra` as `key=value` pairs for the table's last column.
fn notes(extra: &Map<String, Json>) -> String {
    extra
        .iter()
        .map(|(k, v)| match v {
            Json::Number(n) => match n.as_f64() {
                Some(x) if n.is_f64() => format!("{k}={}", format_ms(x)),
                _ => format!("{k}={n}"),
            },
            Json::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A millisecond figure with sensible precision: 0.123, 4.56, 78.9, 1234.
pub fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 1_000.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Rounds to 3 decimals for the JSON lines.
pub fn round(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

impl FsyncPair {
    /// The worse of the two probes, field by field (`None` if both failed).
    pub fn worst(&self) -> Option<Fsync> {
        match (self.before, self.after) {
            (Some(b), Some(a)) => Some(Fsync {
                p50_ms: b.p50_ms.max(a.p50_ms),
                p99_ms: b.p99_ms.max(a.p99_ms),
                samples: b.samples.min(a.samples),
            }),
            (b, a) => b.or(a),
        }
    }

    /// `0.18/0.21` for the table.
    fn short(&self) -> String {
        let one = |p: &Option<Fsync>| p.map_or("?".to_string(), |f| format_ms(f.p50_ms));
        format!("{}/{}", one(&self.before), one(&self.after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_becomes_one_json_object_with_every_field() {
        let mut figure = Figure::new("publish", "1 publisher").with("errors", 0);
        figure.ops = 100;
        figure.seconds = 2.0;
        let line = figure.to_json();
        assert_eq!(line["ops_per_sec"], 50.0);
        assert_eq!(line["extra"]["errors"], 0);
        figure.cpu = Some(CpuUsage {
            server_seconds: Some(0.01),
            bench_seconds: Some(0.002),
            wall_seconds: 2.0,
        });
        let line = figure.to_json();
        assert_eq!(line["server_cpu_us_per_op"], 100.0);
        assert_eq!(line["bench_cpu_us_per_op"], 20.0);
        for key in ["p50_ms", "p99_ms", "p999_ms", "fsync_p50_ms", "fsync_p99_ms"] {
            assert!(line.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn tables_pad_every_column() {
        let text = render(&["a", "bb"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(text, "  a     bb\n  ----  --\n  long  x\n");
    }
}
