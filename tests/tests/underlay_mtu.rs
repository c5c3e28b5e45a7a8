//! An underlay hop with a smaller MTU than the nodes': VXLAN leaves with DF
//! clear (as kernel VXLAN sends it), so the router fragments it, and the
//! receiving node must not lose the fragments. Our uplink program leaves
//! fragments to the kernel, which reassembles them and hands the datagram
//! to the VXLAN socket of `overlay0`; its ingress program checks and
//! delivers it like the uplink's. Needs root.

use std::time::Duration;

use overlay_tests::{
    cluster::{put_host_2_behind_a_router, Cluster, VXLAN_CONFIG},
    poll_until,
    traffic::{tcp_roundtrip, wait_ping},
};

/// RX packets of `dev` in `host`'s namespace.
fn rx_packets(c: &Cluster, host: usize, dev: &str) -> u64 {
    let out = c.tb.host(host).run(&["ip", "-s", "-o", "link", "show", "dev", dev]).unwrap();
    // "... RX: bytes packets ... \    123 4 ..." on one line with -o.
    let fields: Vec<&str> = out.split_whitespace().collect();
    let at = fields.iter().position(|f| *f == "RX:").unwrap_or_else(|| panic!("{out}"));
    // RX: bytes packets errors dropped missed mcast \ <bytes> <packets>
    let values: Vec<&str> = fields[at..].iter().skip_while(|f| !f.starts_with('\\')).skip(1).copied().collect();
    values[1].parse().unwrap_or_else(|_| panic!("{out}"))
}

#[test]
fn vxlan_fragmented_by_a_smaller_mtu_hop_is_reassembled_and_delivered() {
    // Host 2 sits behind host 3 (a router) on a segment with MTU 1400;
    // agents on hosts 0, 1, 2.
    let c = Cluster::start_prepared(3, 0, 1, VXLAN_CONFIG, |tb| put_host_2_behind_a_router(tb, 1400));
    let (near, far) = (&c.pods[0][0], &c.pods[2][0]);
    poll_until(Duration::from_secs(10), "the far node's lease at node 0", || {
        let peers = c.peers(0);
        peers.iter().any(|p| p.subnet == c.subnet(2)).then_some(()).ok_or_else(|| anyhow::anyhow!("{peers:?}"))
    })
    .unwrap();
    wait_ping(near, far.ip());
    let before = rx_packets(&c, 2, "overlay0");
    // Full-size pod packets from node 0 (pod MTU 1450: 1500-byte VXLAN
    // frames) must cross the 1400-byte hop as fragments, DF ping included.
    let size = (c.pod_mtu - 28).to_string();
    near.run(&["ping", "-c", "5", "-i", "0.1", "-W", "2", "-M", "do", "-s", &size, &far.ip().to_string()]).unwrap();
    tcp_roundtrip(near, far, 2 << 20);
    tcp_roundtrip(far, near, 2 << 20);
    let through_socket = rx_packets(&c, 2, "overlay0") - before;
    assert!(through_socket >= 5, "reassembled VXLAN must arrive through overlay0's socket: {through_socket} packets");
}
