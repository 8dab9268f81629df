//! `sipbench uac TARGET`: the caller, like `sipp -sn uac`, over UDP: calls
//! start at a constant rate (open loop: the schedule does not wait for the
//! server), each INVITE → 1xx → 200 → ACK, holds, then BYE → 200. Latencies
//! are taken from the *intended* send time, so a stalled server cannot hide
//! its stalls (coordinated omission), into HdrHistograms in microseconds.
//! Requests are retransmitted on RFC 3261 timers A and E (T1 = 500 ms,
//! doubling, E capped at T2 = 4 s) and time out after 64·T1.
//!
//! Each generator thread has its own socket and share of the rate; calls are
//! told apart by their Call-ID (`N-THREAD-PID@sipbench`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use sipshard_parser::{HeaderSlot, Message, parse};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// How often the live calls are scanned for due timers.
const SCAN_EVERY: Duration = Duration::from_millis(1);

/// How long the generator sleeps when nothing came in: well under a millisecond, so calls
/// start on time.
const IDLE_SLEEP: Duration = Duration::from_micros(50);

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub(crate) struct UacConfig {
    /// Where requests go.
    pub(crate) target: SocketAddr,
    /// Local address to bind.
    pub(crate) local: SocketAddr,
    /// Calls started per second.
    pub(crate) rate: f64,
    /// Calls to start in all.
    pub(crate) calls: u64,
    /// Stop starting calls after this long.
    pub(crate) duration: Option<Duration>,
    /// Hold time between the ACK and the BYE.
    pub(crate) hold: Duration,
    /// The user part of the Request-URI (`sip:USER@target`).
    pub(crate) service: String,
    /// This generator's number (keeps Call-IDs, tags and branches unique across threads).
    pub(crate) thread: usize,
    /// Most calls in progress at once (like SIPp's `-l`): a call due beyond it waits, and its
    /// latency still counts from when it was due.
    pub(crate) max_concurrent: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Inviting,
    Holding,
    Byeing,
    Done,
}

/// What a 2xx taught about the dialog.
#[derive(Clone, Debug, Default)]
struct Dialog {
    remote_target: String,
    routes: Vec<String>,
}

struct Call {
    phase: Phase,
    /// When the INVITE (or BYE) was meant to go: latencies count from here.
    intended: Instant,
    /// The request last sent, for retransmission.
    request: Vec<u8>,
    next_retransmit: Instant,
    interval: Duration,
    /// Give up at.
    deadline: Instant,
    provisional: bool,
    /// A 180 was recorded (a 100 Trying before it must not hide it).
    ringing: bool,
    to_tag: String,
    /// The callee's Contact (the Request-URI of ACK and BYE, §12.2.1.1), and the route set.
    dialog: Dialog,
    /// The BYE is due then.
    bye_at: Instant,
}

/// The results, as the `--json` summary writes them.
pub(crate) struct Report {
    pub(crate) attempted: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) timed_out: u64,
    pub(crate) retransmissions: u64,
    pub(crate) failures_by_code: BTreeMap<u16, u64>,
    pub(crate) elapsed: Duration,
    pub(crate) setup: Histogram<u64>,
    pub(crate) ringing: Histogram<u64>,
    pub(crate) bye: Histogram<u64>,
}

impl Report {
    /// Completed calls per second of the run.
    pub(crate) fn calls_per_s(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The JSON summary.
    pub(crate) fn json(&self) -> serde_json::Value {
        let ms = |h: &Histogram<u64>| {
            let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            serde_json::json!({
                "count": h.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": h.max() as f64 / 1000.0,
            })
        };
        serde_json::json!({
            "calls_attempted": self.attempted,
            "calls_ok": self.ok,
            "calls_failed": self.failed,
            "calls_timed_out": self.timed_out,
            "calls_per_s": self.calls_per_s(),
            "retransmissions": self.retransmissions,
            "failures_by_code": self.failures_by_code.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "invite_180_ms": ms(&self.ringing),
            "setup_ms": ms(&self.setup),
            "bye_ms": ms(&self.bye),
        })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("invariant: valid histogram bounds")
}

/// Runs the calls; returns the report.
pub(crate) fn run(config: &UacConfig) -> Result<Report> {
    let socket = UdpSocket::bind(config.local).with_context(|| format!("binding {}", config.local))?;
    let local = socket.local_addr()?;
    // Non-blocking, with short sleeps when idle: SO_RCVTIMEO ticks in jiffies (4 ms here), which
    // would delay sends past their intended time; nanosleep is finer.
    socket.set_nonblocking(true)?;
    let pid = std::process::id();
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / config.rate.max(0.001));
    let mut calls: Vec<Call> = Vec::new();
    let mut live: Vec<usize> = Vec::new();
    let mut report = Report {
        attempted: 0,
        ok: 0,
        failed: 0,
        timed_out: 0,
        retransmissions: 0,
        failures_by_code: BTreeMap::new(),
        elapsed: Duration::ZERO,
        setup: histogram(),
        ringing: histogram(),
        bye: histogram(),
    };
    let mut buf = vec![0u8; 65_535];
    let mut slots = vec![HeaderSlot::EMPTY; Message::SLOTS];
    let mut last_report = start;
    let mut last_scan = start;
    let thread = config.thread;
    let call_id = |i: usize| format!("{i}-{thread}-{pid}@sipbench");
    loop {
        let now = Instant::now();
        // Start every call whose time has come (open loop).
        let stop_starting = config.duration.is_some_and(|d| now.duration_since(start) >= d);
        while !stop_starting && (calls.len() as u64) < config.calls {
            let intended = start + interval * calls.len() as u32;
            if intended > now || live.len() >= config.max_concurrent {
                break;
            }
            let i = calls.len();
            let invite = invite(config, local, &call_id(i), i);
            socket.send_to(&invite, config.target)?;
            report.attempted += 1;
            calls.push(Call {
                phase: Phase::Inviting,
                intended,
                request: invite,
                next_retransmit: now + T1,
                interval: T1,
                deadline: now + T1 * 64,
                provisional: false,
                ringing: false,
                to_tag: String::new(),
                dialog: Dialog::default(),
                bye_at: now,
            });
            live.push(i);
        }
        // Timers: retransmissions, timeouts, BYEs due; looked at once a millisecond, not per
        // datagram (the scan is over every live call).
        let scan = now.duration_since(last_scan) >= SCAN_EVERY;
        if scan {
            last_scan = now;
        }
        for &i in live.iter().filter(|_| scan) {
            let call = &mut calls[i];
            if call.phase == Phase::Holding && now >= call.bye_at {
                let bye = in_dialog(config, local, &call_id(i), i, "BYE", &call.to_tag, &call.dialog, 'b');
                socket.send_to(&bye, config.target)?;
                call.phase = Phase::Byeing;
                call.intended = call.bye_at;
                call.request = bye;
                call.interval = T1;
                call.next_retransmit = now + T1;
                call.deadline = now + T1 * 64;
            } else if matches!(call.phase, Phase::Inviting | Phase::Byeing) {
                if now >= call.deadline {
                    call.phase = Phase::Done;
                    report.timed_out += 1;
                } else if now >= call.next_retransmit && !(call.phase == Phase::Inviting && call.provisional) {
                    socket.send_to(&call.request, config.target)?;
                    report.retransmissions += 1;
                    call.interval =
                        if call.phase == Phase::Inviting { call.interval * 2 } else { (call.interval * 2).min(T2) };
                    call.next_retransmit = now + call.interval;
                }
            }
        }
        if scan {
            live.retain(|&i| calls[i].phase != Phase::Done);
        }
        let all_started = (calls.len() as u64) >= config.calls || stop_starting;
        if all_started && live.is_empty() {
            break;
        }
        if now.duration_since(last_report) >= Duration::from_secs(1) {
            last_report = now;
            eprintln!(
                "uac {:>6.1}s  started {:>7}  ok {:>7}  active {:>5}  failed {:>4}  timed out {:>4}  setup p50 {:.2} ms p99 {:.2} ms",
                now.duration_since(start).as_secs_f64(),
                report.attempted,
                report.ok,
                live.len(),
                report.failed,
                report.timed_out,
                report.setup.value_at_quantile(0.5) as f64 / 1000.0,
                report.setup.value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
        // Responses.
        let (n, _) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                std::thread::sleep(IDLE_SLEEP);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(msg) = parse(&buf[..n], &mut slots) else { continue };
        let (Some(code), Some(id)) = (msg.status_code(), msg.call_id().ok().flatten()) else { continue };
        let Some(i) = id.split('-').next().and_then(|n| n.parse::<usize>().ok()) else { continue };
        let Some(call) = calls.get_mut(i) else { continue };
        let is_invite = msg.cseq().ok().flatten().is_some_and(|c| c.method == sipshard_parser::Method::Invite);
        let now = Instant::now();
        let micros = |since: Instant| now.saturating_duration_since(since).as_micros().max(1) as u64;
        match (call.phase, is_invite, code) {
            (Phase::Inviting, true, 100..=199) => {
                if code == 180 && !call.ringing {
                    call.ringing = true;
                    let _ = report.ringing.record(micros(call.intended));
                }
                call.provisional = true;
            }
            (Phase::Inviting, true, 200..=299) => {
                let _ = report.setup.record(micros(call.intended));
                call.to_tag = msg.to().ok().flatten().and_then(|t| t.tag()).unwrap_or_default().to_owned();
                call.dialog = Dialog {
                    remote_target: msg
                        .contacts()
                        .find_map(|c| match c {
                            Ok(sipshard_parser::Contact::Address { addr, .. }) => Some(addr.uri.raw.to_owned()),
                            _ => None,
                        })
                        .unwrap_or_default(),
                    // §12.1.2: the UAC's route set is the Record-Route of the 2xx, reversed.
                    routes: {
                        let mut routes: Vec<String> =
                            msg.record_routes().filter_map(Result::ok).map(|r| format!("<{}>", r.uri.raw)).collect();
                        routes.reverse();
                        routes
                    },
                };
                socket.send_to(
                    &in_dialog(config, local, &call_id(i), i, "ACK", &call.to_tag, &call.dialog, 'a'),
                    config.target,
                )?;
                call.phase = Phase::Holding;
                call.bye_at = now + config.hold;
            }
            (Phase::Holding | Phase::Byeing, true, 200..=299) => {
                // The 2xx again: our ACK was lost.
                socket.send_to(
                    &in_dialog(config, local, &call_id(i), i, "ACK", &call.to_tag, &call.dialog, 'a'),
                    config.target,
                )?;
            }
            (Phase::Inviting, true, 300..) => {
                // The ACK of a non-2xx belongs to the INVITE's transaction: same branch (§17.1.1.3).
                let tag = msg.to().ok().flatten().and_then(|t| t.tag()).unwrap_or_default().to_owned();
                socket.send_to(
                    &in_dialog(config, local, &call_id(i), i, "ACK", &tag, &Dialog::default(), 'i'),
                    config.target,
                )?;
                *report.failures_by_code.entry(code).or_default() += 1;
                report.failed += 1;
                call.phase = Phase::Done;
            }
            (Phase::Byeing, false, 200..=299) => {
                let _ = report.bye.record(micros(call.intended));
                report.ok += 1;
                call.phase = Phase::Done;
            }
            (Phase::Byeing, false, 300..) => {
                *report.failures_by_code.entry(code).or_default() += 1;
                report.failed += 1;
                call.phase = Phase::Done;
            }
            _ => {}
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The headers every request of call `i` shares; `uri` is its Request-URI, `branch` its
/// Via branch suffix (`i` INVITE, `a` ACK, `b` BYE).
#[allow(clippy::too_many_arguments)] // The parts of one request line and header block.
fn headers(
    config: &UacConfig,
    local: SocketAddr,
    call_id: &str,
    i: usize,
    method: &str,
    uri: &str,
    to_tag: &str,
    branch: char,
) -> String {
    let to_tag = if to_tag.is_empty() { String::new() } else { format!(";tag={to_tag}") };
    let cseq = if method == "BYE" { 2 } else { 1 };
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{t}x{i:x}{branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:sipbench@{local}>;tag={t}x{i:x}\r\nTo: <sip:{}@{}>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:sipbench@{local}>\r\n",
        config.service,
        config.target,
        t = config.thread
    )
}

fn invite(config: &UacConfig, local: SocketAddr, call_id: &str, i: usize) -> Vec<u8> {
    let sdp = format!(
        "v=0\r\no=sipbench {i} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n",
        ip = local.ip()
    );
    let uri = format!("sip:{}@{}", config.service, config.target);
    let mut text = headers(config, local, call_id, i, "INVITE", &uri, "", 'i');
    text.push_str(&format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()));
    text.into_bytes()
}

/// ACK or BYE inside the dialog: to the callee's Contact with the route set (or, without a
/// dialog, to the INVITE's Request-URI: the ACK of a non-2xx).
#[allow(clippy::too_many_arguments)] // The parts of one request.
fn in_dialog(
    config: &UacConfig,
    local: SocketAddr,
    call_id: &str,
    i: usize,
    method: &str,
    to_tag: &str,
    dialog: &Dialog,
    branch: char,
) -> Vec<u8> {
    let uri = if dialog.remote_target.is_empty() {
        format!("sip:{}@{}", config.service, config.target)
    } else {
        dialog.remote_target.clone()
    };
    let mut text = headers(config, local, call_id, i, method, &uri, to_tag, branch);
    for route in &dialog.routes {
        text.push_str(&format!("Route: {route}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    text.into_bytes()
}
