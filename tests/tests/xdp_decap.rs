//! `--xdp-decap` (issue 14's receive-side alternative): VXLAN checked and
//! decapsulated by the uplink's XDP program, the inner frame aggregated by
//! GRO as plain TCP, then delivered by the uplink's TC program like its own
//! decapsulation. Two agent nodes with it, native XDP on the veth uplinks;
//! the BPF test runs (bpf_programs.rs) check the bytes. Needs root.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use overlay_tests::{
    cluster::{Cluster, VXLAN_CONFIG},
    packet::vxlan,
    traffic::{tcp_roundtrip, wait_ping},
};

#[test]
fn pods_talk_through_xdp_decapsulation_and_strangers_are_dropped_in_xdp() {
    // Two agents with --xdp-decap, host 2 a stranger.
    let c = Cluster::build(2, 0, 1, VXLAN_CONFIG).agent_flags(&["--xdp-decap"]).start();
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    wait_ping(a, b.ip());
    wait_ping(b, a.ip());
    c.wait_fast_path();
    let tunnel_rx = c.tb.host(1).rx_packets("overlay0").unwrap();
    let before = c.counters(1);
    tcp_roundtrip(a, b, 4 << 20);
    tcp_roundtrip(b, a, 4 << 20);
    let after = c.counters(1);
    assert!(after["decap_to_pod"] > before["decap_to_pod"], "delivered to the pod by from_uplink: {after:?}");
    // Nothing went the TC decapsulation's other way round, the kernel's
    // VXLAN socket on overlay0: XDP took the datagrams before it.
    assert_eq!(c.tb.host(1).rx_packets("overlay0").unwrap(), tunnel_rx, "VXLAN reached overlay0's socket");

    // The node itself through the tunnel (the host path: the frame's type
    // is made the host's, or IPv4 would drop it as another host's).
    let node1_tunnel_addr = c.subnet(1).network();
    wait_ping(a, node1_tunnel_addr);

    // A stranger's VXLAN, well formed, for pod b: dropped by XDP, counted.
    let stranger = c.tb.host(2);
    let drops = c.counters(1)["drop_unknown_sender"];
    let frame = vxlan(1, &[0u8; 60]);
    stranger
        .in_ns(|| {
            let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            s.send_to(&frame, SocketAddrV4::new(c.tb.host(1).ip(), 8472))
        })
        .unwrap();
    overlay_tests::poll_until(Duration::from_secs(5), "the stranger's datagram counted", || {
        let n = c.counters(1)["drop_unknown_sender"];
        anyhow::ensure!(n == drops + 1, "drop_unknown_sender {drops} -> {n}");
        Ok(())
    })
    .unwrap();
}
