//! Clock, latency histograms, broker process statistics from /proc, and
//! the result table / JSON line.

use std::{
    io::Write,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-wide epoch. Publishers and subscribers
/// share the process, hence the clock: the timestamp in a body is directly
/// comparable with the receive time.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The `Instant` at `ns` on the [`now_ns`] clock.
pub fn instant_at(ns: u64) -> Instant {
    *EPOCH.get_or_init(Instant::now) + Duration::from_nanos(ns)
}

/// A latency histogram in nanoseconds, 1 ns ..= 120 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

/// One measurement window on the [`now_ns`] clock: deliveries are counted
/// when they arrive inside it, latencies are recorded for messages whose
/// (scheduled) send time lies inside it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Start (ns).
    pub start: u64,
    /// End (ns, exclusive).
    pub end: u64,
}

/// What a group of subscriber connections measured, per window.
pub struct Measured {
    /// Latency per window.
    pub hist: Vec<Histogram<u64>>,
    /// Deliveries that arrived inside each window.
    pub count: Vec<u64>,
    /// Deliveries in total (any time).
    pub total: u64,
    /// ERROR frames received, and the first one's text.
    pub errors: u64,
    /// First error seen (ERROR frame or I/O), if any.
    pub first_error: Option<String>,
    /// Connections that were closed by the broker before the end.
    pub closed: u64,
    /// Reads that brought data: WebSocket messages on WebSocket (the
    /// broker may pack several frames into one), socket reads on TCP.
    pub reads: u64,
}

impl Measured {
    /// Empty results for `windows` windows.
    pub fn new(windows: usize) -> Measured {
        Measured {
            hist: (0..windows).map(|_| new_hist()).collect(),
            count: vec![0; windows],
            total: 0,
            errors: 0,
            first_error: None,
            closed: 0,
            reads: 0,
        }
    }

    /// Records one delivery stamped `sent` and received at `recv`.
    #[inline]
    pub fn record(&mut self, windows: &[Window], sent: u64, recv: u64) {
        self.total += 1;
        for (i, w) in windows.iter().enumerate() {
            if recv >= w.start && recv < w.end {
                self.count[i] += 1;
            }
            if sent >= w.start && sent < w.end {
                let _ = self.hist[i].record(recv.saturating_sub(sent).max(1));
            }
        }
    }

    /// Notes an error.
    pub fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    /// Adds another group's results.
    pub fn merge(&mut self, other: &Measured) {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            let _ = a.add(b);
        }
        for (a, b) in self.count.iter_mut().zip(&other.count) {
            *a += b;
        }
        self.total += other.total;
        self.errors += other.errors;
        self.closed += other.closed;
        self.reads += other.reads;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// CPU time and resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Samples `pid` ("self" for the generator). `None` when unreadable.
pub fn sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes the command name; utime and stime
    // are fields 14 and 15 of the whole line, i.e. 12 and 13 after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_s: (utime + stime) / clk_tck(),
        rss_kib,
    })
}

/// Samples the broker (if `--broker-pid` was given) and the generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Wall clock (ns, [`now_ns`]).
    pub at: u64,
    /// Broker process.
    pub broker: Option<ProcSample>,
    /// This process.
    pub gen: Option<ProcSample>,
}

/// Takes a [`Snapshot`].
pub fn snapshot(broker_pid: Option<u32>) -> Snapshot {
    Snapshot {
        at: now_ns(),
        broker: broker_pid.and_then(|p| sample(&p.to_string())),
        gen: sample("self"),
    }
}

/// Latency percentiles in microseconds.
pub fn percentiles(h: &Histogram<u64>) -> (f64, f64, f64, f64) {
    if h.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let us = |v: u64| v as f64 / 1000.0;
    (
        us(h.value_at_quantile(0.50)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
    )
}

/// One result row: ordered key/value pairs, printed as a table and
/// appended as a JSON line to `--json`.
#[derive(Default)]
pub struct Row(pub Vec<(String, Value)>);

impl Row {
    /// Adds a field.
    pub fn put(&mut self, k: &str, v: impl Into<Value>) -> &mut Row {
        self.0.push((k.to_string(), v.into()));
        self
    }

    /// Adds the standard latency columns (µs) from a histogram.
    pub fn latency(&mut self, prefix: &str, h: &Histogram<u64>) -> &mut Row {
        let (p50, p99, p999, max) = percentiles(h);
        self.put(&format!("{prefix}p50_us"), round(p50))
            .put(&format!("{prefix}p99_us"), round(p99))
            .put(&format!("{prefix}p999_us"), round(p999))
            .put(&format!("{prefix}max_us"), round(max))
    }

    /// Adds broker CPU and memory columns for a measurement between two
    /// snapshots; `deliveries` gives CPU per million deliveries and
    /// deliveries per broker CPU-second, and
    /// `conns`/`base_rss` give memory per connection.
    pub fn resources(
        &mut self,
        a: &Snapshot,
        b: &Snapshot,
        deliveries: u64,
        conns: u64,
        base_rss_kib: Option<u64>,
    ) -> &mut Row {
        let secs = (b.at.saturating_sub(a.at)) as f64 / 1e9;
        if let (Some(x), Some(y)) = (a.broker, b.broker) {
            let cpu = y.cpu_s - x.cpu_s;
            self.put("broker_cpu_pct", round(100.0 * cpu / secs.max(1e-9)));
            if deliveries > 0 {
                self.put(
                    "broker_cpu_s_per_m",
                    round3(cpu / (deliveries as f64 / 1e6)),
                );
                // The figure that does not depend on how many cores the
                // broker had (utime + stime from /proc/<pid>/stat).
                self.put(
                    "deliveries_per_cpu_s",
                    round(deliveries as f64 / cpu.max(1e-9)),
                );
            }
            self.put("broker_rss_mib", round(y.rss_kib as f64 / 1024.0));
            if let Some(base) = base_rss_kib {
                if conns > 0 {
                    self.put(
                        "broker_kib_per_conn",
                        round3(y.rss_kib.saturating_sub(base) as f64 / conns as f64),
                    );
                }
            }
        }
        if let (Some(x), Some(y)) = (a.gen, b.gen) {
            self.put(
                "gen_cpu_pct",
                round(100.0 * (y.cpu_s - x.cpu_s) / secs.max(1e-9)),
            );
        }
        self
    }

    /// Prints the row as a two-column table and appends it to `json`.
    pub fn emit(&self, json_path: Option<&std::path::Path>) -> Result<()> {
        let width = self.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{:-<1$}", "", width + 20)?;
        for (k, v) in &self.0 {
            let shown = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            writeln!(out, "{k:<width$}  {shown}")?;
        }
        writeln!(out, "{:-<1$}", "", width + 20)?;
        if let Some(p) = json_path {
            let map: Map<String, Value> = self.0.iter().cloned().collect();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            writeln!(f, "{}", json!(map))?;
        }
        Ok(())
    }
}

/// Rounds to one decimal (NaN becomes null in JSON).
pub fn round(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 10.0).round() / 10.0)
    } else {
        Value::Null
    }
}

/// Rounds to three decimals.
pub fn round3(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}
