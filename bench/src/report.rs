//! What a `sipbench uac` run measured, and the ways it is written out: the
//! per-second progress line, the final table, the `--json` summary, the
//! `--csv` file in SIPp's `-trace_stat` layout, and the `--hdr-log`
//! HdrHistogram interval log.
//!
//! Latencies are recorded in microseconds from the *intended* send time of the
//! request, so a stalled server cannot hide its stalls.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

/// A latency histogram in microseconds, 1 µs to 120 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("invariant: valid histogram bounds")
}

/// Counts of what happened to the calls (a "call" is one scenario run: a call, a
/// registration or an OPTIONS query).
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Calls started.
    pub attempted: u64,
    /// Calls that ended as the scenario expects.
    pub ok: u64,
    /// Calls that got a final error response (counted by code in `failures_by_code`).
    pub failed: u64,
    /// Calls given up after 64·T1 without a final response.
    pub timed_out: u64,
    /// Requests sent again on timers A and E (UDP only).
    pub retransmissions: u64,
    /// Failed calls by the status code that failed them.
    pub failures_by_code: BTreeMap<u16, u64>,
}

impl Counts {
    /// Adds `other` into these counts.
    pub fn add(&mut self, other: &Counts) {
        self.attempted += other.attempted;
        self.ok += other.ok;
        self.failed += other.failed;
        self.timed_out += other.timed_out;
        self.retransmissions += other.retransmissions;
        for (code, n) in &other.failures_by_code {
            *self.failures_by_code.entry(*code).or_default() += n;
        }
    }

    /// Records a call failed by `code`.
    pub fn fail(&mut self, code: u16) {
        self.failed += 1;
        *self.failures_by_code.entry(code).or_default() += 1;
    }
}

/// One latency histogram per measured exchange.
#[derive(Clone, Debug)]
pub struct Measures {
    /// INVITE → 100 Trying.
    pub invite_100: Histogram<u64>,
    /// INVITE → 180 Ringing.
    pub invite_180: Histogram<u64>,
    /// INVITE → 200 OK: call setup.
    pub setup: Histogram<u64>,
    /// BYE → 200 OK.
    pub bye: Histogram<u64>,
    /// REGISTER → 200 OK (a digest challenge's round trip included).
    pub register: Histogram<u64>,
    /// OPTIONS → 200 OK.
    pub options: Histogram<u64>,
}

impl Default for Measures {
    fn default() -> Self {
        Measures {
            invite_100: histogram(),
            invite_180: histogram(),
            setup: histogram(),
            bye: histogram(),
            register: histogram(),
            options: histogram(),
        }
    }
}

impl Measures {
    /// The histograms with their names: (table label, JSON key, HdrHistogram log tag).
    pub fn named(&self) -> [(&'static str, &'static str, &'static str, &Histogram<u64>); 6] {
        [
            ("INVITE->100", "invite_100_ms", "invite_100", &self.invite_100),
            ("INVITE->180", "invite_180_ms", "invite_180", &self.invite_180),
            ("INVITE->200", "setup_ms", "setup", &self.setup),
            ("BYE->200", "bye_ms", "bye", &self.bye),
            ("REGISTER->200", "register_ms", "register", &self.register),
            ("OPTIONS->200", "options_ms", "options", &self.options),
        ]
    }

    /// Adds `other` into these histograms.
    pub fn add(&mut self, other: &Measures) -> Result<()> {
        self.invite_100.add(&other.invite_100).context("merging histograms")?;
        self.invite_180.add(&other.invite_180).context("merging histograms")?;
        self.setup.add(&other.setup).context("merging histograms")?;
        self.bye.add(&other.bye).context("merging histograms")?;
        self.register.add(&other.register).context("merging histograms")?;
        self.options.add(&other.options).context("merging histograms")?;
        Ok(())
    }
}

/// Percentile of a histogram in milliseconds.
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The whole run's results.
#[derive(Clone, Debug)]
pub struct Report {
    /// What happened to the calls.
    pub counts: Counts,
    /// The latencies.
    pub measures: Measures,
    /// From the start to the last call ended (well or not).
    pub elapsed: Duration,
    /// From the start to the last call that ended well (a tail of timeouts does not dilute
    /// the rate).
    pub busy: Duration,
}

impl Report {
    /// Calls that ended well per second, over the time until the last one did.
    pub fn calls_per_s(&self) -> f64 {
        self.counts.ok as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    /// The `--json` summary.
    pub fn json(&self) -> serde_json::Value {
        let c = &self.counts;
        let mut json = serde_json::json!({
            "calls_attempted": c.attempted,
            "calls_ok": c.ok,
            "calls_failed": c.failed,
            "calls_timed_out": c.timed_out,
            "calls_per_s": self.calls_per_s(),
            "retransmissions": c.retransmissions,
            "failures_by_code": c.failures_by_code.iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect::<serde_json::Map<_, _>>(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "busy_s": self.busy.as_secs_f64(),
        });
        for (_, key, _, h) in self.measures.named() {
            json[key] = serde_json::json!({
                "count": h.len(), "p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99),
                "p999": ms(h, 0.999), "max": h.max() as f64 / 1000.0,
            });
        }
        json
    }

    /// The final table: counts, then percentiles of every measure that has samples.
    pub fn table(&self) -> String {
        let c = &self.counts;
        let mut out = format!(
            "calls: attempted {}  ok {}  failed {}  timed out {}  retransmissions {}  {:.1} calls/s over {:.1} s (run {:.1} s)\n",
            c.attempted,
            c.ok,
            c.failed,
            c.timed_out,
            c.retransmissions,
            self.calls_per_s(),
            self.busy.as_secs_f64(),
            self.elapsed.as_secs_f64()
        );
        for (code, n) in &c.failures_by_code {
            out += &format!("  failed with {code}: {n}\n");
        }
        out += &format!(
            "{:<14} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "ms", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, _, _, h) in self.measures.named().into_iter().filter(|(_, _, _, h)| !h.is_empty()) {
            out += &format!(
                "{name:<14} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                h.len(),
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                ms(h, 0.999),
                h.max() as f64 / 1000.0
            );
        }
        out
    }
}

/// One second (or the last part of one) of a run, from every generator thread together.
#[derive(Clone, Debug, Default)]
pub struct Interval {
    /// Seconds since the start: this interval covers `[index, index + 1)`.
    pub index: u64,
    /// What happened in it.
    pub counts: Counts,
    /// Latencies of exchanges that completed in it.
    pub measures: Measures,
    /// Calls in progress at its end.
    pub active: u64,
    /// Calls per second the schedule asked for in it.
    pub target_rate: f64,
    /// Its length (the last interval may be short).
    pub length: Duration,
    /// When the last call that ended well did, since the start.
    pub last_ok: Duration,
}

impl Interval {
    /// The progress line printed every second.
    pub fn progress_line(&self, total: &Counts) -> String {
        let c = &self.counts;
        format!(
            "{:>5}s  target {:>8.1}  calls/s {:>8.1}  active {:>6}  ok {:>8}  failed {:>5}  timed out {:>5}  retrans {:>6}  setup p50 {:.2} ms p99 {:.2} ms",
            self.index + 1,
            self.target_rate,
            c.ok as f64 / self.length.as_secs_f64().max(1e-9),
            self.active,
            total.ok,
            total.failed,
            total.timed_out,
            total.retransmissions,
            ms(&self.measures.setup, 0.5),
            ms(&self.measures.setup, 0.99),
        )
    }
}

/// The `--csv` file: SIPp's `-trace_stat` layout (`;`-separated, `(P)` for the
/// period, `(C)` for cumulative), so scripts written for SIPp read it.
pub struct CsvWriter {
    out: std::io::BufWriter<std::fs::File>,
    started: SystemTime,
}

/// The CSV header, SIPp's column names first, then sipbench's percentiles.
const CSV_HEADER: &str = "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);TargetRate;\
CallRate(P);CallRate(C);OutgoingCall(P);OutgoingCall(C);TotalCallCreated;CurrentCall;\
SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);FailedMaxUDPRetrans(P);FailedMaxUDPRetrans(C);\
FailedCallRejected(P);FailedCallRejected(C);Retransmissions(P);Retransmissions(C);\
ResponseTime1(P);ResponseTime1(C);SetupP50(P);SetupP99(P);SetupP99(C);ByeP99(C);RegisterP99(C);OptionsP99(C)";

impl CsvWriter {
    /// Creates `path` and writes the header.
    pub fn create(path: &std::path::Path, started: SystemTime) -> Result<CsvWriter> {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "{CSV_HEADER}")?;
        Ok(CsvWriter { out, started })
    }

    /// Writes one row: `interval`'s period figures and the cumulative ones in `total`.
    pub fn row(&mut self, interval: &Interval, total: &Report) -> Result<()> {
        let now = self.started + Duration::from_secs(interval.index) + interval.length;
        let (p, c) = (&interval.counts, &total.counts);
        let secs = |d: Duration| d.as_secs_f64().max(1e-9);
        let mean_ms = |h: &Histogram<u64>| h.mean() / 1000.0;
        let period_start = self.started + Duration::from_secs(interval.index);
        writeln!(
            self.out,
            "{};{};{};{};{};{:.3};{:.3};{:.3};{};{};{};{};{};{};{};{};{};{};{};{};{};{};{:.3};{:.3};{:.3};{:.3};{:.3};{:.3};{:.3};{:.3}",
            timestamp(self.started),
            timestamp(period_start),
            timestamp(now),
            hms(interval.length),
            hms(total.elapsed),
            interval.target_rate,
            p.attempted as f64 / secs(interval.length),
            c.attempted as f64 / secs(total.elapsed),
            p.attempted,
            c.attempted,
            c.attempted,
            interval.active,
            p.ok,
            c.ok,
            p.failed + p.timed_out,
            c.failed + c.timed_out,
            p.timed_out,
            c.timed_out,
            p.failed,
            c.failed,
            p.retransmissions,
            c.retransmissions,
            mean_ms(&interval.measures.setup),
            mean_ms(&total.measures.setup),
            ms(&interval.measures.setup, 0.5),
            ms(&interval.measures.setup, 0.99),
            ms(&total.measures.setup, 0.99),
            ms(&total.measures.bye, 0.99),
            ms(&total.measures.register, 0.99),
            ms(&total.measures.options, 0.99),
        )?;
        self.out.flush()?;
        Ok(())
    }
}

/// SIPp's time stamp: date, time and epoch seconds, tab-separated.
fn timestamp(at: SystemTime) -> String {
    let epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}\t{:02}:{:02}:{:02}.{:06}\t{}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        epoch.subsec_micros(),
        secs,
        epoch.subsec_micros()
    )
}

/// `HH:MM:SS`, as SIPp writes elapsed times.
fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// Year, month and day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The `--hdr-log` file: an HdrHistogram interval log (V2, compressed), one tagged
/// histogram per measure and second, readable by `HistogramLogProcessor` and the
/// other standard log tools. Values are microseconds.
pub struct HdrLogWriter {
    out: std::fs::File,
    /// Whether the header lines are written.
    begun: bool,
    started: SystemTime,
}

impl HdrLogWriter {
    /// Starts a log at `path`.
    pub fn create(path: &std::path::Path, started: SystemTime) -> Result<HdrLogWriter> {
        let out = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(HdrLogWriter { out, begun: false, started })
    }

    /// Appends `interval`'s histograms (the empty ones are left out).
    pub fn write(&mut self, interval: &Interval) -> Result<()> {
        let mut serializer = V2DeflateSerializer::new();
        let mut chunk = Vec::new();
        {
            let mut builder = IntervalLogWriterBuilder::new();
            if !self.begun {
                builder.add_comment("sipbench latencies in microseconds (-outputValueUnitRatio 1000 for ms)");
            }
            let mut log = builder
                .with_start_time(self.started)
                .with_base_time(self.started)
                .with_max_value_divisor(1000.0)
                .begin_log_with(&mut chunk, &mut serializer)?;
            for (_, _, tag, h) in interval.measures.named().into_iter().filter(|(_, _, _, h)| !h.is_empty()) {
                log.write_histogram(h, Duration::from_secs(interval.index), interval.length, Tag::new(tag))
                    .map_err(|e| anyhow::anyhow!("writing the HdrHistogram log: {e:?}"))?;
            }
        }
        // Every chunk repeats the header lines; keep them only in the first.
        if self.begun {
            for line in chunk.split_inclusive(|&b| b == b'\n').filter(|l| !l.starts_with(b"#") && !l.starts_with(b"\""))
            {
                self.out.write_all(line)?;
            }
        } else {
            self.out.write_all(&chunk)?;
            self.begun = true;
        }
        self.out.flush().context("writing the HdrHistogram log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn hdr_log_reads_back_with_tags_and_counts() {
        let dir = std::env::temp_dir().join(format!("sipbench-hdr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("log.hlog");
        let mut log = HdrLogWriter::create(&path, SystemTime::now()).expect("create");
        for index in 0..3 {
            let mut interval = Interval { index, length: Duration::from_secs(1), ..Interval::default() };
            for v in 1..=100 {
                interval.measures.setup.record(v * 1000).expect("record");
            }
            interval.measures.bye.record(5).expect("record");
            log.write(&interval).expect("write");
        }
        let text = std::fs::read(&path).expect("read");
        let mut tags = Vec::new();
        for entry in hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&text) {
            if let Ok(hdrhistogram::serialization::interval_log::LogEntry::Interval(h)) = entry {
                tags.push((h.tag().map(|t| t.as_str().to_owned()), h.start_timestamp().as_secs(), h.max()));
            }
        }
        assert_eq!(tags.len(), 6, "two tagged histograms per interval: {tags:?}");
        assert_eq!((tags[0].0.as_deref(), tags[0].1), (Some("setup"), 0));
        assert!((tags[0].2 - 100.0).abs() < 0.1, "max in ms (3 significant digits): {}", tags[0].2);
        assert_eq!(tags[5].0.as_deref(), Some("bye"));
        assert_eq!(tags[5].1, 2);
    }
}
