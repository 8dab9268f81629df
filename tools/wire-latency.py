#!/usr/bin/env python3
"""Per-hop latency of sipshard measured on the wire, from a loopback capture.

sipbench's setup latency adds up every hop of a call and the load generator's own
wake-ups; this splits out what one node adds. For each INVITE that a caller sends to a
node, it finds the INVITE the node sends on to the callee (same node port, to the
callee's port) and prints the time between them (p50/p90/p99). With a replica link in
the capture (sync replication), it also splits that time into: INVITE in -> first
Change frame out on the link, Change -> the peer's first frame back (the Ack), and
Ack -> INVITE out.

Capture while a low-rate run is going (one call at a time keeps the pairing exact;
at a few hundred calls/s the next packet of the same kind is the right one nearly always):

    tcpdump -i lo -nn -s 200 -w /tmp/wire.pcap \\
        'udp port 16070 or udp port 16080 or udp port 16090 or tcp portrange 17070-17200' &
    tools/bench-replication.sh --seconds 5 --rates 200 --modes cluster-sync-spread
    kill %1
    tools/wire-latency.py /tmp/wire.pcap --nodes 16070,16080 --callee 16090 --link 17170

The defaults are bench-replication.sh's ports. Reads classic pcap (tcpdump -w), IPv4,
Ethernet or Linux cooked framing; no third-party modules.
"""

import argparse
import struct
import sys


def packets(path):
    """Yields (time s, protocol, source port, destination port, payload)."""
    with open(path, "rb") as f:
        header = f.read(24)
        if len(header) < 24:
            sys.exit(f"{path}: not a pcap file")
        magic = struct.unpack("<I", header[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"{path}: not a little-endian classic pcap (write it with tcpdump -w)")
        fraction = 1e9 if magic == 0xA1B23C4D else 1e6
        link = struct.unpack("<I", header[20:24])[0]
        offset = {1: 14, 113: 16, 0: 4}.get(link)
        if offset is None:
            sys.exit(f"{path}: link type {link} not handled (capture on lo)")
        while True:
            record = f.read(16)
            if len(record) < 16:
                return
            seconds, fraction_part, length, _ = struct.unpack("<IIII", record)
            data = f.read(length)
            ip = data[offset:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            l4 = ip[ihl:total]
            if len(l4) < 8:
                continue
            source, destination = struct.unpack(">HH", l4[:4])
            if ip[9] == 17:
                payload = l4[8:]
            elif ip[9] == 6 and len(l4) >= 20:
                payload = l4[(l4[12] >> 4) * 4 :]
            else:
                continue
            yield seconds + fraction_part / fraction, ip[9], source, destination, payload


def summary(name, values):
    values = sorted(values)
    if not values:
        return f"{name:<16} no samples"
    at = lambda q: values[min(len(values) - 1, int(len(values) * q))]
    return f"{name:<16} n={len(values):<6} p50 {at(0.5):7.0f} us  p90 {at(0.9):7.0f} us  p99 {at(0.99):7.0f} us"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pcap")
    parser.add_argument("--nodes", default="16070,16080", help="the nodes' SIP ports")
    parser.add_argument("--callee", type=int, default=16090, help="the callee's (sipbench uas) port")
    parser.add_argument("--link", type=int, default=17170, help="the replica link's listening port")
    parser.add_argument("--window-ms", type=float, default=50, help="longest hop looked for")
    args = parser.parse_args()
    nodes = [int(p) for p in args.nodes.split(",")]
    trace = list(packets(args.pcap))
    window = args.window_ms / 1000
    through, to_change, to_ack, to_out = [], [], [], []
    for i, (t, proto, source, destination, payload) in enumerate(trace):
        if proto != 17 or destination not in nodes or source == args.callee or not payload.startswith(b"INVITE "):
            continue
        node = destination
        # The replica link: the node's own frames go one way, its peer's the other (the
        # connecting node's side has an ephemeral port, the accepting side `--link`).
        first_node = node == nodes[0]
        change = ack = None
        for t2, proto2, source2, destination2, payload2 in trace[i + 1 :]:
            if t2 - t > window:
                break
            if proto2 == 6 and payload2 and args.link in (source2, destination2):
                from_node = (destination2 == args.link) == first_node
                if change is None and from_node:
                    change = t2
                elif change is not None and ack is None and not from_node:
                    ack = t2
            if proto2 == 17 and source2 == node and destination2 == args.callee and payload2.startswith(b"INVITE "):
                through.append((t2 - t) * 1e6)
                if change is not None and ack is not None and change < ack <= t2:
                    to_change.append((change - t) * 1e6)
                    to_ack.append((ack - change) * 1e6)
                    to_out.append((t2 - ack) * 1e6)
                break
    print(summary("INVITE in->out", through))
    if to_change:
        print(summary("in->Change", to_change))
        print(summary("Change->Ack", to_ack))
        print(summary("Ack->out", to_out))


if __name__ == "__main__":
    main()
