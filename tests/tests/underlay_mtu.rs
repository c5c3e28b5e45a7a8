//! An underlay hop with a smaller MTU than the nodes': VXLAN leaves with DF
//! clear (as kernel VXLAN sends it), so the router fragments it, and the
//! receiving node must not lose the fragments. Our uplink program leaves
//! fragments to the kernel, which reassembles them and hands the datagram
//! to the VXLAN socket of `overlay0`; its ingress program checks and
//! delivers it like the uplink's. Needs root.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use overlay_tests::{
    cluster::{put_host_2_behind_a_router, Cluster, VXLAN_CONFIG},
    netns::next,
    packet::{eth, udp, vxlan, Ipv4, ETH_P_IP},
    poll_until,
    traffic::{send_raw_ipv4, tcp_roundtrip, wait_ping},
};

/// RX packets of `dev` in `host`'s namespace.
fn rx_packets(c: &Cluster, host: usize, dev: &str) -> u64 {
    c.tb.host(host).rx_packets(dev).unwrap()
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

/// A VXLAN datagram from `outer_src` to `outer_dst`:8472 carrying an
/// IPv4/UDP packet `inner_src` -> `inner_dst`:7777 with `payload`, inner
/// MACs `src_mac` -> `dst_mac`, cut into two IPv4 fragments (DF clear), as
/// a router on a smaller-MTU hop would cut it.
#[allow(clippy::too_many_arguments)]
fn fragmented_vxlan(
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    id: u16,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
    payload: &[u8],
) -> [Vec<u8>; 2] {
    let inner = Ipv4::new(inner_src, inner_dst, 17).build(&udp(40000, 7777, payload));
    let datagram = udp(45000, 8472, &vxlan(1, &eth(dst_mac, src_mac, ETH_P_IP, &inner)));
    let cut = 800; // a multiple of 8, inside the inner payload
    let mut first = Ipv4::new(outer_src, outer_dst, 17);
    first.id = id;
    first.df = false;
    first.mf = true;
    let mut second = first.clone();
    second.mf = false;
    second.frag_offset = (cut / 8) as u16;
    [first.build(&datagram[..cut]), second.build(&datagram[cut..])]
}

/// Fragments are the one kind of VXLAN our uplink program cannot check
/// (only the first fragment carries the UDP header): it leaves them to the
/// kernel, which reassembles them and hands them to `overlay0`'s socket.
/// A stranger, or a member forging an inner source, must not get through
/// that way; a member's honest fragments must. The fragments are written
/// by hand and sent from the underlay hosts' raw sockets (kernel VXLAN
/// avoids outer fragmentation by lowering the inner path MTU instead).
#[test]
fn fragmented_vxlan_from_strangers_and_forged_sources_is_dropped_after_reassembly() {
    // Agent on host 0, a kernel flannel node (a member) on host 1, a
    // stranger on host 2.
    let c = Cluster::start_with(1, 1, 1, VXLAN_CONFIG);
    let victim = &c.pods[0][0];
    let member_lease = c.kernel_leases[0];
    wait_ping(&c.pods[1][0], victim.ip());
    let sock = victim.in_ns(|| UdpSocket::bind(SocketAddrV4::new(victim.ip(), 7777))).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    let received = || {
        let mut buf = [0u8; 2048];
        sock.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
    };
    let node = c.tb.host(0).ip();
    let payload: Vec<u8> = (0..1200u32).map(|i| (i % 251) as u8).collect();
    let send = |from: &overlay_tests::netns::Host, id: u16, src_mac: [u8; 6], inner_src: Ipv4Addr| {
        for frag in fragmented_vxlan(from.ip(), node, id, src_mac, c.vtep_mac(0), inner_src, victim.ip(), &payload) {
            send_raw_ipv4(from, &frag).unwrap();
        }
    };

    // The member, honest: reassembled, through overlay0, delivered whole
    // (the control for what follows).
    let member = c.tb.host(1);
    let through_socket = rx_packets(&c, 0, "overlay0");
    send(member, 0x4001, member_lease.vtep_mac, next(member_lease.subnet, 7));
    assert_eq!(received().as_deref(), Some(&payload[..]), "a member's fragmented VXLAN must be delivered");
    assert!(rx_packets(&c, 0, "overlay0") > through_socket, "it came reassembled through overlay0's socket");

    // A stranger: not in any lease.
    let stranger = c.tb.host(2);
    let before = c.counters(0)["drop_unknown_sender"];
    send(stranger, 0x4002, [0x0e, 0, 0, 0, 0xfb, 2], Ipv4Addr::new(10, 42, 251, 7));
    assert_eq!(received(), None, "a stranger's fragmented VXLAN reached a pod");
    assert_eq!(c.counters(0)["drop_unknown_sender"], before + 1, "{:?}", c.counters(0));

    // The member forging an inner source outside its lease.
    let before = c.counters(0)["drop_spoofed_source"];
    send(member, 0x4003, member_lease.vtep_mac, Ipv4Addr::new(10, 42, 252, 9));
    assert_eq!(received(), None, "a forged inner source reached a pod in fragments");
    assert_eq!(c.counters(0)["drop_spoofed_source"], before + 1, "{:?}", c.counters(0));

    // And the member's honest fragments still pass afterwards.
    send(member, 0x4004, member_lease.vtep_mac, next(member_lease.subnet, 7));
    assert_eq!(received().as_deref(), Some(&payload[..]), "the member again");
}
