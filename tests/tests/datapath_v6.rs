//! IPv6 pods over the IPv6 underlay, between our data path and a kernel
//! VXLAN v6 device set up the way flanneld sets up `flannel-v6.1` (the
//! reference: a real kernel device, configured by this test as flanneld's
//! vxlan backend does; not flanneld itself). Two hosts on a cable whose
//! ends compute checksums in software (tx checksumming, TSO and GSO off, as
//! a NIC hands frames to the wire), so the receiving kernel really checks
//! every outer UDP checksum, which IPv6 VXLAN must carry (a kernel v6 VXLAN
//! device drops zero-checksum datagrams): ping and a TCP transfer (GSO
//! super-packets from the pod, segmented after encapsulation) both ways,
//! the outer headers on the wire against the reference's, the host's own
//! traffic via overlay0, and a forged inner source dropped; ICMPv6 packet
//! too big for a pod whose packets do not fit once encapsulated; and
//! host-gw for v6 against a node with plain kernel routes.
//!
//! The v6 data path is installed directly (Datapath::install in the host's
//! namespace, maps written through DatapathMaps6), since the control
//! plane's v6 half is not wired to it here.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use overlay_agent::datapath::{
    loader::{ifindex, uninstall, DatapathOptions, XdpGuard},
    Datapath, Mode, NodeConfig6, Peer6, PinLayout, PodEndpoint6,
};
use overlay_common::stats::Reason;
use overlay_tests::{
    capture::Capture,
    netns::{ensure_bpffs, Netns, Pod, Testbed},
    poll_until,
};

const OUR_IP6: &str = "fd00:77::10";
const PEER_IP6: &str = "fd00:77::11";
const OUR_VTEP: &str = "0a:11:22:33:44:01";
const OUR_VTEP6: [u8; 6] = [0x0a, 0x11, 0x22, 0x33, 0x66, 0x01];
const PEER_VTEP6: [u8; 6] = [0x0a, 0x11, 0x22, 0x33, 0x66, 0x02];
const POD6: &str = "fd42:0:1::5";
/// The reference node's own address in its lease (flannel-v6.1 holds it).
const PEER_NODE6: &str = "fd42:0:2::";

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Unpins (and so detaches) the test's data path, also when it fails.
struct Installed(PinLayout);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = uninstall(&self.0);
    }
}

/// Our node (host 0, the data path installed, two v6 pods behind cni0:
/// one at the pod MTU, one at the wire's) and a reference node (host 1) on
/// a cable, for `mode`: VXLAN against `flannel-v6.1`, or direct routes
/// (host-gw) against plain kernel routes.
struct Pair {
    // Field order is drop order: the programs are unpinned before the
    // namespaces go.
    dp: Datapath,
    _installed: Installed,
    pod: Pod,
    wide_pod: Pod,
    tb: Testbed,
}

/// What the pod at the pod MTU and the one at the wire's MTU use.
const POD_MTU: u32 = 1430;
const WIDE_POD6: &str = "fd42:0:1::6";

fn pair(mode: Mode) -> Pair {
    ensure_bpffs().expect("bpffs (needs root)");
    let tb = Testbed::cable().expect("testbed (needs root, iproute2)");
    let (h0, h1) = (tb.host(0), tb.host(1));
    for (h, ip) in [(h0, OUR_IP6), (h1, PEER_IP6)] {
        h.ip_batch(&[format!("addr add {ip}/64 dev eth0 nodad")]).unwrap();
        h.run(&["ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"]).expect("ethtool (Debian package ethtool)");
        h.set_sysctl("net/ipv6/conf/all/forwarding", "1").unwrap();
    }
    let pod_mtu = if mode == Mode::Vxlan { POD_MTU } else { 1500 };

    // Our node: pods behind cni0 with v6 addresses, overlay0 as the agent
    // makes it (VXLAN: a metadata VXLAN device on the port, NOARP; host-gw:
    // an ifb, the agent's choice where the kernel has no dummy driver), and
    // the v6 network's route via overlay0 at the v6 MTU.
    let pod = h0.add_pod("cni0", "10.42.1.5/24", "10.42.1.1".parse().unwrap(), pod_mtu).unwrap();
    let wide_pod = h0.add_pod("cni0", "10.42.1.6/24", "10.42.1.1".parse().unwrap(), 1500).unwrap();
    h0.ip_batch(&["addr add fd42:0:1::1/64 dev cni0 nodad".into()]).unwrap();
    for (p, ip) in [(&pod, POD6), (&wide_pod, WIDE_POD6)] {
        p.ns().ip_batch(&[format!("addr add {ip}/64 dev eth0 nodad"), "route add default via fd42:0:1::1 dev eth0".into()]).unwrap();
    }
    let device = match mode {
        Mode::Vxlan => format!("link add overlay0 address {OUR_VTEP} type vxlan external dstport 8472"),
        Mode::Direct => "link add overlay0 type ifb".into(),
    };
    h0.ip_batch(&[device, "link set overlay0 arp off up".into(), format!("route add fd42::/32 dev overlay0 mtu {pod_mtu}")])
        .unwrap();

    match mode {
        // The reference: flannel-v6.1 as flanneld's vxlan backend makes it,
        // and the per-lease route, neighbour and FDB entry for our lease.
        Mode::Vxlan => {
            h1.ip_batch(&[
                format!("link add flannel-v6.1 type vxlan id 1 local {PEER_IP6} dev eth0 dstport 8472 nolearning"),
                format!("link set flannel-v6.1 address {} mtu 1430 up", mac_str(PEER_VTEP6)),
                format!("addr add {PEER_NODE6}/128 dev flannel-v6.1 nodad"),
                "route add fd42:0:1::/64 via fd42:0:1:: dev flannel-v6.1 onlink".into(),
                format!("neigh add fd42:0:1:: lladdr {} dev flannel-v6.1 nud permanent", mac_str(OUR_VTEP6)),
            ])
            .unwrap();
            h1.run(&["bridge", "fdb", "append", &mac_str(OUR_VTEP6), "dev", "flannel-v6.1", "dst", OUR_IP6]).unwrap();
        }
        // host-gw: the lease's subnet on a device, a route to ours via us.
        Mode::Direct => h1
            .ip_batch(&[
                "link add pods0 type ifb".into(),
                "link set pods0 up".into(),
                format!("addr add {PEER_NODE6}/64 dev pods0 nodad"),
                format!("route add fd42:0:1::/64 via {OUR_IP6} dev eth0"),
            ])
            .unwrap(),
    }

    let pins = PinLayout::new(format!("/sys/fs/bpf/ovtest-v6-{}", tb.id()));
    let installed = Installed(pins.clone());
    let opts = DatapathOptions { pins, uplink: "eth0".into(), tunnel: "overlay0".into(), xdp_guard: XdpGuard::Off, log_drops: false };
    let veths = BTreeSet::from([pod.host_veth().to_string(), wide_pod.host_veth().to_string()]);
    let (mut dp, idx) = h0.in_ns(|| {
        let mut dp = Datapath::install(&opts).expect("install the data path");
        dp.sync_pod_side(Some("cni0"), &veths);
        let idx = |n: &str| ifindex(n).unwrap_or_else(|| panic!("no {n}"));
        (dp, [idx("eth0"), idx("overlay0"), idx("cni0"), idx(pod.host_veth()), idx(wide_pod.host_veth())])
    });
    let [uplink, tunnel, bridge, veth, wide_veth] = idx;
    dp.maps6
        .set_config(&NodeConfig6 {
            local_ip: OUR_IP6.parse().unwrap(),
            public_ip: OUR_IP6.parse().unwrap(),
            network: "fd42::/32".parse().unwrap(),
            subnet: "fd42:0:1::/64".parse().unwrap(),
            vni: 1,
            port: 8472,
            tunnel_ifindex: tunnel,
            uplink_ifindex: uplink,
            uplink_mtu: 1500,
            bridge_ifindex: bridge,
            vtep_mac: OUR_VTEP6,
            bridge_mac: h0.mac("cni0").unwrap(),
            kernel_forwarding: false,
        })
        .unwrap();
    let vtep_mac = if mode == Mode::Vxlan { PEER_VTEP6 } else { [0; 6] };
    let peer = Peer6 { subnet: "fd42:0:2::/64".parse().unwrap(), public_ip: PEER_IP6.parse().unwrap(), vtep_mac, mode };
    dp.maps6.upsert_peer(&peer).unwrap();
    for (p, ip, ifindex) in [(&pod, POD6, veth), (&wide_pod, WIDE_POD6, wide_veth)] {
        dp.maps6.upsert_endpoint(&PodEndpoint6 { ip: ip.parse().unwrap(), ifindex, mac: p.mac() }).unwrap();
    }
    Pair { dp, _installed: installed, pod, wide_pod, tb }
}

impl Pair {
    fn moved_since(&self, before: &overlay_agent::datapath::Stats, r: Reason) -> u64 {
        self.dp.maps.stats().unwrap().get(r).packets - before.get(r).packets
    }

    /// The first ping may wait for neighbour discovery of the gateway.
    fn wait_ping(&self, from: &Netns, dst: &str) {
        poll_until(Duration::from_secs(10), &format!("{from:?} pings {dst}"), || {
            from.run(&["ping", "-6", "-c", "1", "-W", "1", dst]).map(drop)
        })
        .unwrap_or_else(|e| panic!("{e:#}\nstats: {:?}", self.dp.maps.stats().unwrap()));
    }
}

#[test]
fn v6_pods_talk_to_a_kernel_flannel_v6_node_with_checksummed_vxlan() {
    let p = pair(Mode::Vxlan);
    let (tb, dp, pod) = (&p.tb, &p.dp, &p.pod);
    let (h0, h1) = (tb.host(0), tb.host(1));
    let capture = Capture::on(h0.ns(), "eth0", tb.dir(), "ip6 and udp port 8472");
    let before = dp.maps.stats().unwrap();

    // Pod -> reference node and back.
    p.wait_ping(pod.ns(), PEER_NODE6);
    pod.ns().run(&["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", PEER_NODE6]).unwrap();

    // TCP both ways: the pod's GSO super-packets are encapsulated whole and
    // segmented after, each segment with its own outer checksum.
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let peer_addr: SocketAddr = format!("[{PEER_NODE6}]:5201").parse().unwrap();
    let pod_addr: SocketAddr = format!("[{POD6}]:5202").parse().unwrap();
    tcp_transfer(h1.ns(), peer_addr, pod.ns(), &payload);
    tcp_transfer(pod.ns(), pod_addr, h1.ns(), &payload);

    // The host's own v6 traffic to a remote pod: routed to overlay0, whose
    // egress program gives it the tunnel key.
    h0.run(&["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", PEER_NODE6]).unwrap();

    for r in [Reason::Encapsulated, Reason::PassedToVxlanDriver, Reason::DecapToPod, Reason::DecapToHost] {
        assert!(p.moved_since(&before, r) > 0, "{} did not move: {:?}", r.name(), dp.maps.stats().unwrap());
    }
    assert_eq!(p.moved_since(&before, Reason::DropError), 0);

    // The wire: ours and the reference's, field by field.
    let frames = capture.finish6();
    let ours: Vec<_> = frames.iter().filter(|f| f.outer_src == OUR_IP6.parse::<Ipv6Addr>().unwrap()).collect();
    let theirs: Vec<_> = frames.iter().filter(|f| f.outer_src == PEER_IP6.parse::<Ipv6Addr>().unwrap()).collect();
    assert!(ours.len() > 100 && theirs.len() > 100, "captured {} ours, {} theirs", ours.len(), theirs.len());
    for f in frames.iter() {
        assert_eq!((f.dport, f.vxlan_flags, f.vxlan_reserved, f.vni), (8472, 0x08, [0; 4], 1), "{f:?}");
        assert_ne!(f.udp_csum, 0, "IPv6 UDP carries a checksum: {f:?}");
        assert_eq!(f.udp_len, f.payload_len, "{f:?}");
        assert!(f.len <= 1500 + 14, "larger than the wire's MTU: {f:?}");
        assert!((32768..=60999).contains(&f.sport), "source port from the local port range: {f:?}");
        assert_eq!(f.inner_ethertype, 0x86dd);
    }
    for f in &ours {
        assert_eq!((f.inner_dst_mac, f.inner_src_mac), (PEER_VTEP6, OUR_VTEP6), "between the v6 VtepMACs: {f:?}");
    }
    for f in &theirs {
        assert_eq!((f.inner_dst_mac, f.inner_src_mac), (OUR_VTEP6, PEER_VTEP6));
    }
    let fields = |v: &[&overlay_tests::capture::Vxlan6Frame]| {
        v.iter().map(|f| (f.hop_limit, f.traffic_class, f.flow_label)).collect::<BTreeSet<_>>()
    };
    assert_eq!(fields(&ours), fields(&theirs), "hop limit, traffic class, flow label as the reference sends them");

    // A node may speak only for its own lease: the reference sends from an
    // address outside it, and nothing reaches the pod.
    h1.ip_batch(&["addr add fd42:0:9::1/128 dev flannel-v6.1 nodad".into()]).unwrap();
    let spoofed_before = dp.maps.stats().unwrap().get(Reason::DropSpoofedSource).packets;
    let forged = h1.run(&["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-I", "fd42:0:9::1", POD6]);
    assert!(forged.is_err(), "a forged inner source got an answer");
    let spoofed = dp.maps.stats().unwrap().get(Reason::DropSpoofedSource).packets - spoofed_before;
    assert!(spoofed >= 2, "forged frames counted as drop_spoofed_source: {spoofed}");
}

/// A pod whose MTU exceeds what fits once encapsulated (1500 + 70 on a
/// 1500 wire) is told so: its packet goes to the kernel, which answers
/// ICMPv6 packet too big from the route's MTU (1430); the pod then sends
/// fragments that fit, and gets its answer.
#[test]
fn v6_too_big_for_the_tunnel_is_answered_with_packet_too_big() {
    let p = pair(Mode::Vxlan);
    let wide = p.wide_pod.ns();
    p.wait_ping(wide, PEER_NODE6);
    let before = p.dp.maps.stats().unwrap();
    // 1452 bytes of ICMPv6 payload: a 1500-byte packet.
    let first = wide.run(&["ping", "-6", "-c", "1", "-W", "2", "-s", "1452", PEER_NODE6]);
    assert!(p.moved_since(&before, Reason::PassedToKernel) >= 1, "handed to the kernel: {:?}", p.dp.maps.stats().unwrap());
    let route = wide.run(&["ip", "-6", "route", "get", PEER_NODE6]).unwrap();
    assert!(route.contains("mtu 1430"), "the pod learnt the tunnel's MTU from packet too big: {route} (first ping: {first:?})");
    wide.run(&["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "-s", "1452", PEER_NODE6]).unwrap();
}

/// host-gw (and DirectRouting) for v6: pods reach the peer's v6 subnet
/// unencapsulated via its PublicIPv6, against a node with plain kernel
/// routes, at the full wire MTU, TCP included.
#[test]
fn v6_host_gw_routes_pods_directly_to_a_kernel_node() {
    let p = pair(Mode::Direct);
    let (h1, pod) = (p.tb.host(1), &p.pod);
    let capture = Capture::on(p.tb.host(0).ns(), "eth0", p.tb.dir(), "ip6");
    let before = p.dp.maps.stats().unwrap();
    p.wait_ping(pod.ns(), PEER_NODE6);
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 + i / 97) as u8).collect();
    tcp_transfer(h1.ns(), format!("[{PEER_NODE6}]:5203").parse().unwrap(), pod.ns(), &payload);
    assert!(p.moved_since(&before, Reason::DirectRouted) > 0, "{:?}", p.dp.maps.stats().unwrap());
    assert_eq!(p.moved_since(&before, Reason::Encapsulated), 0);
    let raw = capture.finish_raw();
    assert!(overlay_tests::capture::vxlan6_frames(&raw).is_empty(), "nothing encapsulated");
}

/// Sends `payload` from namespace `client` to a listener on `server_addr`
/// in namespace `server`, and checks that it arrived whole.
fn tcp_transfer(server: &Netns, server_addr: SocketAddr, client: &Netns, payload: &[u8]) {
    let (tx, rx) = std::sync::mpsc::channel();
    let received = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            server.in_ns(move || {
                let listener = TcpListener::bind(server_addr).expect("bind");
                tx.send(()).unwrap();
                let (mut conn, _) = listener.accept().expect("accept");
                conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).expect("read");
                got
            })
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("listener up");
        client.in_ns(|| {
            let mut conn = TcpStream::connect_timeout(&server_addr, Duration::from_secs(10)).expect("connect");
            conn.write_all(payload).expect("write");
        });
        receiver.join().unwrap()
    });
    assert!(received == payload, "{} of {} bytes arrived, intact: {}", received.len(), payload.len(), received == payload);
}
