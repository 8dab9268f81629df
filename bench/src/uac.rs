//! `sipbench uac TARGET`: the caller, like `sipp -sn uac`, over UDP or TCP.
//! Calls start on an open-loop schedule (a constant rate, or a ramp that adds
//! `rate_step` every `step_seconds`), so the schedule never waits for the
//! server; each runs its scenario:
//!
//! - `call`: INVITE → 100/180 → 200 → ACK, hold, BYE → 200;
//! - `register`: REGISTER → 200, answering one 401/407 digest challenge when
//!   credentials are given;
//! - `options`: OPTIONS → 200.
//!
//! Latencies count from the request's *intended* send time (coordinated
//! omission). Over UDP requests are retransmitted on RFC 3261 timers A and E
//! (T1 = 500 ms doubling; E capped at T2 = 4 s); over any transport a request
//! unanswered after 64·T1 times out.
//!
//! `--threads T` runs T generators, each with its own socket or connection, a
//! share of the rate and of the calls, and its own Call-IDs
//! (`SEQ-THREAD-PID@sipbench`). Each sends its counts and histograms once a
//! second to the caller's thread, which merges them into the progress line,
//! the `--csv` row and the `--hdr-log` interval, and at the end into the
//! [`Report`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use sipshard_parser::{Contact, HeaderName, HeaderSlot, Message, Method, parse};

use crate::digest::{self, Credentials};
use crate::report::{Counts, CsvWriter, HdrLogWriter, Interval, Measures, Report};
use crate::transport::{Link, TransportKind};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// Longest wait for input when nothing is due (the merging thread hears from each generator at
/// least this often).
const MAX_WAIT: Duration = Duration::from_millis(10);

/// What each call does.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// INVITE, 1xx, 200, ACK, hold, BYE, 200.
    Call,
    /// REGISTER (answering a digest challenge with --auth), 200.
    Register,
    /// OPTIONS, 200.
    Options,
}

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct UacConfig {
    /// Where requests go.
    pub target: SocketAddr,
    /// Where the BYE goes instead (and its retransmissions, and an ACK sent again after it), as
    /// if a floating IP had moved to another node during the hold (UDP only).
    pub bye_target: Option<SocketAddr>,
    /// Send each call to one of these instead of `target`: the one whose index is the call's
    /// stripe (`stripe_of(Call-ID, stripes)`) modulo their number, as an upstream proxy that
    /// hashes Call-IDs onto a sipshard cluster's nodes would (nodes listed by node id; UDP only).
    pub spread: Vec<SocketAddr>,
    /// The cluster's stripe count, for `spread`.
    pub stripes: u32,
    /// A dialog's ACK and BYE go where its INVITE went (as SIPp's do), not to its first Route
    /// or the callee's Contact (§8.1.2; UDP only: TCP keeps its one connection anyway).
    pub stay_on_target: bool,
    /// Local address to bind (port 0: any; with several threads, consecutive ports from it).
    pub local: SocketAddr,
    /// UDP or TCP.
    pub transport: TransportKind,
    /// What each call does.
    pub scenario: Scenario,
    /// Calls started per second at first (all threads together).
    pub rate: f64,
    /// Calls per second added every `step_seconds` (0: constant rate).
    pub rate_step: f64,
    /// Seconds between rate steps.
    pub step_seconds: f64,
    /// The rate never goes above this.
    pub rate_max: Option<f64>,
    /// Calls to start in all.
    pub calls: u64,
    /// Stop starting calls after this long.
    pub duration: Option<Duration>,
    /// Hold time between the ACK and the BYE.
    pub hold: Duration,
    /// Generator threads.
    pub threads: usize,
    /// The user part of the Request-URI (and of the AoRs registered).
    pub service: String,
    /// Distinct users the register scenario cycles through (`SERVICE0`..).
    pub users: u64,
    /// Expires of each REGISTER.
    pub expires: u32,
    /// Credentials for digest challenges.
    pub auth: Option<Credentials>,
    /// Most calls in progress at once (like SIPp's `-l`); a call due beyond it waits, and its
    /// latency still counts from when it was due.
    pub max_concurrent: usize,
    /// Write SIPp `-trace_stat`-like rows here.
    pub csv: Option<PathBuf>,
    /// Write an HdrHistogram interval log here.
    pub hdr_log: Option<PathBuf>,
    /// Print the progress line every second.
    pub progress: bool,
}

impl UacConfig {
    /// A call scenario over UDP to `target` with SIPp-like defaults.
    pub fn new(target: SocketAddr) -> UacConfig {
        UacConfig {
            target,
            bye_target: None,
            spread: Vec::new(),
            stripes: 1024,
            stay_on_target: false,
            local: SocketAddr::from(([127, 0, 0, 1], 0)),
            transport: TransportKind::Udp,
            scenario: Scenario::Call,
            rate: 10.0,
            rate_step: 0.0,
            step_seconds: 1.0,
            rate_max: None,
            calls: 100,
            duration: None,
            hold: Duration::ZERO,
            threads: 1,
            service: "service".to_owned(),
            users: 1000,
            expires: 3600,
            auth: None,
            max_concurrent: 100_000,
            csv: None,
            hdr_log: None,
            progress: true,
        }
    }

    /// Checks the settings that cannot work together.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.threads >= 1, "--threads must be at least 1");
        anyhow::ensure!(self.rate > 0.0 && self.rate.is_finite(), "--rate must be above 0");
        anyhow::ensure!(self.rate_step >= 0.0 && self.rate_step.is_finite(), "--rate-step must be 0 or more");
        anyhow::ensure!(self.step_seconds > 0.0, "--step-seconds must be above 0");
        anyhow::ensure!(self.rate_max.is_none_or(|m| m >= self.rate), "--rate-max must be at least --rate");
        anyhow::ensure!(self.max_concurrent >= self.threads, "--max-concurrent must be at least --threads");
        anyhow::ensure!(self.users >= 1, "--users must be at least 1");
        anyhow::ensure!(
            self.spread.is_empty() || self.transport == TransportKind::Udp,
            "--spread needs --transport udp"
        );
        anyhow::ensure!(self.stripes >= 1, "--stripes must be at least 1");
        anyhow::ensure!(
            self.bye_target.is_none() || self.transport == TransportKind::Udp,
            "--bye-target needs --transport udp (a second TCP connection is not implemented)"
        );
        anyhow::ensure!(
            self.local.port() == 0 || usize::from(self.local.port()) + self.threads <= 65_536,
            "--local port + --threads runs past port 65535"
        );
        Ok(())
    }

    /// The schedule's rate `elapsed` into the run, all threads together.
    pub fn rate_at(&self, elapsed: Duration) -> f64 {
        let steps = (elapsed.as_secs_f64() / self.step_seconds).floor();
        let rate = self.rate + self.rate_step * steps;
        self.rate_max.map_or(rate, |max| rate.min(max))
    }
}

/// What generator `thread` does: its share of the run.
struct Share {
    config: UacConfig,
    thread: usize,
    local: SocketAddr,
    calls: u64,
    max_concurrent: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Inviting,
    Holding,
    Byeing,
    Registering,
    Querying,
}

impl Phase {
    /// The method of the request the phase waits on.
    fn method(self) -> Option<&'static str> {
        match self {
            Phase::Inviting => Some("INVITE"),
            Phase::Holding => None,
            Phase::Byeing => Some("BYE"),
            Phase::Registering => Some("REGISTER"),
            Phase::Querying => Some("OPTIONS"),
        }
    }
}

/// What a 2xx taught about the dialog.
#[derive(Clone, Debug, Default)]
struct Dialog {
    to_tag: String,
    /// The callee's Contact: the Request-URI of ACK and BYE (§12.2.1.1).
    remote_target: String,
    /// The route set: the 2xx's Record-Route, reversed (§12.1.2).
    routes: Vec<String>,
}

struct Call {
    phase: Phase,
    /// When the request now waited on was meant to go: latencies count from here.
    intended: Instant,
    /// That request, for retransmission.
    request: Vec<u8>,
    next_retransmit: Instant,
    interval: Duration,
    /// Give up at.
    deadline: Instant,
    /// The wake-up now in the timer heap (older entries for this call are stale).
    wake: Instant,
    provisional: bool,
    trying: bool,
    ringing: bool,
    /// A digest challenge was answered (a second one fails the call).
    authenticated: bool,
    dialog: Dialog,
    /// The BYE is due then.
    bye_at: Instant,
    /// Where its requests go (`spread`), when not to the target.
    to: Option<SocketAddr>,
}

/// Where a request of a call in `phase` goes: the BYE target for a BYE when there is one, else
/// the call's own address (`None`: the target).
fn destination(bye_target: Option<SocketAddr>, to: Option<SocketAddr>, phase: Phase) -> Option<SocketAddr> {
    match bye_target {
        Some(moved) if phase == Phase::Byeing => Some(moved),
        _ => to,
    }
}

/// What a generator reports to the merging thread.
enum Update {
    Interval(Box<Interval>),
    /// The generator stopped after sending interval `last`.
    Done {
        thread: usize,
        last: u64,
        elapsed: Duration,
        error: Option<String>,
    },
}

/// One generator thread's state.
struct Generator {
    share: Share,
    /// The local address, written once (formatting a socket address is not cheap).
    local: String,
    /// The local IP, for SDP.
    local_ip: String,
    /// The target address, written once.
    target: String,
    pid: u32,
    calls: HashMap<u64, Call>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    counts: Counts,
    measures: Measures,
    /// Messages produced while handling input, sent once the input is read; `true` marks
    /// those for the BYE target.
    outbox: Vec<(Vec<u8>, Option<SocketAddr>)>,
    /// When the run started (all generators share it).
    start: Instant,
    /// When the last call ended well, since `start`.
    last_ok: Duration,
    /// Whether calls are still being started (the interval's target rate is 0 after).
    starting: bool,
}

/// Runs the calls on `config.threads` generators and merges what they measured.
pub fn run(config: &UacConfig) -> Result<Report> {
    config.validate()?;
    let started_wall = SystemTime::now();
    let start = Instant::now() + Duration::from_millis(20);
    let (tx, rx) = mpsc::channel::<Update>();
    let threads = config.threads;
    let mut handles = Vec::new();
    for thread in 0..threads {
        let share = Share {
            config: config.clone(),
            thread,
            local: if config.local.port() == 0 {
                config.local
            } else {
                SocketAddr::new(config.local.ip(), config.local.port() + thread as u16)
            },
            calls: config.calls / threads as u64 + u64::from((thread as u64) < config.calls % threads as u64),
            max_concurrent: config.max_concurrent / threads,
        };
        let tx = tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("uac-{thread}"))
            .spawn(move || {
                let mut last = 0;
                let result = Generator::run(share, start, &tx, &mut last);
                let elapsed = Instant::now().saturating_duration_since(start);
                let error = result.err().map(|e| format!("{e:#}"));
                let _ = tx.send(Update::Done { thread, last, elapsed, error });
            })
            .context("starting a generator thread")?;
        handles.push(handle);
    }
    drop(tx);
    let mut csv = config.csv.as_deref().map(|p| CsvWriter::create(p, started_wall)).transpose()?;
    let mut hdr_log = config.hdr_log.as_deref().map(|p| HdrLogWriter::create(p, started_wall)).transpose()?;
    let mut total = Report {
        counts: Counts::default(),
        measures: Measures::default(),
        elapsed: Duration::ZERO,
        busy: Duration::ZERO,
    };
    let mut pending: std::collections::BTreeMap<u64, (Interval, usize)> = Default::default();
    let mut done_after: Vec<Option<u64>> = vec![None; threads];
    let mut errors = Vec::new();
    let mut next = 0u64;
    let mut emit = |interval: Interval, total: &mut Report| -> Result<()> {
        total.counts.add(&interval.counts);
        total.measures.add(&interval.measures)?;
        total.elapsed = total.elapsed.max(Duration::from_secs(interval.index) + interval.length);
        total.busy = total.busy.max(interval.last_ok);
        // The last interval is often a sliver with nothing in it: no line for that.
        let sliver =
            interval.length < Duration::from_millis(100) && interval.counts.attempted + interval.counts.ok == 0;
        if config.progress && !sliver {
            eprintln!("{}", interval.progress_line(&total.counts));
        }
        if let Some(csv) = csv.as_mut() {
            csv.row(&interval, total)?;
        }
        if let Some(log) = hdr_log.as_mut() {
            log.write(&interval)?;
        }
        Ok(())
    };
    for update in rx {
        match update {
            Update::Interval(part) => {
                let slot = pending
                    .entry(part.index)
                    .or_insert_with(|| (Interval { index: part.index, ..Interval::default() }, 0));
                slot.0.counts.add(&part.counts);
                slot.0.measures.add(&part.measures)?;
                slot.0.active += part.active;
                slot.0.target_rate += part.target_rate;
                slot.0.length = slot.0.length.max(part.length);
                slot.0.last_ok = slot.0.last_ok.max(part.last_ok);
                slot.1 += 1;
            }
            Update::Done { thread, last, elapsed, error } => {
                done_after[thread] = Some(last);
                total.elapsed = total.elapsed.max(elapsed);
                errors.extend(error.map(|e| format!("generator {thread}: {e}")));
            }
        }
        // Emit every interval all threads have reported (a stopped thread reports no more).
        while let Some((_, reported)) = pending.get(&next) {
            let stopped = done_after.iter().filter(|d| d.is_some_and(|d| d < next)).count();
            if reported + stopped < threads {
                break;
            }
            let (interval, _) = pending.remove(&next).expect("invariant: present");
            emit(interval, &mut total)?;
            next += 1;
        }
    }
    for (_, (interval, _)) in std::mem::take(&mut pending) {
        emit(interval, &mut total)?;
    }
    for handle in handles {
        handle.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))?;
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    Ok(total)
}

impl Generator {
    /// Runs one generator to the end of its share, reporting each second to `tx`; `last` is
    /// the index of the last interval it sent.
    fn run(share: Share, start: Instant, tx: &mpsc::Sender<Update>, last: &mut u64) -> Result<()> {
        let mut link = Link::open(share.config.transport, share.local, share.config.target)?;
        let local = link.local_addr()?;
        let mut generator = Generator {
            local: local.to_string(),
            local_ip: local.ip().to_string(),
            target: share.config.target.to_string(),
            share,
            pid: std::process::id(),
            calls: HashMap::new(),
            timers: BinaryHeap::new(),
            counts: Counts::default(),
            measures: Measures::default(),
            outbox: Vec::new(),
            start,
            last_ok: Duration::ZERO,
            starting: true,
        };
        let config = generator.share.config.clone();
        let threads = config.threads as f64;
        let mut buf = vec![0u8; 65_535];
        let mut slots = vec![HeaderSlot::EMPTY; Message::SLOTS];
        let mut started = 0u64;
        let mut next_due = start;
        let mut index = 0u64;
        let interval_start = |index: u64| start + Duration::from_secs(index);
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        let result = loop {
            let now = Instant::now();
            // The schedule decides which calls exist: every call due before the duration's end is
            // started, late if the generator fell behind (its latency counts from when it was due).
            let past_end = |t: Instant| config.duration.is_some_and(|d| t.duration_since(start) >= d);
            let stop_starting = past_end(next_due) && past_end(now);
            // Start every call whose time has come (open loop).
            while !past_end(next_due) && started < generator.share.calls && next_due <= now {
                if generator.calls.len() >= generator.share.max_concurrent {
                    break;
                }
                generator.start_call(started, next_due, now);
                started += 1;
                let rate = config.rate_at(next_due.duration_since(start)) / threads;
                next_due += Duration::from_secs_f64(1.0 / rate);
            }
            // Timers due.
            while let Some(&Reverse((at, seq))) = generator.timers.peek() {
                if at > now {
                    break;
                }
                generator.timers.pop();
                generator.on_timer(seq, at, now);
            }
            // Responses.
            let got = match link.receive(&mut buf, |bytes| {
                if let Ok(message) = parse(bytes, &mut slots) {
                    generator.on_message(&message);
                }
                Ok(())
            }) {
                Ok(got) => got,
                Err(e) => break Err(e),
            };
            for (message, to) in generator.outbox.drain(..) {
                match to {
                    Some(addr) => link.send_to(&message, addr),
                    None => link.send(&message)?,
                }
            }
            link.flush()?;
            // A second is over: report it.
            if now >= interval_start(index + 1) {
                let part = generator.take_interval(index, Duration::from_secs(1));
                tx.send(Update::Interval(Box::new(part))).context("the merging thread stopped")?;
                index += 1;
            }
            let all_started = started >= generator.share.calls || stop_starting;
            generator.starting = !all_started;
            if all_started && generator.calls.is_empty() {
                break Ok(());
            }
            if got == 0 {
                // Nothing came: wait for input until the next call, timer or report is due.
                let mut wake = interval_start(index + 1);
                if !all_started && generator.calls.len() < generator.share.max_concurrent {
                    wake = wake.min(next_due);
                }
                if let Some(Reverse((at, _))) = generator.timers.peek() {
                    wake = wake.min(*at);
                }
                let wait = wake.saturating_duration_since(Instant::now()).min(MAX_WAIT);
                if !wait.is_zero() {
                    link.wait(wait);
                }
            }
        };
        let length = Instant::now().saturating_duration_since(interval_start(index));
        let part = generator.take_interval(index, length);
        tx.send(Update::Interval(Box::new(part))).context("the merging thread stopped")?;
        *last = index;
        result
    }

    /// This second's counts and histograms (the generator starts afresh).
    fn take_interval(&mut self, index: u64, length: Duration) -> Interval {
        let config = &self.share.config;
        let rate = if self.starting { config.rate_at(Duration::from_secs(index)) / config.threads as f64 } else { 0.0 };
        Interval {
            index,
            counts: std::mem::take(&mut self.counts),
            measures: std::mem::take(&mut self.measures),
            active: self.calls.len() as u64,
            target_rate: rate,
            length: length.min(Duration::from_secs(1)),
            last_ok: self.last_ok,
        }
    }

    fn call_id(&self, seq: u64) -> String {
        format!("{seq}-{}-{}@sipbench", self.share.thread, self.pid)
    }

    /// Starts call `seq`, due at `intended`.
    fn start_call(&mut self, seq: u64, intended: Instant, now: Instant) {
        let (phase, request) = match self.share.config.scenario {
            Scenario::Call => (Phase::Inviting, self.invite(seq)),
            Scenario::Register => (Phase::Registering, self.register(seq, 1, None)),
            Scenario::Options => (Phase::Querying, self.options(seq)),
        };
        self.counts.attempted += 1;
        let spread = &self.share.config.spread;
        let to = (!spread.is_empty()).then(|| {
            let stripe = sipshard_parser::stripe_of(self.call_id(seq).as_bytes(), self.share.config.stripes);
            spread[stripe as usize % spread.len()]
        });
        self.outbox.push((request.clone(), to));
        let call = Call {
            phase,
            intended,
            request,
            next_retransmit: now + T1,
            interval: T1,
            deadline: now + T1 * 64,
            wake: now,
            provisional: false,
            trying: false,
            ringing: false,
            authenticated: false,
            dialog: Dialog::default(),
            bye_at: now,
            to,
        };
        self.calls.insert(seq, call);
        self.schedule(seq);
    }

    /// Puts call `seq`'s next wake-up in the heap.
    fn schedule(&mut self, seq: u64) {
        let retransmits = self.share.config.transport.retransmits();
        let Some(call) = self.calls.get_mut(&seq) else { return };
        call.wake = match call.phase {
            Phase::Holding => call.bye_at,
            Phase::Inviting if call.provisional => call.deadline,
            _ if retransmits => call.next_retransmit.min(call.deadline),
            _ => call.deadline,
        };
        self.timers.push(Reverse((call.wake, seq)));
    }

    /// Sends `request` as the one call `seq` now waits on, due at `intended`.
    fn await_request(&mut self, seq: u64, phase: Phase, request: Vec<u8>, intended: Instant, now: Instant) {
        let to = self.calls.get(&seq).and_then(|c| c.to);
        self.outbox.push((request.clone(), destination(self.share.config.bye_target, to, phase)));
        if let Some(call) = self.calls.get_mut(&seq) {
            call.phase = phase;
            call.intended = intended;
            call.request = request;
            call.interval = T1;
            call.next_retransmit = now + T1;
            call.deadline = now + T1 * 64;
            call.provisional = false;
        }
        self.schedule(seq);
    }

    fn on_timer(&mut self, seq: u64, at: Instant, now: Instant) {
        let Some(call) = self.calls.get_mut(&seq) else { return };
        if call.wake != at {
            return; // Stale: the call moved on since this wake-up was set.
        }
        if call.phase == Phase::Holding {
            let bye_at = call.bye_at;
            let bye = self.in_dialog(seq, "BYE", 'b');
            self.await_request(seq, Phase::Byeing, bye, bye_at, now);
            return;
        }
        if now >= call.deadline {
            self.counts.timed_out += 1;
            self.calls.remove(&seq);
            return;
        }
        if now >= call.next_retransmit {
            let to = destination(self.share.config.bye_target, call.to, call.phase);
            self.outbox.push((call.request.clone(), to));
            self.counts.retransmissions += 1;
            let doubled = call.interval * 2;
            // Timer A doubles without bound; E (non-INVITE), and A once a 1xx came, stop at T2.
            call.interval = if call.phase == Phase::Inviting { doubled } else { doubled.min(T2) };
            call.next_retransmit = now + call.interval;
        }
        self.schedule(seq);
    }

    fn on_message(&mut self, message: &Message<'_>) {
        let (Some(code), Some(call_id)) = (message.status_code(), message.call_id().ok().flatten()) else { return };
        let Some(seq) = call_id.split('-').next().and_then(|n| n.parse::<u64>().ok()) else { return };
        let Some(cseq) = message.cseq().ok().flatten() else { return };
        let Some(call) = self.calls.get_mut(&seq) else { return };
        let now = Instant::now();
        let micros = now.saturating_duration_since(call.intended).as_micros().max(1) as u64;
        let is_invite = cseq.method == Method::Invite;
        if is_invite && call.phase != Phase::Inviting {
            if (200..300).contains(&code) {
                // The 2xx again: our ACK was lost.
                let to = destination(self.share.config.bye_target, call.to, call.phase);
                let ack = self.in_dialog(seq, "ACK", 'a');
                self.outbox.push((ack, to));
            }
            return;
        }
        if call.phase.method() != Some(cseq.method.as_str()) {
            return; // A late answer to an earlier request of the call.
        }
        match (call.phase, code) {
            (Phase::Inviting, 100..=199) => {
                if code == 100 && !call.trying {
                    call.trying = true;
                    let _ = self.measures.invite_100.record(micros);
                }
                if code == 180 && !call.ringing {
                    call.ringing = true;
                    let _ = self.measures.invite_180.record(micros);
                }
                if !call.provisional {
                    call.provisional = true;
                    self.schedule(seq);
                }
            }
            (_, 100..=199) => {
                // Timer E goes to T2 once a provisional response came (§17.1.2.2).
                call.provisional = true;
                call.interval = T2;
            }
            (Phase::Inviting, 200..=299) => {
                let _ = self.measures.setup.record(micros);
                call.dialog = dialog_of(message);
                if self.share.config.transport == TransportKind::Udp && !self.share.config.stay_on_target {
                    // §8.1.2: the dialog's requests go to its first Route (a proxy that
                    // record-routed) or else the callee's Contact, as a UA sends them.
                    call.to = first_hop(&call.dialog).or(call.to);
                }
                let to = call.to;
                let ack = self.in_dialog(seq, "ACK", 'a');
                self.outbox.push((ack, to));
                let call = self.calls.get_mut(&seq).expect("invariant: the call is live");
                call.phase = Phase::Holding;
                call.bye_at = now + self.share.config.hold;
                self.schedule(seq);
            }
            (Phase::Byeing, 200..=299) => self.finish(seq, |m| &mut m.bye, micros),
            (Phase::Registering, 200..=299) => self.finish(seq, |m| &mut m.register, micros),
            (Phase::Querying, 200..=299) => self.finish(seq, |m| &mut m.options, micros),
            (Phase::Registering, 401 | 407) if !call.authenticated && self.share.config.auth.is_some() => {
                let header = if code == 401 { HeaderName::WwwAuthenticate } else { HeaderName::ProxyAuthenticate };
                let challenge = message.header(header).and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default();
                let intended = call.intended;
                call.authenticated = true;
                let auth = self.share.config.auth.as_ref().expect("invariant: checked above");
                let uri = format!("sip:{}", self.target);
                let cnonce = format!("{}x{seq:x}", self.share.thread);
                match digest::answer(challenge, auth, "REGISTER", &uri, &cnonce) {
                    Some(value) => {
                        let name = if code == 401 { "Authorization" } else { "Proxy-Authorization" };
                        let request = self.register(seq, 2, Some((name, &value)));
                        self.await_request(seq, Phase::Registering, request, intended, now);
                    }
                    None => self.fail(seq, code),
                }
            }
            (Phase::Inviting, _) => {
                // The ACK of a non-2xx belongs to the INVITE's transaction: same branch (§17.1.1.3).
                let to_tag = message.to().ok().flatten().and_then(|t| t.tag()).unwrap_or_default().to_owned();
                call.dialog = Dialog { to_tag, ..Dialog::default() };
                let to = call.to;
                let ack = self.in_dialog(seq, "ACK", 'i');
                self.outbox.push((ack, to));
                self.fail(seq, code);
            }
            _ => self.fail(seq, code),
        }
    }

    /// Call `seq` ended well: `latency` goes into the measure `pick` chooses.
    fn finish(&mut self, seq: u64, pick: impl Fn(&mut Measures) -> &mut hdrhistogram::Histogram<u64>, latency: u64) {
        let _ = pick(&mut self.measures).record(latency);
        self.counts.ok += 1;
        self.last_ok = self.start.elapsed();
        self.calls.remove(&seq);
    }

    fn fail(&mut self, seq: u64, code: u16) {
        self.counts.fail(code);
        self.calls.remove(&seq);
    }

    /// The AoR user call `seq` registers.
    fn user(&self, seq: u64) -> String {
        let global = seq * self.share.config.threads as u64 + self.share.thread as u64;
        format!("{}{}", self.share.config.service, global % self.share.config.users)
    }

    /// Via, Max-Forwards, From, To, Call-ID and CSeq of a request of call `seq`; `branch` tells
    /// the requests of a call apart (`i` INVITE and its ACK of a non-2xx, `a` ACK, `b` BYE,
    /// `r`/`R` REGISTER and its authenticated retry, `o` OPTIONS).
    #[allow(clippy::too_many_arguments)] // The parts of one request line and header block.
    fn headers(&self, seq: u64, method: &str, uri: &str, user: &str, to_tag: &str, cseq: u32, branch: char) -> String {
        let to_tag = if to_tag.is_empty() { String::new() } else { format!(";tag={to_tag}") };
        let (local, target, thread) = (&self.local, &self.target, self.share.thread);
        let transport = self.share.config.transport.via();
        let contact_transport = if transport == "TCP" { ";transport=tcp" } else { "" };
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{thread}x{seq:x}{branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{user}@{target}>;tag={thread}x{seq:x}\r\nTo: <sip:{user}@{target}>{to_tag}\r\n\
Call-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:{user}@{local}{contact_transport}>\r\n",
            self.call_id(seq)
        )
    }

    fn request_uri(&self) -> String {
        format!("sip:{}@{}", self.share.config.service, self.target)
    }

    fn invite(&self, seq: u64) -> Vec<u8> {
        let sdp = format!(
            "v=0\r\no=sipbench {seq} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n",
            ip = self.local_ip
        );
        let mut text = self.headers(seq, "INVITE", &self.request_uri(), "sipbench", "", 1, 'i');
        text.push_str(&format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()));
        text.into_bytes()
    }

    fn register(&self, seq: u64, cseq: u32, authorization: Option<(&str, &str)>) -> Vec<u8> {
        let user = self.user(seq);
        let uri = format!("sip:{}", self.target);
        let branch = if cseq == 1 { 'r' } else { 'R' };
        let mut text = self.headers(seq, "REGISTER", &uri, &user, "", cseq, branch);
        text.push_str(&format!("Expires: {}\r\n", self.share.config.expires));
        if let Some((name, value)) = authorization {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text.into_bytes()
    }

    fn options(&self, seq: u64) -> Vec<u8> {
        let mut text = self.headers(seq, "OPTIONS", &self.request_uri(), "sipbench", "", 1, 'o');
        text.push_str("Accept: application/sdp\r\nContent-Length: 0\r\n\r\n");
        text.into_bytes()
    }

    /// ACK or BYE inside the dialog: to the callee's Contact with the route set (or, without
    /// a dialog, to the INVITE's Request-URI: the ACK of a non-2xx).
    fn in_dialog(&self, seq: u64, method: &str, branch: char) -> Vec<u8> {
        let Some(call) = self.calls.get(&seq) else { return Vec::new() };
        let dialog = &call.dialog;
        let uri = if dialog.remote_target.is_empty() { self.request_uri() } else { dialog.remote_target.clone() };
        let cseq = if method == "BYE" { 2 } else { 1 };
        let mut text = self.headers(seq, method, &uri, "sipbench", &dialog.to_tag, cseq, branch);
        for route in &dialog.routes {
            text.push_str(&format!("Route: {route}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text.into_bytes()
    }
}

/// Where a dialog's requests go (§8.1.2): its first Route's address, or with no route set the
/// remote target's (the peer's Contact), when that is an IP literal.
fn first_hop(dialog: &Dialog) -> Option<SocketAddr> {
    let next = dialog.routes.first().map_or(dialog.remote_target.as_str(), |route| route.as_str());
    let uri = sipshard_parser::Uri::parse(next.trim_start_matches('<').trim_end_matches('>')).ok()?;
    let ip: std::net::IpAddr = uri.host.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}

/// The dialog a 2xx to the INVITE sets up.
fn dialog_of(message: &Message<'_>) -> Dialog {
    let mut routes: Vec<String> =
        message.record_routes().filter_map(Result::ok).map(|r| format!("<{}>", r.uri.raw)).collect();
    routes.reverse();
    Dialog {
        to_tag: message.to().ok().flatten().and_then(|t| t.tag()).unwrap_or_default().to_owned(),
        remote_target: message
            .contacts()
            .find_map(|c| match c {
                Ok(Contact::Address { addr, .. }) => Some(addr.uri.raw.to_owned()),
                _ => None,
            })
            .unwrap_or_default(),
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialogs_requests_go_to_its_first_route_or_contact_when_that_is_an_address() {
        let dialog =
            |routes: &[&str]| Dialog { routes: routes.iter().map(|r| r.to_string()).collect(), ..Dialog::default() };
        let hop = first_hop(&dialog(&["<sip:127.0.0.1:15071;lr>", "<sip:10.0.0.9;lr>"]));
        assert_eq!(hop, Some("127.0.0.1:15071".parse().expect("addr")));
        assert_eq!(first_hop(&dialog(&["<sip:10.0.0.9;lr>"])), Some("10.0.0.9:5060".parse().expect("addr")));
        assert_eq!(first_hop(&dialog(&["<sip:[::1]:5070;lr>"])), Some("[::1]:5070".parse().expect("addr")));
        assert_eq!(first_hop(&dialog(&["<sip:proxy.example.com;lr>"])), None, "no DNS: the target stays");
        assert_eq!(first_hop(&dialog(&[])), None);
        let direct = Dialog { remote_target: "sip:service@127.0.0.1:5090".into(), ..dialog(&[]) };
        assert_eq!(first_hop(&direct), Some("127.0.0.1:5090".parse().expect("addr")), "no route set: the Contact");
    }

    #[test]
    fn a_ramp_adds_its_step_each_period_up_to_the_cap() {
        let mut config = UacConfig::new("127.0.0.1:5060".parse().expect("addr"));
        config.rate = 100.0;
        config.rate_step = 50.0;
        config.step_seconds = 2.0;
        config.rate_max = Some(220.0);
        assert_eq!(config.rate_at(Duration::from_millis(1999)), 100.0);
        assert_eq!(config.rate_at(Duration::from_secs(2)), 150.0);
        assert_eq!(config.rate_at(Duration::from_secs(5)), 200.0);
        assert_eq!(config.rate_at(Duration::from_secs(60)), 220.0);
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_their_flag() {
        let base = UacConfig::new("127.0.0.1:5060".parse().expect("addr"));
        let refused = |change: fn(&mut UacConfig)| {
            let mut config = base.clone();
            change(&mut config);
            config.validate().expect_err("refused").to_string()
        };
        assert!(refused(|c| c.rate = 0.0).contains("--rate"));
        assert!(refused(|c| c.threads = 0).contains("--threads"));
        assert!(refused(|c| c.rate_max = Some(1.0)).contains("--rate-max"));
        assert!(refused(|c| c.step_seconds = 0.0).contains("--step-seconds"));
        assert!(refused(|c| c.max_concurrent = 0).contains("--max-concurrent"));
        assert!(base.validate().is_ok());
    }
}
