//! `tools/wire-latency.py` on a capture written here: four packets of one sync-replicated
//! INVITE (in on the node's port, a Change out on the replica link, the peer's Ack back, out
//! to the callee) at known times, in both framings the script reads, and the hops it must
//! print. Needs python3 (CI installs it; elsewhere a missing one skips with a note).

use std::process::Command;

use crate::support::tool;

/// One IPv4 packet (UDP or TCP, ports given) carrying `payload`.
fn ipv4(protocol: u8, source: u16, destination: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&source.to_be_bytes());
    l4.extend_from_slice(&destination.to_be_bytes());
    if protocol == 17 {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    } else {
        l4.extend_from_slice(&[0; 8]); // sequence and acknowledgement numbers
        l4.extend_from_slice(&[5 << 4, 0x18, 0xff, 0xff, 0, 0, 0, 0]); // data offset 5 words
    }
    l4.extend_from_slice(payload);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
    ip.extend_from_slice(&l4);
    ip
}

/// A classic pcap (microseconds) of `packets` (time in µs, IPv4 packet) in `link` framing.
fn pcap(link: u32, packets: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    out.extend_from_slice(&[2, 0, 4, 0]); // version 2.4
    for word in [0u32, 0, 65_535, link] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (micros, ip) in packets {
        let frame = match link {
            1 => [vec![0; 12], vec![0x08, 0x00], ip.clone()].concat(), // Ethernet
            113 => [vec![0; 14], vec![0x08, 0x00], ip.clone()].concat(), // Linux cooked
            _ => unreachable!("a framing the test writes"),
        };
        for word in [(micros / 1_000_000) as u32, (micros % 1_000_000) as u32, frame.len() as u32, frame.len() as u32] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&frame);
    }
    out
}

#[test]
fn the_script_splits_a_sync_hop_into_change_ack_and_out() {
    let Some(python) = tool("python3") else { return };
    let invite = b"INVITE sip:callee@127.0.0.1:16090 SIP/2.0\r\n\r\n";
    // Node 1 (SIP port 16070) connected its replica link from an ephemeral port to the
    // peer's 17170: its Change goes to 17170, the Ack comes back from it.
    let packets = [
        (1_000_000, ipv4(17, 5_000, 16_070, invite)),
        (1_000_120, ipv4(6, 40_000, 17_170, b"change")),
        (1_000_300, ipv4(6, 17_170, 40_000, b"ack")),
        (1_000_410, ipv4(17, 16_070, 16_090, invite)),
        // A second call through node 2, with no replica frames in between.
        (2_000_000, ipv4(17, 5_000, 16_080, invite)),
        (2_000_050, ipv4(17, 16_080, 16_090, invite)),
    ];
    let dir = std::env::temp_dir().join(format!("sipshard-wire-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    for link in [1, 113] {
        let path = dir.join(format!("wire-{link}.pcap"));
        std::fs::write(&path, pcap(link, &packets)).expect("write the capture");
        let out = Command::new(&python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/wire-latency.py"))
            .arg(&path)
            .output()
            .expect("python3 runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "link {link}: {text}{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        // "INVITE in->out n=2 p50 410 us ...": the 50 µs and the 410 µs hop, p50 the upper.
        assert_eq!(lines[0][..5], ["INVITE", "in->out", "n=2", "p50", "410"], "link {link}: {text}");
        assert_eq!(lines[1][..4], ["in->Change", "n=1", "p50", "120"], "link {link}: {text}");
        assert_eq!(lines[2][..4], ["Change->Ack", "n=1", "p50", "180"], "link {link}: {text}");
        assert_eq!(lines[3][..4], ["Ack->out", "n=1", "p50", "110"], "link {link}: {text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
