//! `sipbench uas`: a callee that answers everything at once, over UDP, like
//! `sipp -sn uas`: an INVITE gets 180 and 200 with a small SDP body (and the
//! same again when it is retransmitted), a BYE or anything else gets 200, an
//! ACK nothing. Stateless: the To tag is derived from the Call-ID, so a
//! retransmission gets the same answer without remembering the call.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sipshard_parser::{HeaderSlot, Message, Method, ResponseSpec, parse, write_response};

/// The SDP answer every 200 to an INVITE carries.
const SDP: &[u8] = b"v=0\r\no=sipbench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// What the UAS saw.
#[derive(Debug, Default)]
pub(crate) struct UasStats {
    /// INVITEs (retransmissions included).
    pub(crate) invites: u64,
    /// ACKs.
    pub(crate) acks: u64,
    /// BYEs.
    pub(crate) byes: u64,
    /// Other requests answered 200.
    pub(crate) others: u64,
    /// Datagrams that did not parse.
    pub(crate) malformed: u64,
}

/// Answers on `listen` until `duration` has passed (or forever); prints the counts at the end.
pub(crate) fn run(listen: SocketAddr, duration: Option<Duration>) -> Result<UasStats> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let contact = format!("<sip:sipbench@{}>", socket.local_addr()?);
    eprintln!("sipbench uas listening on {}", socket.local_addr()?);
    let started = Instant::now();
    let mut stats = UasStats::default();
    let mut buf = vec![0u8; 65_535];
    let mut out = vec![0u8; 65_535];
    let mut slots = vec![HeaderSlot::EMPTY; Message::SLOTS];
    let mut last_report = Instant::now();
    while duration.is_none_or(|d| started.elapsed() < d) {
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "uas {:>5.1}s  invites {}  acks {}  byes {}  other {}",
                started.elapsed().as_secs_f64(),
                stats.invites,
                stats.acks,
                stats.byes,
                stats.others
            );
        }
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        };
        let Ok(msg) = parse(&buf[..n], &mut slots) else {
            stats.malformed += 1;
            continue;
        };
        let Some(method) = msg.method() else { continue };
        let tag = to_tag(&msg);
        let answer = |code: u16, reason: &str, body: &[u8], out: &mut Vec<u8>| -> Result<()> {
            let content_type: [(&str, &[u8]); 2] =
                [("Contact", contact.as_bytes()), ("Content-Type", b"application/sdp")];
            let headers: &[(&str, &[u8])] = if body.is_empty() { &content_type[..1] } else { &content_type };
            let spec = ResponseSpec { code, reason, to_tag: Some(&tag), headers, body };
            if let Ok(len) = write_response(&msg, &spec, out) {
                socket.send_to(&out[..len], from)?;
            }
            Ok(())
        };
        match method {
            Method::Invite => {
                stats.invites += 1;
                answer(180, "Ringing", b"", &mut out)?;
                answer(200, "OK", SDP, &mut out)?;
            }
            Method::Ack => stats.acks += 1,
            Method::Bye => {
                stats.byes += 1;
                answer(200, "OK", b"", &mut out)?;
            }
            _ => {
                stats.others += 1;
                answer(200, "OK", b"", &mut out)?;
            }
        }
    }
    eprintln!("uas done: {stats:?}");
    Ok(stats)
}

/// A To tag that depends only on the Call-ID (FNV-1a), so retransmissions get the same one.
fn to_tag(msg: &Message<'_>) -> String {
    let call_id = msg.call_id().ok().flatten().unwrap_or_default();
    let hash = call_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{hash:016x}")
}
