//! The BPF programs run through BPF_PROG_TEST_RUN with crafted frames: exact
//! output bytes for encapsulation and decapsulation, the verdict and counter
//! for every drop reason and malformed input, and a randomized run.
//! Needs root (CAP_BPF); runs entirely inside the kernel's test harness, so
//! no packet goes anywhere.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    maps::HashMap,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use overlay_agent::datapath::{
    loader::load_unattached, maps::coarse_now_ns, DatapathMaps, DatapathMaps6, Mode, NodeConfig, NodeConfig6, Peer,
    Peer6, PodEndpoint, PodEndpoint6,
};
use overlay_common::{
    map_names,
    maps::{UnderlayHop, XDP_DECAP_MARK},
    program_names::{FROM_HOST, FROM_PODS, FROM_TUNNEL, FROM_UPLINK, TO_PODS, XDP_GUARD},
    stats::Reason,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use overlay_tests::packet::*;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 10);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const DIRECT_PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 12);
const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 99);
const OUR_VTEP: [u8; 6] = [0x0a, 0x11, 0x22, 0x33, 0x44, 0x01];
const PEER_VTEP: [u8; 6] = [0x0a, 0x11, 0x22, 0x33, 0x44, 0x02];
const BRIDGE_MAC: [u8; 6] = [0x0a, 0x00, 0x00, 0x00, 0x00, 0xb1];
const UPLINK_MAC: [u8; 6] = [0x0a, 0x00, 0x00, 0x00, 0x00, 0xe0];
const UNDERLAY_GW_MAC: [u8; 6] = [0x0a, 0x00, 0x00, 0x00, 0x00, 0xe1];
const POD_MAC: [u8; 6] = [0x0a, 0x00, 0x00, 0x00, 0x01, 0x05];
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 5);
const UNKNOWN_LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 9);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 42, 2, 7);
const DIRECT_POD: Ipv4Addr = Ipv4Addr::new(10, 42, 3, 7);
const VNI: u32 = 1;
const PORT: u16 = 8472;
const POD_VETH_IFINDEX: u32 = 1; // lo, where test runs deliver; never redirected to
const BRIDGE_IFINDEX: u32 = 99; // no such device: the bridge is elsewhere

struct Lab {
    ebpf: Ebpf,
    maps: DatapathMaps,
    /// The v6 maps: unconfigured (v6 is the kernel's) unless [`Lab::dual`].
    maps6: DatapathMaps6,
}

/// The node every test runs as. Test runs see their frames arrive on `lo`
/// (ifindex 1), which is a pod's veth here (the pod bridge is elsewhere)
/// unless a test says otherwise.
fn node_config() -> NodeConfig {
    NodeConfig {
        local_ip: OUR_IP,
        public_ip: OUR_IP,
        network: "10.42.0.0/16".parse().unwrap(),
        subnet: "10.42.1.0/24".parse().unwrap(),
        vni: VNI,
        port: PORT,
        uplink_ifindex: 1,
        uplink_mtu: 1500,
        bridge_ifindex: BRIDGE_IFINDEX,
        vtep_mac: OUR_VTEP,
        bridge_mac: BRIDGE_MAC,
        kernel_forwarding: false,
        xdp_decap: false,
    }
}

impl Lab {
    fn new() -> Lab {
        Lab::with(node_config())
    }

    fn unconfigured(mut ebpf: Ebpf, maps: DatapathMaps) -> Lab {
        let maps6 = DatapathMaps6::from_ebpf(&mut ebpf).unwrap();
        Lab { ebpf, maps, maps6 }
    }

    fn with(cfg: NodeConfig) -> Lab {
        let (mut ebpf, mut maps) = load_unattached().expect("load the BPF object (needs root)");
        let maps6 = DatapathMaps6::from_ebpf(&mut ebpf).unwrap();
        maps.set_config(&cfg).unwrap();
        maps.upsert_peer(&Peer {
            subnet: "10.42.2.0/24".parse().unwrap(),
            public_ip: PEER_IP,
            vtep_mac: PEER_VTEP,
            mode: Mode::Vxlan,
        })
        .unwrap();
        maps.upsert_peer(&Peer {
            subnet: "10.42.3.0/24".parse().unwrap(),
            public_ip: DIRECT_PEER_IP,
            vtep_mac: [0; 6],
            mode: Mode::Direct,
        })
        .unwrap();
        maps.upsert_endpoint(&PodEndpoint { ip: LOCAL_POD, ifindex: POD_VETH_IFINDEX, mac: POD_MAC })
            .unwrap();
        Lab { ebpf, maps, maps6 }
    }

    /// Runs `prog` once on `frame`; returns the verdict, the output frame
    /// and the one reason whose counter moved (asserting exactly one did).
    fn run(&self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>, Reason) {
        self.run_ctx(prog, frame, None)
    }

    fn run_ctx(&self, prog: &str, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>, Reason) {
        let before = self.maps.stats().unwrap();
        let (ret, out) = self.try_run(prog, frame, ctx).expect("test run");
        let after = self.maps.stats().unwrap();
        let moved: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|r| after.get(*r).packets != before.get(*r).packets)
            .collect();
        assert_eq!(moved.len(), 1, "exactly one counter must move, moved: {moved:?}");
        let r = moved[0];
        assert_eq!(after.get(r).packets, before.get(r).packets + 1);
        assert_eq!(after.get(r).bytes, before.get(r).bytes + frame.len() as u64);
        (ret, out, r)
    }

    fn try_run(&self, prog: &str, frame: &[u8], ctx: Option<&[u8]>) -> Result<(u32, Vec<u8>), String> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx_out = vec![0u8; 192];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ctx_out: ctx.map(|_| ctx_out.as_mut_slice()),
            ..Default::default()
        };
        let program = self.ebpf.program(prog).unwrap();
        let result = if prog == XDP_GUARD {
            let p: &Xdp = program.try_into().unwrap();
            p.test_run(opts)
        } else {
            let p: &SchedClassifier = program.try_into().unwrap();
            p.test_run(opts)
        }
        .map_err(|e| format!("{e:?}"))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }
}

impl Lab {
    fn underlay(&mut self) -> HashMap<&mut aya::maps::MapData, [u8; 4], UnderlayHop> {
        HashMap::try_from(self.ebpf.map_mut(map_names::UNDERLAY).expect("UNDERLAY map")).unwrap()
    }

    /// What the programs would have cached `age` ago for `node`.
    fn cache_underlay(&mut self, node: Ipv4Addr, dst_mac: [u8; 6], age_ns: u64) -> UnderlayHop {
        let hop = UnderlayHop {
            dst_mac,
            src_mac: UPLINK_MAC,
            _pad: [0; 4],
            refreshed_ns: coarse_now_ns() - age_ns,
        };
        self.underlay().insert(node.octets(), hop, 0).unwrap();
        hop
    }

    fn cached_underlay(&mut self, node: Ipv4Addr) -> Option<UnderlayHop> {
        self.underlay().get(&node.octets(), 0).ok()
    }
}

/// BPF_PROG_TEST_RUN itself rejects (EINVAL) frames shorter than an
/// Ethernet header, and IPv4/IPv6 frames shorter than the fixed IP header:
/// such skbs cannot reach a TC program from a real device either.
fn kernel_refuses(frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return true;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => frame.len() < 14 + 20,
        0x86dd => frame.len() < 14 + 40,
        _ => false,
    }
}

/// A frame from a local pod (to the bridge's MAC) carrying `l4` to `dst`.
fn from_pod(dst: Ipv4Addr, proto: u8, l4: &[u8], ttl: u8) -> Vec<u8> {
    let ip = Ipv4::new(LOCAL_POD, dst, proto).ttl(ttl).build(l4);
    eth(BRIDGE_MAC, POD_MAC, ETH_P_IP, &ip)
}

/// A frame the host sends via the cluster route (to our own VtepMAC).
fn from_host(dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
    let ip = Ipv4::new(Ipv4Addr::new(10, 42, 1, 1), dst, 1).build(l4);
    eth(OUR_VTEP, BRIDGE_MAC, ETH_P_IP, &ip)
}

struct Vx {
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    dport: u16,
    vni: u32,
    inner_dst_mac: [u8; 6],
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
    inner_ttl: u8,
    outer: Option<Ipv4>,
}

impl Default for Vx {
    fn default() -> Self {
        Vx {
            outer_src: PEER_IP,
            outer_dst: OUR_IP,
            dport: PORT,
            vni: VNI,
            inner_dst_mac: OUR_VTEP,
            inner_src: REMOTE_POD,
            inner_dst: LOCAL_POD,
            inner_ttl: 63,
            outer: None,
        }
    }
}

impl Vx {
    fn inner_ip(&self) -> Vec<u8> {
        Ipv4::new(self.inner_src, self.inner_dst, 1).ttl(self.inner_ttl).build(&icmp_echo(7, 1, b"hello overlay"))
    }
    fn frame(&self) -> Vec<u8> {
        let inner = eth(self.inner_dst_mac, PEER_VTEP, ETH_P_IP, &self.inner_ip());
        let mut outer = self.outer.clone().unwrap_or_else(|| Ipv4::new(self.outer_src, self.outer_dst, 17));
        outer.df = false;
        let ip = outer.build(&udp(40000, self.dport, &vxlan(self.vni, &inner)));
        eth(UPLINK_MAC, UNDERLAY_GW_MAC, ETH_P_IP, &ip)
    }
}

/// Checks an encapsulated frame against what flannel.1 would send for
/// `original` (a frame as it entered), with the inner TTL lowered by
/// `ttl_drop`. Returns the UDP source port.
fn assert_vxlan_of(out: &[u8], original: &[u8], ttl_drop: u8, outer_dst: Ipv4Addr) -> u16 {
    assert_eq!(out.len(), original.len() + 50, "50 bytes of VXLAN overhead");
    let outer = &out[14..34];
    assert_eq!(&out[12..14], &ETH_P_IP.to_be_bytes());
    assert_eq!(outer[0], 0x45, "outer IPv4 without options");
    assert_eq!(outer[1], 0, "outer TOS");
    assert_eq!(u16::from_be_bytes([outer[2], outer[3]]) as usize, out.len() - 14, "outer total length");
    assert_eq!(u16::from_be_bytes([outer[6], outer[7]]), 0, "DF clear, not a fragment (as kernel VXLAN)");
    assert_eq!(outer[8], 64, "outer TTL");
    assert_eq!(outer[9], 17, "UDP");
    assert!(ipv4_header_ok(outer), "outer header checksum");
    assert_eq!(&outer[12..16], &OUR_IP.octets());
    assert_eq!(&outer[16..20], &outer_dst.octets());
    let udp = &out[34..42];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!((32768..=60999).contains(&sport), "source port {sport} in the ephemeral range");
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), PORT);
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, out.len() - 34, "UDP length");
    assert_eq!(&udp[6..8], &[0, 0], "UDP checksum 0");
    assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 0, VNI as u8, 0], "VXLAN header");
    assert_eq!(&out[50..56], &PEER_VTEP, "inner destination MAC = peer VtepMAC");
    assert_eq!(&out[56..62], &OUR_VTEP, "inner source MAC = our VtepMAC");
    assert_eq!(&out[62..64], &ETH_P_IP.to_be_bytes());
    let mut expected_inner = original[14..].to_vec();
    expected_inner[8] -= ttl_drop;
    let hl = ((expected_inner[0] & 0x0f) as usize) * 4;
    expected_inner[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&expected_inner[..hl]);
    expected_inner[10..12].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(&out[64..], &expected_inner[..], "inner packet: TTL and checksum updated, rest unchanged");
    sport
}

#[test]
fn encapsulates_icmp_tcp_udp_from_pods_like_flannel() {
    let lab = Lab::new();
    let payloads: [(u8, Vec<u8>); 3] = [
        (1, icmp_echo(1, 1, &[0xab; 56])),
        (6, tcp(43210, 80, b"GET / HTTP/1.1\r\n\r\n")),
        (17, udp(5353, 53, &[0x42; 33])),
    ];
    for (proto, l4) in payloads {
        let frame = from_pod(REMOTE_POD, proto, &l4, 64);
        let (ret, out, reason) = lab.run(FROM_PODS, &frame);
        assert_eq!(ret, TC_ACT_REDIRECT, "proto {proto}");
        assert_eq!(reason, Reason::Encapsulated);
        assert_vxlan_of(&out, &frame, 1, PEER_IP);
    }
}

#[test]
fn host_traffic_is_encapsulated_without_ttl_change() {
    let lab = Lab::new();
    let frame = from_host(REMOTE_POD, &icmp_echo(1, 1, b"from the node"));
    let (ret, out, reason) = lab.run(FROM_HOST, &frame);
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::Encapsulated));
    assert_vxlan_of(&out, &frame, 0, PEER_IP);
}

#[test]
fn source_port_follows_the_flow() {
    let lab = Lab::new();
    let port_of = |sport: u16| {
        let frame = from_pod(REMOTE_POD, 6, &tcp(sport, 80, b"x"), 64);
        let (_, out, _) = lab.run(FROM_PODS, &frame);
        u16::from_be_bytes([out[34], out[35]])
    };
    assert_eq!(port_of(1000), port_of(1000), "same flow, same outer port");
    let distinct: std::collections::HashSet<u16> = (1000..1032).map(port_of).collect();
    assert!(distinct.len() > 8, "different flows spread over outer ports: {distinct:?}");
}

#[test]
fn outer_ip_id_varies() {
    let lab = Lab::new();
    let frame = from_pod(REMOTE_POD, 1, &icmp_echo(1, 1, b"id"), 64);
    let ids: std::collections::HashSet<u16> = (0..16)
        .map(|_| {
            let (_, out, _) = lab.run(FROM_PODS, &frame);
            u16::from_be_bytes([out[18], out[19]])
        })
        .collect();
    assert!(ids.len() > 1, "outer IP ID must not be constant");
}

#[test]
fn oversized_pod_packets_go_to_the_kernel_untouched() {
    // Without GSO a frame this size cannot fit the uplink once encapsulated:
    // the kernel must fragment it or answer frag-needed. (GSO super-packets
    // cannot be built by BPF_PROG_TEST_RUN, which sets no GSO type; the
    // netns tests carry real ones.)
    let lab = Lab::new();
    let frame = from_pod(REMOTE_POD, 6, &tcp(43210, 80, &vec![0x5a; 3000]), 64);
    let (ret, out, reason) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, reason), (TC_ACT_OK, Reason::PassedToKernel));
    assert_eq!(out, frame);
}

#[test]
fn decapsulates_to_a_known_pod_with_its_mac() {
    let lab = Lab::new();
    let vx = Vx::default();
    let (ret, out, reason) = lab.run(FROM_UPLINK, &vx.frame());
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::DecapToPod));
    let mut inner = vx.inner_ip();
    inner[8] -= 1;
    inner[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&inner[..20]);
    inner[10..12].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(out, eth(POD_MAC, BRIDGE_MAC, ETH_P_IP, &inner));
}

#[test]
fn decapsulates_to_the_host_stack_when_the_pod_is_unknown() {
    let lab = Lab::new();
    let vx = Vx { inner_dst: UNKNOWN_LOCAL_POD, ..Default::default() };
    let (ret, out, reason) = lab.run(FROM_UPLINK, &vx.frame());
    assert_eq!((ret, reason), (TC_ACT_OK, Reason::DecapToHost));
    assert_eq!(out, eth(UPLINK_MAC, UNDERLAY_GW_MAC, ETH_P_IP, &vx.inner_ip()), "untouched inner packet");
}

#[test]
fn decapsulates_despite_outer_ip_options() {
    let lab = Lab::new();
    let mut outer = Ipv4::new(PEER_IP, OUR_IP, 17);
    outer.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let vx = Vx { outer: Some(outer), ..Default::default() };
    let (ret, out, reason) = lab.run(FROM_UPLINK, &vx.frame());
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::DecapToPod));
    assert_eq!(out.len(), 14 + vx.inner_ip().len());
}

#[test]
fn inner_ttl_one_goes_to_the_kernel_for_time_exceeded() {
    let lab = Lab::new();
    let frame = from_pod(REMOTE_POD, 1, &icmp_echo(1, 1, b"ttl"), 1);
    let (ret, out, reason) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, reason), (TC_ACT_OK, Reason::PassedToKernel));
    assert_eq!(out, frame, "untouched");
    let vx = Vx { inner_ttl: 1, ..Default::default() };
    let (ret, _, reason) = lab.run(FROM_UPLINK, &vx.frame());
    assert_eq!((ret, reason), (TC_ACT_OK, Reason::DecapToHost));
}

#[test]
fn each_drop_reason() {
    let lab = Lab::new();
    let cases: Vec<(&str, Vx, u32, Reason)> = vec![
        ("unknown sender", Vx { outer_src: STRANGER_IP, ..Default::default() }, TC_ACT_SHOT, Reason::DropUnknownSender),
        (
            "inner source outside the sender's lease",
            Vx { inner_src: Ipv4Addr::new(10, 42, 5, 1), ..Default::default() },
            TC_ACT_SHOT,
            Reason::DropSpoofedSource,
        ),
        (
            "inner source of another node's lease",
            Vx { inner_src: DIRECT_POD, ..Default::default() },
            TC_ACT_SHOT,
            Reason::DropSpoofedSource,
        ),
        ("wrong VNI", Vx { vni: 2, ..Default::default() }, TC_ACT_SHOT, Reason::DropBadVni),
        (
            "inner MAC not our VtepMAC",
            Vx { inner_dst_mac: [2, 2, 2, 2, 2, 2], ..Default::default() },
            TC_ACT_SHOT,
            Reason::DropWrongVtepMac,
        ),
        ("another UDP port", Vx { dport: 4789, ..Default::default() }, TC_ACT_OK, Reason::PassedNotOurs),
        (
            "to another address",
            Vx { outer_dst: Ipv4Addr::new(192, 168, 77, 50), ..Default::default() },
            TC_ACT_OK,
            Reason::PassedNotOurs,
        ),
    ];
    for (what, vx, verdict, reason) in cases {
        let (ret, _, r) = lab.run(FROM_UPLINK, &vx.frame());
        assert_eq!((ret, r), (verdict, reason), "{what}");
    }

    // VXLAN without the I flag.
    let mut frame = Vx::default().frame();
    frame[42] = 0;
    assert_eq!(lab.run(FROM_UPLINK, &frame).2, Reason::DropMalformed);
    // Inner frame that is not IPv4.
    let inner = eth(OUR_VTEP, PEER_VTEP, ETH_P_ARP, &[0u8; 28]);
    let ip = Ipv4::new(PEER_IP, OUR_IP, 17).build(&udp(40000, PORT, &vxlan(VNI, &inner)));
    assert_eq!(lab.run(FROM_UPLINK, &eth(UPLINK_MAC, UNDERLAY_GW_MAC, ETH_P_IP, &ip)).2, Reason::DropMalformed);

    // Egress: the host to a cluster address nobody leases.
    let frame = from_host(Ipv4Addr::new(10, 42, 200, 1), b"nobody");
    assert_eq!(lab.run(FROM_HOST, &frame).0, TC_ACT_SHOT);
    assert_eq!(lab.run(FROM_HOST, &frame).2, Reason::DropNoRoute);
    // The host's own frame that cannot fit the uplink once encapsulated.
    let big = from_host(REMOTE_POD, &vec![0u8; 1460]);
    assert_eq!(lab.run(FROM_HOST, &big).2, Reason::DropTooBig);
    // A pod's: handed to the kernel (which fragments or says frag-needed).
    let big = from_pod(REMOTE_POD, 17, &udp(1, 2, &vec![0u8; 1440]), 64);
    let (ret, out, r) = lab.run(FROM_PODS, &big);
    assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedToKernel));
    assert_eq!(out, big);
    // Exactly the largest that fits is encapsulated.
    let fits = from_pod(REMOTE_POD, 17, &udp(1, 2, &vec![0u8; 1500 - 50 - 28]), 64);
    assert_eq!(lab.run(FROM_PODS, &fits).2, Reason::Encapsulated);
}

#[test]
fn what_is_not_ours_passes_untouched() {
    let lab = Lab::new();
    let arp = eth([0xff; 6], POD_MAC, ETH_P_ARP, &[0u8; 28]);
    let vlan = {
        let ip = Ipv4::new(LOCAL_POD, REMOTE_POD, 1).build(&icmp_echo(1, 1, b"v"));
        let mut tagged = vec![0x00, 0x64];
        tagged.extend_from_slice(&ETH_P_IP.to_be_bytes());
        tagged.extend_from_slice(&ip);
        eth(BRIDGE_MAC, POD_MAC, ETH_P_8021Q, &tagged)
    };
    let ipv6 = eth(BRIDGE_MAC, POD_MAC, 0x86dd, &[0x60; 60]);
    let local = from_pod(Ipv4Addr::new(10, 42, 1, 1), 1, &icmp_echo(1, 1, b"gw"), 64);
    let internet = from_pod(Ipv4Addr::new(10, 99, 0, 1), 1, &icmp_echo(1, 1, b"out"), 64);
    let mut fragment = Ipv4::new(PEER_IP, OUR_IP, 17);
    fragment.mf = true;
    let frag = eth(UPLINK_MAC, UNDERLAY_GW_MAC, ETH_P_IP, &fragment.build(&udp(1, PORT, &[0u8; 64])));
    for (prog, frame) in [
        (FROM_PODS, &arp),
        (FROM_PODS, &vlan),
        (FROM_PODS, &ipv6),
        (FROM_PODS, &local),
        (FROM_PODS, &internet),
        (FROM_HOST, &local),
        (FROM_UPLINK, &arp),
        (FROM_UPLINK, &vlan),
        (FROM_UPLINK, &frag),
    ] {
        let (ret, out, r) = lab.run(prog, frame);
        assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedNotOurs), "{prog}");
        assert_eq!(&out, frame, "{prog}: untouched");
    }
}

#[test]
fn direct_peers_are_routed_without_encapsulation() {
    let lab = Lab::new();
    let frame = from_pod(DIRECT_POD, 1, &icmp_echo(1, 1, b"direct"), 64);
    let (ret, out, reason) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::DirectRouted));
    assert_eq!(out.len(), frame.len());
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert!(ipv4_header_ok(&out[14..]));
    let host = from_host(DIRECT_POD, b"direct");
    let (ret, out, reason) = lab.run(FROM_HOST, &host);
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::DirectRouted));
    assert_eq!(out, host, "host traffic leaves as it is");
}

#[test]
fn a_fresh_underlay_hop_gives_the_frame_its_macs_without_a_route_lookup() {
    let mut lab = Lab::new();
    lab.cache_underlay(PEER_IP, UNDERLAY_GW_MAC, 0);
    lab.cache_underlay(DIRECT_PEER_IP, PEER_VTEP, 0);

    let frame = from_pod(REMOTE_POD, 17, &udp(5353, 53, &[0x42; 33]), 64);
    let (ret, out, reason) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::Encapsulated));
    assert_vxlan_of(&out, &frame, 1, PEER_IP);
    assert_eq!(&out[0..6], &UNDERLAY_GW_MAC, "outer destination MAC from the cache");
    assert_eq!(&out[6..12], &UPLINK_MAC, "outer source MAC from the cache");

    let host = from_host(REMOTE_POD, &icmp_echo(1, 1, b"from the node"));
    let (ret, out, reason) = lab.run(FROM_HOST, &host);
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::Encapsulated));
    assert_vxlan_of(&out, &host, 0, PEER_IP);
    assert_eq!(&out[0..12], &[UNDERLAY_GW_MAC, UPLINK_MAC].concat());

    let direct = from_pod(DIRECT_POD, 1, &icmp_echo(1, 1, b"direct"), 64);
    let (ret, out, reason) = lab.run(FROM_PODS, &direct);
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::DirectRouted));
    assert_eq!(&out[0..12], &[PEER_VTEP, UPLINK_MAC].concat(), "MACs towards the direct peer");
    assert_eq!(&out[12..14], &ETH_P_IP.to_be_bytes());
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert!(ipv4_header_ok(&out[14..]));
    assert_eq!(&out[14..14 + 8], &direct[14..14 + 8]);
    assert_eq!(&out[14 + 12..], &direct[14 + 12..], "only the TTL and the checksum change");
}

#[test]
fn a_stale_underlay_hop_is_not_used_but_looked_up_again() {
    let mut lab = Lab::new();
    let stale = lab.cache_underlay(PEER_IP, UNDERLAY_GW_MAC, 2_000_000_000);
    let frame = from_pod(REMOTE_POD, 1, &icmp_echo(1, 1, b"stale"), 64);
    let (ret, out, reason) = lab.run(FROM_PODS, &frame);
    // bpf_redirect_neigh fills the MACs in later; the program leaves the
    // frame's own (the pod's frame to the bridge) in place.
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::Encapsulated));
    assert_vxlan_of(&out, &frame, 1, PEER_IP);
    assert_eq!(&out[0..12], &frame[0..12], "a stale entry's MACs are not used");
    // The test run's uplink is `lo`, which has no route to the peer: the
    // lookup fails and the entry is dropped rather than kept stale.
    assert_eq!(lab.cached_underlay(PEER_IP), None, "stale entry {stale:?} not dropped");

    // Nothing cached at all: the same slow path, and still nothing cached.
    let (ret, out, _) = lab.run(FROM_PODS, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(&out[0..12], &frame[0..12]);
    assert_eq!(lab.cached_underlay(PEER_IP), None);
}

#[test]
fn nothing_happens_before_the_agent_configures_the_node() {
    let (ebpf, maps) = load_unattached().unwrap();
    let lab = Lab::unconfigured(ebpf, maps);
    let frame = from_pod(REMOTE_POD, 1, &icmp_echo(1, 1, b"early"), 64);
    let (ret, out, r) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedToKernel));
    assert_eq!(out, frame);
}

#[test]
fn truncated_frames_at_every_length() {
    let lab = Lab::new();
    let cases = [
        (FROM_UPLINK, Vx::default().frame(), 14 + 20 + 8 + 8 + 14 + 20),
        (FROM_PODS, from_pod(REMOTE_POD, 6, &tcp(1, 2, b"payload"), 64), 14 + 20),
        (FROM_HOST, from_host(REMOTE_POD, b"payload"), 14 + 20),
    ];
    let allowed = [
        (TC_ACT_OK, Reason::PassedNotOurs),
        (TC_ACT_OK, Reason::PassedToKernel),
        (TC_ACT_SHOT, Reason::DropMalformed),
        (TC_ACT_SHOT, Reason::DropError),
    ];
    assert_truncations_are_harmless(&lab, &cases, &allowed);
}

/// Runs every truncation of each `(program, frame, headers)` case: a frame
/// cut inside its first `headers` bytes gets one of the `allowed`
/// verdicts, and passes untouched if it passes. A frame cut inside the
/// payload only is still a valid packet to the programs (they never read
/// the payload).
fn assert_truncations_are_harmless(lab: &Lab, cases: &[(&str, Vec<u8>, usize)], allowed: &[(u32, Reason)]) {
    for (prog, full, headers) in cases {
        for len in 0..full.len() {
            let cut = &full[..len];
            if kernel_refuses(cut) {
                assert!(lab.try_run(prog, cut, None).is_err(), "{prog} len {len} accepted");
                continue;
            }
            let (ret, out, r) = lab.run(prog, cut);
            assert!(allowed.contains(&(ret, r)) || len >= *headers, "{prog} len {len}: verdict {ret} reason {r:?}");
            if ret == TC_ACT_OK && len < *headers {
                assert_eq!(out, cut, "{prog} len {len}: passed frames are untouched");
            }
        }
    }
}

#[test]
fn xdp_guard_drops_only_strangers() {
    let lab = Lab::new();
    let stranger = Vx { outer_src: STRANGER_IP, ..Default::default() }.frame();
    let (ret, _, r) = lab.run(XDP_GUARD, &stranger);
    assert_eq!((ret, r), (XDP_DROP, Reason::DropUnknownSender));
    for frame in [Vx::default().frame(), Vx { dport: 53, outer_src: STRANGER_IP, ..Default::default() }.frame()] {
        let (ret, _) = lab.try_run(XDP_GUARD, &frame, None).unwrap();
        assert_eq!(ret, XDP_PASS);
    }
}

/// `--xdp-decap`: the uplink's XDP program applies decap.rs's checks and
/// hands on the bare inner frame, marked in its XDP metadata (test runs of
/// XDP return the metadata in front of the frame).
#[test]
fn xdp_decap_checks_strips_and_marks_our_vxlan() {
    let lab = Lab::with(NodeConfig { xdp_decap: true, ..node_config() });
    let honest = Vx::default();
    let (ret, out) = lab.try_run(XDP_GUARD, &honest.frame(), None).unwrap();
    assert_eq!(ret, XDP_PASS);
    let mut expected = XDP_DECAP_MARK.to_ne_bytes().to_vec();
    expected.extend(eth(OUR_VTEP, PEER_VTEP, ETH_P_IP, &honest.inner_ip()));
    assert_eq!(out, expected, "the mark, then the inner frame exactly as the peer wrote it");

    let refused = [
        (Vx { outer_src: STRANGER_IP, ..Default::default() }, Reason::DropUnknownSender),
        (Vx { vni: VNI + 1, ..Default::default() }, Reason::DropBadVni),
        (Vx { inner_dst_mac: [0x0e, 9, 9, 9, 9, 9], ..Default::default() }, Reason::DropWrongVtepMac),
        (Vx { inner_src: Ipv4Addr::new(10, 42, 99, 9), ..Default::default() }, Reason::DropSpoofedSource),
    ];
    for (vx, reason) in refused {
        let (ret, _, r) = lab.run(XDP_GUARD, &vx.frame());
        assert_eq!((ret, r), (XDP_DROP, reason), "{reason:?}");
    }
    // Not our port, and fragments: untouched, no mark, for the kernel.
    let mut fragment = Ipv4::new(PEER_IP, OUR_IP, 17);
    fragment.mf = true;
    fragment.df = false;
    for frame in [Vx { dport: 53, ..Default::default() }.frame(), Vx { outer: Some(fragment), ..Default::default() }.frame()] {
        let (ret, out) = lab.try_run(XDP_GUARD, &frame, None).unwrap();
        assert_eq!((ret, out), (XDP_PASS, frame));
    }
}

/// 100,000 random and mutated frames, v4 and v6, on a dual-stack node:
/// every verdict is one the kernel accepts from that program, and every run
/// lands in exactly one counter.
#[test]
fn randomized_frames_never_confuse_the_programs() {
    let lab = Lab::dual();
    let mut rng = StdRng::seed_from_u64(0x0e4a_7ee5);
    let seeds = [
        Vx::default().frame(),
        Vx { inner_dst: UNKNOWN_LOCAL_POD, ..Default::default() }.frame(),
        from_pod(REMOTE_POD, 6, &tcp(1, 2, &[7u8; 100]), 64),
        from_pod(DIRECT_POD, 17, &udp(1, 2, &[7u8; 100]), 64),
        from_host(REMOTE_POD, b"seed"),
        Vx6::default().frame(),
        from_pod6(LOCAL_POD6, REMOTE_POD6, 6, &tcp(1, 2, &[7u8; 100]), 64),
        from_pod6(LOCAL_POD6, DIRECT_POD6, 17, &udp(1, 2, &[7u8; 100]), 64),
        from_pod6(LOCAL_POD6, PEER_IP6, 44, &ipv6_fragment(17, 0, true, &udp(1, PORT, &[7u8; 40])), 64),
        from_host6(REMOTE_POD6, b"seed"),
        eth(POD_MAC, BRIDGE_MAC, ETH_P_IPV6, &Ipv6::new(REMOTE_POD6, LOCAL_POD6, 17).build(&udp(1, 2, b"q"))),
    ];
    let progs = [FROM_PODS, TO_PODS, FROM_HOST, FROM_TUNNEL, FROM_UPLINK];
    let before = lab.maps.stats().unwrap();
    let mut runs = 0u64;
    let mut verdicts = std::collections::HashMap::new();
    for i in 0..100_000u32 {
        let frame: Vec<u8> = if i % 4 == 0 {
            let len = rng.random_range(14..300);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut f = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..f.len());
                f[at] = rng.random();
            }
            if rng.random_bool(0.2) {
                let keep = rng.random_range(14..=f.len());
                f.truncate(keep);
            }
            f
        };
        let prog = progs[rng.random_range(0..progs.len())];
        if kernel_refuses(&frame) {
            assert!(lab.try_run(prog, &frame, None).is_err());
            continue;
        }
        let (ret, _) = lab.try_run(prog, &frame, None).expect("test run");
        assert!(
            matches!(ret, TC_ACT_OK | TC_ACT_SHOT | TC_ACT_REDIRECT),
            "{prog} returned {ret} for {frame:02x?}"
        );
        *verdicts.entry(ret).or_insert(0u32) += 1;
        runs += 1;
    }
    let after = lab.maps.stats().unwrap();
    let counted: u64 = Reason::ALL.iter().map(|r| after.get(*r).packets - before.get(*r).packets).sum();
    assert_eq!(counted, runs, "every run is counted exactly once");
    assert!(verdicts.len() == 3, "all three verdicts seen: {verdicts:?}");
}

/// Several leases may name one PublicIP (two flanneld behind one address,
/// a lease written by hand, a subnet moving between nodes): VXLAN from that
/// address is accepted with an inner source in each of them and in no other
/// lease, and an address no lease names any more is a stranger.
#[test]
fn a_public_ip_may_send_from_every_lease_that_names_it() {
    let mut lab = Lab::new();
    let second: ipnet::Ipv4Net = "10.42.4.0/24".parse().unwrap();
    let second_pod = Ipv4Addr::new(10, 42, 4, 7);
    lab.maps.upsert_peer(&Peer { subnet: second, public_ip: PEER_IP, vtep_mac: PEER_VTEP, mode: Mode::Vxlan }).unwrap();
    for src in [REMOTE_POD, second_pod] {
        let (ret, _, r) = lab.run(FROM_UPLINK, &Vx { inner_src: src, ..Default::default() }.frame());
        assert_eq!((ret, r), (TC_ACT_REDIRECT, Reason::DecapToPod), "from {src}: both leases name {PEER_IP}");
    }
    let (ret, _, r) = lab.run(FROM_UPLINK, &Vx { inner_src: DIRECT_POD, ..Default::default() }.frame());
    assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropSpoofedSource), "a lease naming another node");

    // One of the two goes: the other is still accepted.
    lab.maps.remove_peer(second).unwrap();
    let (_, _, r) = lab.run(FROM_UPLINK, &Vx { inner_src: second_pod, ..Default::default() }.frame());
    assert_eq!(r, Reason::DropSpoofedSource, "the removed lease");
    let (_, _, r) = lab.run(FROM_UPLINK, &Vx::default().frame());
    assert_eq!(r, Reason::DecapToPod, "the remaining lease");

    // The remaining lease changes its PublicIP: the old address is a stranger.
    let moved = Ipv4Addr::new(192, 168, 77, 13);
    lab.maps
        .upsert_peer(&Peer { subnet: "10.42.2.0/24".parse().unwrap(), public_ip: moved, vtep_mac: PEER_VTEP, mode: Mode::Vxlan })
        .unwrap();
    let (ret, _, r) = lab.run(FROM_UPLINK, &Vx::default().frame());
    assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropUnknownSender), "from the lease's old PublicIP");
    let (ret, _, r) = lab.run(XDP_GUARD, &Vx::default().frame());
    assert_eq!((ret, r), (XDP_DROP, Reason::DropUnknownSender), "the XDP guard too");
    let (ret, _, r) = lab.run(FROM_UPLINK, &Vx { outer_src: moved, ..Default::default() }.frame());
    assert_eq!((ret, r), (TC_ACT_REDIRECT, Reason::DecapToPod), "from its new PublicIP");
    assert_eq!(
        lab.maps.nodes().unwrap().iter().map(|n| (n.public_ip, n.leases)).collect::<Vec<_>>(),
        [(DIRECT_PEER_IP, 1), (moved, 1)],
        "senders: one per PublicIP a lease names, with how many name it"
    );
}

/// The peer maps' API against a model of what they must hold, on real
/// maps: random upserts (PublicIPs from a small pool, so they are shared
/// and move), removals, and full reconciles to a random set (a reconcile
/// to what the maps already hold writes nothing). After each, `SUBNETS`
/// holds exactly the model's peers and `NODES` each PublicIP they name,
/// with how many name it. (Maps torn as a SIGKILL between two writes
/// leaves them: tests/tests/lease_state.rs.)
#[test]
fn peer_maps_equal_their_model_after_any_sequence() {
    let seed: u64 = std::env::var("OVERLAY_MODEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("peer maps model: seed {seed} (OVERLAY_MODEL_SEED replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let (_ebpf, mut maps) = load_unattached().expect("load the BPF object (needs root)");
    let mut model: std::collections::BTreeMap<ipnet::Ipv4Net, Peer> = Default::default();
    let random_peer = |rng: &mut StdRng| Peer {
        subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 42, rng.random_range(0..20), 0), 24).unwrap(),
        public_ip: Ipv4Addr::new(192, 168, 77, rng.random_range(100..105)),
        vtep_mac: [0x0e, 0, 0, 0, 0, rng.random_range(0..3)],
        mode: if rng.random_bool(0.8) { Mode::Vxlan } else { Mode::Direct },
    };
    for step in 0..2000 {
        match rng.random_range(0..20) {
            0..=10 => {
                let p = random_peer(&mut rng);
                maps.upsert_peer(&p).unwrap();
                model.insert(p.subnet, p);
            }
            11..=17 => {
                let p = random_peer(&mut rng);
                maps.remove_peer(p.subnet).unwrap();
                model.remove(&p.subnet);
            }
            18 => {
                model = (0..rng.random_range(0..8)).map(|_| random_peer(&mut rng)).map(|p| (p.subnet, p)).collect();
                maps.reconcile_peers(&model).unwrap();
            }
            _ => {
                // The maps already hold the model: a reconcile writes nothing.
                let changes = maps.reconcile_peers(&model).unwrap();
                assert_eq!(changes, Default::default(), "step {step} (seed {seed})");
            }
        }
        let mut senders: std::collections::BTreeMap<Ipv4Addr, u32> = Default::default();
        for p in model.values() {
            *senders.entry(p.public_ip).or_default() += 1;
        }
        assert_eq!(maps.peers().unwrap(), model.values().copied().collect::<Vec<_>>(), "SUBNETS after step {step} (seed {seed})");
        let nodes: Vec<(Ipv4Addr, u32)> = maps.nodes().unwrap().iter().map(|n| (n.public_ip, n.leases)).collect();
        assert_eq!(nodes, senders.into_iter().collect::<Vec<_>>(), "NODES after step {step} (seed {seed})");
    }
}

/// `--public-ip` naming a NAT's address: the tunnel's local address stays
/// the uplink's (flannel.1's `local`), so what we send leaves from it (the
/// NAT makes it the PublicIP), and what peers send to the PublicIP arrives
/// at it; VXLAN to the PublicIP itself (a second address of this host) is
/// accepted too.
#[test]
fn behind_a_nat_the_tunnel_uses_the_uplinks_address() {
    let nat_public = Ipv4Addr::new(203, 0, 113, 10);
    let lab = Lab::with(NodeConfig { public_ip: nat_public, ..node_config() });
    let frame = from_pod(REMOTE_POD, 1, &icmp_echo(1, 1, b"through the NAT"), 64);
    let (ret, out, r) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, r), (TC_ACT_REDIRECT, Reason::Encapsulated));
    assert_vxlan_of(&out, &frame, 1, PEER_IP); // outer source: OUR_IP, the uplink's
    for dst in [OUR_IP, nat_public] {
        let (ret, _, r) = lab.run(FROM_UPLINK, &Vx { outer_dst: dst, ..Default::default() }.frame());
        assert_eq!((ret, r), (TC_ACT_REDIRECT, Reason::DecapToPod), "VXLAN to {dst}");
        let stranger = Vx { outer_dst: dst, outer_src: STRANGER_IP, ..Default::default() }.frame();
        assert_eq!(lab.run(FROM_UPLINK, &stranger).2, Reason::DropUnknownSender, "a stranger's to {dst}");
        assert_eq!(lab.run(XDP_GUARD, &stranger).2, Reason::DropUnknownSender, "XDP: a stranger's to {dst}");
    }
    let elsewhere = Vx { outer_dst: Ipv4Addr::new(192, 168, 77, 50), ..Default::default() }.frame();
    assert_eq!(lab.run(FROM_UPLINK, &elsewhere).2, Reason::PassedNotOurs);
    // Pods may reach neither address's VXLAN port.
    for node in [OUR_IP, nat_public] {
        let frame = from_pod_at(LOCAL_POD, node, &udp(40000, PORT, &vxlan(VNI, &[0u8; 40])), 17);
        assert_eq!(lab.run(FROM_PODS, &frame).2, Reason::DropPodToTunnelPort, "to {node}");
    }
}

/// A pod packet with `src`, arriving at the gateway (from_pods).
fn from_pod_at(src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8], proto: u8) -> Vec<u8> {
    eth(BRIDGE_MAC, POD_MAC, ETH_P_IP, &Ipv4::new(src, dst, proto).build(l4))
}

/// VXLAN from the peer carrying `inner` (IPv4) to us.
fn vxlan_from_peer(inner: &[u8]) -> Vec<u8> {
    let inner = eth(OUR_VTEP, PEER_VTEP, ETH_P_IP, inner);
    let mut outer = Ipv4::new(PEER_IP, OUR_IP, 17);
    outer.df = false;
    eth(UPLINK_MAC, UNDERLAY_GW_MAC, ETH_P_IP, &outer.build(&udp(40000, PORT, &vxlan(VNI, &inner))))
}

#[test]
fn a_pod_may_only_send_from_its_own_address() {
    // On a pod's veth (the frames arrive on ifindex 1, and the bridge is
    // elsewhere), the endpoint map names the veth of each known pod.
    let mut lab = Lab::new();
    let neighbour = Ipv4Addr::new(10, 42, 1, 6);
    lab.maps.upsert_endpoint(&PodEndpoint { ip: neighbour, ifindex: 7, mac: [2, 0, 0, 0, 0, 6] }).unwrap();
    let l4 = udp(1000, 2000, b"who am i");
    let (_, _, r) = lab.run(FROM_PODS, &from_pod_at(LOCAL_POD, REMOTE_POD, &l4, 17));
    assert_eq!(r, Reason::Encapsulated, "its own address");
    let (_, _, r) = lab.run(FROM_PODS, &from_pod_at(UNKNOWN_LOCAL_POD, REMOTE_POD, &l4, 17));
    assert_eq!(r, Reason::Encapsulated, "an address of our lease no known pod holds (a pod not learnt yet)");
    let forgeries = [
        ("another local pod's address", neighbour),
        ("the node's address", OUR_IP),
        ("another node's pod", Ipv4Addr::new(10, 42, 2, 9)),
        ("outside the cluster", Ipv4Addr::new(192, 0, 2, 1)),
        ("our lease's network address", Ipv4Addr::new(10, 42, 1, 0)),
        ("the gateway", Ipv4Addr::new(10, 42, 1, 1)),
        ("our lease's broadcast", Ipv4Addr::new(10, 42, 1, 255)),
    ];
    for (what, src) in forgeries {
        for dst in [REMOTE_POD, Ipv4Addr::new(10, 99, 0, 1), OUR_IP] {
            let frame = from_pod_at(src, dst, &l4, 17);
            let (ret, _, r) = lab.run(FROM_PODS, &frame);
            assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropPodSpoofedSource), "{what} to {dst}");
        }
    }
    // At the bridge's own ingress (a pod whose veth has no program yet) the
    // port is unknown: any known pod's address passes the check, and the
    // kernel forwards (the bridge's netfilter may have translated it).
    let mut lab = Lab::with(NodeConfig { bridge_ifindex: 1, ..node_config() });
    lab.maps.upsert_endpoint(&PodEndpoint { ip: neighbour, ifindex: 7, mac: [2, 0, 0, 0, 0, 6] }).unwrap();
    let frame = from_pod_at(neighbour, REMOTE_POD, &l4, 17);
    let (ret, out, r) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedToKernel));
    assert_eq!(out, frame, "untouched");
    for (what, src) in &forgeries[1..] {
        let (ret, _, r) = lab.run(FROM_PODS, &from_pod_at(*src, REMOTE_POD, &l4, 17));
        assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropPodSpoofedSource), "at the bridge: {what}");
    }
    let to_tunnel = from_pod_at(LOCAL_POD, PEER_IP, &udp(40000, PORT, b"x"), 17);
    assert_eq!(lab.run(FROM_PODS, &to_tunnel).2, Reason::DropPodToTunnelPort, "at the bridge");
}

#[test]
fn a_pod_cannot_reach_a_nodes_vxlan_port() {
    let lab = Lab::new();
    for node in [PEER_IP, DIRECT_PEER_IP, OUR_IP] {
        let frame = from_pod_at(LOCAL_POD, node, &udp(40000, PORT, &vxlan(VNI, &[0u8; 40])), 17);
        let (ret, _, r) = lab.run(FROM_PODS, &frame);
        assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropPodToTunnelPort), "to {node}");
    }
    // Other ports of a node, and the port elsewhere, are not ours to stop.
    for (dst, dport) in [(PEER_IP, PORT + 1), (Ipv4Addr::new(192, 0, 2, 1), PORT)] {
        let frame = from_pod_at(LOCAL_POD, dst, &udp(40000, dport, b"fine"), 17);
        assert_eq!(lab.run(FROM_PODS, &frame).2, Reason::PassedNotOurs, "to {dst}:{dport}");
    }
}

#[test]
fn replies_of_flows_the_kernel_forwarded_go_back_through_the_kernel() {
    let lab = Lab::new();
    // The kernel routed a pod's connection (after a Service's DNAT) to a
    // remote pod through the tunnel device: from_host records it.
    let request = eth(OUR_VTEP, BRIDGE_MAC, ETH_P_IP, &Ipv4::new(LOCAL_POD, REMOTE_POD, 6).build(&tcp(5555, 8080, b"GET")));
    assert_eq!(lab.run(FROM_HOST, &request).2, Reason::Encapsulated);
    let reply = Ipv4::new(REMOTE_POD, LOCAL_POD, 6).ttl(63).build(&tcp(8080, 5555, b"200"));
    let (ret, out, r) = lab.run(FROM_UPLINK, &vxlan_from_peer(&reply));
    assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedKernelFlow), "the reply meets the kernel's conntrack");
    assert_eq!(&out[14..], &reply[..], "decapsulated, untouched");
    // Another connection between the same pods keeps the fast path.
    let other = Ipv4::new(REMOTE_POD, LOCAL_POD, 6).ttl(63).build(&tcp(8080, 5556, b"200"));
    assert_eq!(lab.run(FROM_UPLINK, &vxlan_from_peer(&other)).2, Reason::DecapToPod);

    // The kernel delivered a remote pod's connection to a local pod (after
    // a published port's DNAT): to_pods records it, and the local pod's
    // replies go to the kernel instead of being encapsulated.
    let delivered = eth(POD_MAC, BRIDGE_MAC, ETH_P_IP, &Ipv4::new(REMOTE_POD, LOCAL_POD, 17).build(&udp(7000, 53, b"q")));
    let (ret, out, r) = lab.run(TO_PODS, &delivered);
    assert_eq!((ret, r), (TC_ACT_OK, Reason::KernelDelivered));
    assert_eq!(out, delivered);
    let answer = from_pod_at(LOCAL_POD, REMOTE_POD, &udp(53, 7000, b"a"), 17);
    let (ret, out, r) = lab.run(FROM_PODS, &answer);
    assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedKernelFlow));
    assert_eq!(out, answer, "untouched");
    assert_eq!(lab.run(FROM_PODS, &from_pod_at(LOCAL_POD, REMOTE_POD, &udp(53, 7001, b"a"), 17)).2, Reason::Encapsulated);
    // A flow to a pod the agent has not learnt yet is handed to the kernel
    // by decap (no endpoint) and then delivered by it: no NAT, so the pod's
    // replies keep the fast path.
    let first = Ipv4::new(REMOTE_POD, UNKNOWN_LOCAL_POD, 17).ttl(63).build(&udp(7100, 53, b"q"));
    assert_eq!(lab.run(FROM_UPLINK, &vxlan_from_peer(&first)).2, Reason::DecapToHost);
    let delivered = eth(POD_MAC, BRIDGE_MAC, ETH_P_IP, &Ipv4::new(REMOTE_POD, UNKNOWN_LOCAL_POD, 17).ttl(62).build(&udp(7100, 53, b"q")));
    assert_eq!(lab.run(TO_PODS, &delivered).2, Reason::KernelDelivered);
    let answer = from_pod_at(UNKNOWN_LOCAL_POD, REMOTE_POD, &udp(53, 7100, b"a"), 17);
    assert_eq!(lab.run(FROM_PODS, &answer).2, Reason::Encapsulated, "not taken for a translated flow");
    // What the kernel delivers from outside the cluster or from this node
    // needs nothing: its replies never take the fast path.
    for src in [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 42, 1, 9)] {
        let f = eth(POD_MAC, BRIDGE_MAC, ETH_P_IP, &Ipv4::new(src, LOCAL_POD, 17).build(&udp(9, 53, b"q")));
        assert_eq!(lab.run(TO_PODS, &f).2, Reason::KernelDelivered);
    }
}

#[test]
fn kernel_forwarding_hands_every_pod_packet_to_the_kernel() {
    let lab = Lab::with(NodeConfig { kernel_forwarding: true, ..node_config() });
    let frame = from_pod(REMOTE_POD, 6, &tcp(1, 2, b"x"), 64);
    let (ret, out, r) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedToKernel));
    assert_eq!(out, frame);
    // Forgeries are still dropped.
    let forged = from_pod_at(OUR_IP, REMOTE_POD, &udp(1, 2, b"x"), 17);
    assert_eq!(lab.run(FROM_PODS, &forged).2, Reason::DropPodSpoofedSource);
    // VXLAN for a known pod is decapsulated but delivered by the kernel.
    assert_eq!(lab.run(FROM_UPLINK, &Vx::default().frame()).2, Reason::DecapToHost);
    // What the kernel forwarded is encapsulated as always.
    assert_eq!(lab.run(FROM_HOST, &from_host(REMOTE_POD, b"x")).2, Reason::Encapsulated);
}

#[test]
fn the_tunnel_device_trusts_nothing_without_the_sockets_metadata() {
    // A test run carries no tunnel metadata, like anything that reaches the
    // device other than through its VXLAN socket: dropped.
    let lab = Lab::new();
    let frame = eth(OUR_VTEP, PEER_VTEP, ETH_P_IP, &Ipv4::new(REMOTE_POD, LOCAL_POD, 1).build(&icmp_echo(1, 1, b"x")));
    let (ret, _, r) = lab.run(FROM_TUNNEL, &frame);
    assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropMalformed));
    let (ebpf, maps) = load_unattached().unwrap();
    let unconfigured = Lab::unconfigured(ebpf, maps);
    assert_eq!(unconfigured.run(FROM_TUNNEL, &frame).0, TC_ACT_SHOT, "nothing is trusted before the config");
}

/// /metrics keeps the pinned STATS map open between scrapes (PinnedStats)
/// and still follows the pin when a map is pinned there anew (`cleanup`,
/// then another agent's start), instead of reading the old map forever.
#[test]
fn pinned_stats_follow_a_repinned_map() {
    use aya::maps::{PerCpuArray, PerCpuValues};
    use overlay_agent::datapath::{loader::EBPF_OBJECT, PinLayout, PinnedStats};
    use overlay_common::stats::Counter;

    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/overlay-test-pinned-stats-{}", std::process::id()));
    let pins = PinLayout::new(&root);
    std::fs::create_dir_all(pins.dir()).expect("a folder on bpffs (cargo xtask setup mounts it)");
    let path = pins.map(map_names::STATS);
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    // A fresh object whose STATS is pinned in `pins`, with `packets` per CPU
    // for one reason.
    let load_pinned = |packets: u64| -> Ebpf {
        let mut ebpf = aya::EbpfLoader::new().map_pin_path(map_names::STATS, path.as_path()).load(EBPF_OBJECT).unwrap();
        set_encapsulated(&mut ebpf, packets);
        ebpf
    };
    fn set_encapsulated(ebpf: &mut Ebpf, packets: u64) {
        let mut stats: PerCpuArray<_, Counter> = PerCpuArray::try_from(ebpf.map_mut(map_names::STATS).unwrap()).unwrap();
        let n = aya::util::nr_cpus().unwrap();
        let values = PerCpuValues::try_from(vec![Counter { packets, bytes: packets * 100 }; n]).unwrap();
        stats.set(Reason::Encapsulated as u32, values, 0).unwrap();
    }

    let mut reader = PinnedStats::new(&pins);
    assert!(reader.read().is_err(), "nothing pinned yet");
    let mut first = load_pinned(1);
    assert_eq!(reader.read().unwrap().get(Reason::Encapsulated).packets, cpus);
    set_encapsulated(&mut first, 2);
    assert_eq!(reader.read().unwrap().get(Reason::Encapsulated).packets, 2 * cpus);
    // Unpinned while `first` keeps its map alive, then a new map pinned at
    // the same path: the reader must switch to it.
    std::fs::remove_file(&path).unwrap();
    let _second = load_pinned(5);
    let stats = reader.read().unwrap();
    assert_eq!(stats.get(Reason::Encapsulated).packets, 5 * cpus);
    assert_eq!(stats.get(Reason::Encapsulated).bytes, 500 * cpus);
    std::fs::remove_dir_all(&root).unwrap();
    assert!(reader.read().is_err(), "the pin is gone");
    drop(first);
}

// ---------------------------------------------------------------------------
// IPv6 (dual stack): the v6 maps and paths. The outer v6 header is written
// by overlay0's VXLAN driver from the tunnel key the programs set (the test
// run cannot show the key: tests/tests/datapath_v6.rs checks the wire), so
// here the frames handed to the driver are checked byte for byte, and every
// v6 verdict and counter.
// ---------------------------------------------------------------------------

const OUR_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x10);
const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x11);
const DIRECT_PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x12);
const STRANGER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x99);
/// flannel gives the v6 device its own VtepMAC (BackendV6Data).
const OUR_VTEP6: [u8; 6] = [0x0a, 0x11, 0x22, 0x33, 0x66, 0x01];
const PEER_VTEP6: [u8; 6] = [0x0a, 0x11, 0x22, 0x33, 0x66, 0x02];
const LOCAL_POD6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 1, 0, 0, 0, 0, 5);
const UNKNOWN_LOCAL_POD6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 1, 0, 0, 0, 0, 9);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 1, 0, 0, 0, 0, 1);
const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 2, 0, 0, 0, 0, 7);
const DIRECT_POD6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 3, 0, 0, 0, 0, 7);
const TUNNEL_IFINDEX: u32 = 1; // lo: test runs redirect nowhere

fn node_config6() -> NodeConfig6 {
    NodeConfig6 {
        local_ip: OUR_IP6,
        public_ip: OUR_IP6,
        network: "fd42::/32".parse().unwrap(),
        subnet: "fd42:0:1::/64".parse().unwrap(),
        vni: VNI,
        port: PORT,
        tunnel_ifindex: TUNNEL_IFINDEX,
        uplink_ifindex: 1,
        uplink_mtu: 1500,
        bridge_ifindex: BRIDGE_IFINDEX,
        vtep_mac: OUR_VTEP6,
        bridge_mac: BRIDGE_MAC,
        kernel_forwarding: false,
    }
}

impl Lab {
    /// A dual-stack node: the v4 lab plus a v6 lease, a v6 VXLAN peer, a
    /// v6 direct peer and a v6 pod.
    fn dual() -> Lab {
        Lab::dual_with(node_config6())
    }

    fn dual_with(cfg6: NodeConfig6) -> Lab {
        let mut lab = Lab::new();
        lab.maps6.set_config(&cfg6).unwrap();
        lab.maps6
            .upsert_peer(&Peer6 {
                subnet: "fd42:0:2::/64".parse().unwrap(),
                public_ip: PEER_IP6,
                vtep_mac: PEER_VTEP6,
                mode: Mode::Vxlan,
            })
            .unwrap();
        lab.maps6
            .upsert_peer(&Peer6 {
                subnet: "fd42:0:3::/64".parse().unwrap(),
                public_ip: DIRECT_PEER_IP6,
                vtep_mac: [0; 6],
                mode: Mode::Direct,
            })
            .unwrap();
        lab.maps6
            .upsert_endpoint(&PodEndpoint6 { ip: LOCAL_POD6, ifindex: POD_VETH_IFINDEX, mac: POD_MAC })
            .unwrap();
        lab
    }
}

fn from_pod6(src: Ipv6Addr, dst: Ipv6Addr, next_hdr: u8, l4: &[u8], hop_limit: u8) -> Vec<u8> {
    eth(BRIDGE_MAC, POD_MAC, ETH_P_IPV6, &Ipv6::new(src, dst, next_hdr).hop_limit(hop_limit).build(l4))
}

/// What the host routes to a remote v6 pod via overlay0 (NOARP: the
/// device's own MAC both ways, here our v4 VtepMAC).
fn from_host6(dst: Ipv6Addr, l4: &[u8]) -> Vec<u8> {
    eth(OUR_VTEP, OUR_VTEP, ETH_P_IPV6, &Ipv6::new(GATEWAY6, dst, IPPROTO_ICMPV6).build(l4))
}

/// v6 VXLAN as flannel-v6 sends it (the UDP checksum computed).
struct Vx6 {
    outer_src: Ipv6Addr,
    outer_dst: Ipv6Addr,
    dport: u16,
    vni: u32,
    flags: u8,
    inner_dst_mac: [u8; 6],
    inner_src: Ipv6Addr,
    inner_dst: Ipv6Addr,
}

impl Default for Vx6 {
    fn default() -> Self {
        Vx6 {
            outer_src: PEER_IP6,
            outer_dst: OUR_IP6,
            dport: PORT,
            vni: VNI,
            flags: 0x08,
            inner_dst_mac: OUR_VTEP6,
            inner_src: REMOTE_POD6,
            inner_dst: LOCAL_POD6,
        }
    }
}

impl Vx6 {
    fn inner(&self) -> Vec<u8> {
        let ip = Ipv6::new(self.inner_src, self.inner_dst, IPPROTO_ICMPV6).hop_limit(63).build(&icmpv6_echo(7, 1, b"hello v6"));
        eth(self.inner_dst_mac, PEER_VTEP6, ETH_P_IPV6, &ip)
    }

    fn frame_with(&self, inner: &[u8]) -> Vec<u8> {
        let mut vx = vxlan(self.vni, inner);
        vx[0] = self.flags;
        let mut datagram = udp(40000, self.dport, &vx);
        let sum = udp6_checksum(self.outer_src, self.outer_dst, &datagram);
        datagram[6..8].copy_from_slice(&sum.to_be_bytes());
        let ip = Ipv6::new(self.outer_src, self.outer_dst, 17).build(&datagram);
        eth(UPLINK_MAC, UNDERLAY_GW_MAC, ETH_P_IPV6, &ip)
    }

    fn frame(&self) -> Vec<u8> {
        self.frame_with(&self.inner())
    }
}

/// `frame` as it goes to overlay0's driver: between the v6 VtepMACs, the
/// hop limit lowered by `hop_drop`, nothing else changed.
fn handed_to_driver(frame: &[u8], hop_drop: u8) -> Vec<u8> {
    let mut expected = frame.to_vec();
    expected[0..6].copy_from_slice(&PEER_VTEP6);
    expected[6..12].copy_from_slice(&OUR_VTEP6);
    expected[14 + 7] -= hop_drop;
    expected
}

#[test]
fn v6_pod_packets_go_to_the_vxlan_driver_between_v6_vtep_macs() {
    let lab = Lab::dual();
    let payloads: [(u8, Vec<u8>); 3] = [
        (IPPROTO_ICMPV6, icmpv6_echo(1, 1, &[0xab; 56])),
        (6, tcp(43210, 80, b"GET / HTTP/1.1\r\n\r\n")),
        (17, udp(5353, 53, &[0x42; 33])),
    ];
    for (proto, l4) in payloads {
        let frame = from_pod6(LOCAL_POD6, REMOTE_POD6, proto, &l4, 64);
        let (ret, out, reason) = lab.run(FROM_PODS, &frame);
        assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::Encapsulated), "proto {proto}");
        assert_eq!(out, handed_to_driver(&frame, 1), "proto {proto}");
    }
    // The host's own v6 packets, already at overlay0's egress: on into the
    // driver (TC_ACT_OK), hop limit untouched.
    let frame = from_host6(REMOTE_POD6, &icmpv6_echo(1, 1, b"from the node"));
    let (ret, out, reason) = lab.run(FROM_HOST, &frame);
    assert_eq!((ret, reason), (TC_ACT_OK, Reason::Encapsulated));
    assert_eq!(out, handed_to_driver(&frame, 0));
}

#[test]
fn v6_direct_peers_are_routed_without_encapsulation() {
    let lab = Lab::dual();
    let frame = from_pod6(LOCAL_POD6, DIRECT_POD6, IPPROTO_ICMPV6, &icmpv6_echo(1, 1, b"direct"), 64);
    let (ret, out, reason) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::DirectRouted));
    let mut expected = frame.clone();
    expected[14 + 7] = 63;
    assert_eq!(out, expected, "hop limit decremented, nothing else (bpf_redirect_neigh writes the MACs)");
    let host = from_host6(DIRECT_POD6, b"direct");
    let (ret, out, reason) = lab.run(FROM_HOST, &host);
    assert_eq!((ret, reason), (TC_ACT_REDIRECT, Reason::DirectRouted));
    assert_eq!(out, host, "host traffic leaves as it is");
}

/// The router's duties for v6: what is too big once encapsulated (70 bytes
/// over IPv6) or out of hops goes to the kernel untouched, which answers
/// ICMPv6 packet too big / time exceeded.
#[test]
fn v6_too_big_or_out_of_hops_goes_to_the_kernel() {
    let lab = Lab::dual();
    let fits = from_pod6(LOCAL_POD6, REMOTE_POD6, 17, &udp(1, 2, &vec![0u8; 1500 - 70 - 48]), 64);
    assert_eq!(lab.run(FROM_PODS, &fits).2, Reason::Encapsulated, "exactly the largest that fits");
    let big = from_pod6(LOCAL_POD6, REMOTE_POD6, 17, &udp(1, 2, &vec![0u8; 1500 - 70 - 48 + 1]), 64);
    let last_hop = from_pod6(LOCAL_POD6, REMOTE_POD6, 17, &udp(1, 2, b"x"), 1);
    for frame in [&big, &last_hop] {
        let (ret, out, r) = lab.run(FROM_PODS, frame);
        assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedToKernel));
        assert_eq!(&out, frame);
    }
    // A direct peer takes the uplink's MTU whole.
    let direct = from_pod6(LOCAL_POD6, DIRECT_POD6, 17, &udp(1, 2, &vec![0u8; 1500 - 48]), 64);
    assert_eq!(lab.run(FROM_PODS, &direct).2, Reason::DirectRouted);
}

#[test]
fn v6_vxlan_from_a_peer_is_checked_and_left_to_the_vxlan_socket() {
    let lab = Lab::dual();
    let frame = Vx6::default().frame();
    let (ret, out, r) = lab.run(FROM_UPLINK, &frame);
    assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedToVxlanDriver));
    assert_eq!(out, frame, "untouched: the socket checks the UDP checksum and decapsulates");
    // To our lease's PublicIPv6 when that is another address of the host.
    let lab = Lab::dual_with(NodeConfig6 { local_ip: "fd00:77::20".parse().unwrap(), ..node_config6() });
    for dst in [OUR_IP6, "fd00:77::20".parse().unwrap()] {
        assert_eq!(lab.run(FROM_UPLINK, &Vx6 { outer_dst: dst, ..Default::default() }.frame()).2, Reason::PassedToVxlanDriver);
    }
    // The socket's frames (with metadata) cannot be made in a test run:
    // without it they are nobody's.
    let inner = Vx6::default().inner();
    assert_eq!(lab.run(FROM_TUNNEL, &inner).0, TC_ACT_SHOT);
}

#[test]
fn each_v6_drop_reason() {
    let lab = Lab::dual();
    let vx_cases: Vec<(&str, Vx6, Reason)> = vec![
        ("unknown sender", Vx6 { outer_src: STRANGER_IP6, ..Default::default() }, Reason::DropUnknownSender),
        ("a v4 node's address is no v6 sender", Vx6 { outer_src: "::ffff:192.168.77.11".parse().unwrap(), ..Default::default() }, Reason::DropUnknownSender),
        ("inner source outside the sender's lease", Vx6 { inner_src: "fd42:0:5::1".parse().unwrap(), ..Default::default() }, Reason::DropSpoofedSource),
        ("inner source of another node's lease", Vx6 { inner_src: DIRECT_POD6, ..Default::default() }, Reason::DropSpoofedSource),
        ("inner source our own lease", Vx6 { inner_src: UNKNOWN_LOCAL_POD6, ..Default::default() }, Reason::DropSpoofedSource),
        ("wrong VNI", Vx6 { vni: 2, ..Default::default() }, Reason::DropBadVni),
        ("the v4 VtepMAC is not the v6 one", Vx6 { inner_dst_mac: OUR_VTEP, ..Default::default() }, Reason::DropWrongVtepMac),
        ("no I flag", Vx6 { flags: 0, ..Default::default() }, Reason::DropMalformed),
    ];
    for (what, vx, reason) in vx_cases {
        let (ret, _, r) = lab.run(FROM_UPLINK, &vx.frame());
        assert_eq!((ret, r), (TC_ACT_SHOT, reason), "{what}");
    }
    // Inner frame that is not IPv6 (IPv4 inside v6 VXLAN is not flannel's),
    // and one cut short.
    let v4_inner = eth(OUR_VTEP6, PEER_VTEP6, ETH_P_IP, &Ipv4::new(REMOTE_POD, LOCAL_POD, 1).build(&icmp_echo(1, 1, b"x")));
    let short = eth(OUR_VTEP6, PEER_VTEP6, ETH_P_IPV6, &[0x60; 20]);
    for inner in [v4_inner, short] {
        let (ret, _, r) = lab.run(FROM_UPLINK, &Vx6::default().frame_with(&inner));
        assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropMalformed));
    }

    // Egress: the host to a v6 cluster address nobody leases.
    let nobody = from_host6("fd42:0:c8::1".parse().unwrap(), b"nobody");
    assert_eq!(lab.run(FROM_HOST, &nobody).2, Reason::DropNoRoute);
    // The host's own packet that cannot fit once encapsulated.
    let big = from_host6(REMOTE_POD6, &vec![0u8; 1500 - 70 - 40 + 1]);
    let (ret, _, r) = lab.run(FROM_HOST, &big);
    assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropTooBig));

    // Pods: a forged source, and the VXLAN port of a node.
    for forged in [OUR_IP6, REMOTE_POD6, GATEWAY6, "fd42:0:1::".parse().unwrap(), UNKNOWN_LOCAL_POD6] {
        let frame = from_pod6(forged, REMOTE_POD6, 17, &udp(1, 2, b"x"), 64);
        let expected = if forged == UNKNOWN_LOCAL_POD6 { Reason::Encapsulated } else { Reason::DropPodSpoofedSource };
        assert_eq!(lab.run(FROM_PODS, &frame).2, expected, "from {forged}");
    }
    for node in [PEER_IP6, OUR_IP6, DIRECT_PEER_IP6] {
        let plain = from_pod6(LOCAL_POD6, node, 17, &udp(40000, PORT, b"smuggled"), 64);
        let first_fragment = from_pod6(LOCAL_POD6, node, 44, &ipv6_fragment(17, 0, true, &udp(40000, PORT, b"smuggled")), 64);
        let dest_opts = from_pod6(LOCAL_POD6, node, 60, &[17, 0, 1, 4, 0, 0, 0, 0], 64);
        for frame in [plain, first_fragment, dest_opts] {
            let (ret, _, r) = lab.run(FROM_PODS, &frame);
            assert_eq!((ret, r), (TC_ACT_SHOT, Reason::DropPodToTunnelPort), "to {node}");
        }
    }
    // Other ports of a node, later fragments (useless without the first),
    // and the port elsewhere, are not ours to stop.
    for frame in [
        from_pod6(LOCAL_POD6, PEER_IP6, 17, &udp(40000, PORT + 1, b"fine"), 64),
        from_pod6(LOCAL_POD6, PEER_IP6, 44, &ipv6_fragment(17, 100, false, b"tail"), 64),
        from_pod6(LOCAL_POD6, "2001:db8::1".parse().unwrap(), 17, &udp(40000, PORT, b"fine"), 64),
    ] {
        assert_eq!(lab.run(FROM_PODS, &frame).2, Reason::PassedNotOurs);
    }
}

#[test]
fn v6_that_is_not_ours_passes_untouched() {
    let lab = Lab::dual();
    let link_local: Ipv6Addr = "fe80::5".parse().unwrap();
    let frames = [
        // Neighbour discovery with the gateway, from the pod's link-local address.
        (FROM_PODS, from_pod6(link_local, GATEWAY6, IPPROTO_ICMPV6, &[135, 0, 0, 0], 255)),
        // To the gateway, to another pod of this node, outside the cluster.
        (FROM_PODS, from_pod6(LOCAL_POD6, GATEWAY6, IPPROTO_ICMPV6, &icmpv6_echo(1, 1, b"gw"), 64)),
        (FROM_PODS, from_pod6(LOCAL_POD6, "2001:db8::1".parse().unwrap(), 6, &tcp(1, 443, b"out"), 64)),
        (FROM_PODS, eth(POD_MAC, POD_MAC, ETH_P_IPV6, &Ipv6::new(LOCAL_POD6, UNKNOWN_LOCAL_POD6, 17).build(&udp(1, 2, b"x")))),
        // Multicast (router solicitation).
        (FROM_PODS, eth([0x33, 0x33, 0, 0, 0, 2], POD_MAC, ETH_P_IPV6, &Ipv6::new(link_local, "ff02::2".parse().unwrap(), 58).build(&[133, 0, 0, 0]))),
        (FROM_HOST, from_host6("2001:db8::1".parse().unwrap(), b"x")),
        // Underlay: another port, another address, a fragment (the kernel
        // reassembles it and its socket's metadata is checked).
        (FROM_UPLINK, Vx6 { dport: 4789, ..Default::default() }.frame()),
        (FROM_UPLINK, Vx6 { outer_dst: "fd00:77::50".parse().unwrap(), ..Default::default() }.frame()),
        (FROM_UPLINK, eth(UPLINK_MAC, UNDERLAY_GW_MAC, ETH_P_IPV6, &Ipv6::new(PEER_IP6, OUR_IP6, 44).build(&ipv6_fragment(17, 0, true, &udp(1, PORT, &[0; 64]))))),
    ];
    for (prog, frame) in &frames {
        let (ret, out, r) = lab.run(prog, frame);
        assert_eq!((ret, r), (TC_ACT_OK, Reason::PassedNotOurs), "{prog} {frame:02x?}");
        assert_eq!(&out, frame, "{prog}: untouched");
    }
    // A node without IPv6 leaves every v6 frame alone, pod or VXLAN.
    let v4_only = Lab::new();
    for (prog, frame) in [(FROM_PODS, from_pod6(LOCAL_POD6, REMOTE_POD6, 17, &udp(1, 2, b"x"), 64)), (FROM_UPLINK, Vx6::default().frame())] {
        let (ret, out, r) = v4_only.run(prog, &frame);
        assert_eq!((ret, r, out), (TC_ACT_OK, Reason::PassedNotOurs, frame));
    }
}

#[test]
fn v6_replies_of_flows_the_kernel_forwarded_go_back_through_the_kernel() {
    let lab = Lab::dual();
    // The kernel delivered a remote v6 pod's connection to a local pod
    // (e.g. after a published port's DNAT): the local pod's replies go to
    // the kernel instead of being encapsulated.
    let delivered =
        eth(POD_MAC, BRIDGE_MAC, ETH_P_IPV6, &Ipv6::new(REMOTE_POD6, LOCAL_POD6, 17).build(&udp(7000, 53, b"q")));
    let (ret, out, r) = lab.run(TO_PODS, &delivered);
    assert_eq!((ret, r, &out), (TC_ACT_OK, Reason::KernelDelivered, &delivered));
    let answer = from_pod6(LOCAL_POD6, REMOTE_POD6, 17, &udp(53, 7000, b"a"), 64);
    let (ret, out, r) = lab.run(FROM_PODS, &answer);
    assert_eq!((ret, r, &out), (TC_ACT_OK, Reason::PassedKernelFlow, &answer));
    let other = from_pod6(LOCAL_POD6, REMOTE_POD6, 17, &udp(53, 7001, b"a"), 64);
    assert_eq!(lab.run(FROM_PODS, &other).2, Reason::Encapsulated, "other flows keep the fast path");
}

#[test]
fn v6_kernel_forwarding_hands_every_pod_packet_to_the_kernel() {
    let lab = Lab::dual_with(NodeConfig6 { kernel_forwarding: true, ..node_config6() });
    let frame = from_pod6(LOCAL_POD6, REMOTE_POD6, 6, &tcp(1, 2, b"x"), 64);
    let (ret, out, r) = lab.run(FROM_PODS, &frame);
    assert_eq!((ret, r, &out), (TC_ACT_OK, Reason::PassedToKernel, &frame));
    let forged = from_pod6(OUR_IP6, REMOTE_POD6, 17, &udp(1, 2, b"x"), 64);
    assert_eq!(lab.run(FROM_PODS, &forged).2, Reason::DropPodSpoofedSource, "forgeries are still dropped");
    assert_eq!(lab.run(FROM_HOST, &from_host6(REMOTE_POD6, b"x")).2, Reason::Encapsulated);
}

#[test]
fn v6_truncated_frames_at_every_length() {
    let lab = Lab::dual();
    let cases = [
        (FROM_UPLINK, Vx6::default().frame(), 14 + 40 + 8 + 8 + 14 + 40),
        (FROM_PODS, from_pod6(LOCAL_POD6, REMOTE_POD6, 6, &tcp(1, 2, b"payload"), 64), 14 + 40),
        (FROM_PODS, from_pod6(LOCAL_POD6, PEER_IP6, 44, &ipv6_fragment(17, 0, true, &udp(1, PORT, b"p")), 64), 14 + 40 + 8 + 8),
        (FROM_HOST, from_host6(REMOTE_POD6, b"payload"), 14 + 40),
        (TO_PODS, eth(POD_MAC, BRIDGE_MAC, ETH_P_IPV6, &Ipv6::new(REMOTE_POD6, LOCAL_POD6, 17).build(&udp(1, 2, b"q"))), 14 + 40),
    ];
    let allowed = [
        (TC_ACT_OK, Reason::PassedNotOurs),
        (TC_ACT_OK, Reason::PassedToKernel),
        (TC_ACT_OK, Reason::KernelDelivered),
        (TC_ACT_SHOT, Reason::DropMalformed),
        // A first fragment to a node cut before its UDP header.
        (TC_ACT_SHOT, Reason::DropPodToTunnelPort),
    ];
    assert_truncations_are_harmless(&lab, &cases, &allowed);
}

#[test]
fn v6_peer_maps_follow_leases_and_count_senders() {
    let mut lab = Lab::dual();
    let peer = |subnet: &str, ip: Ipv6Addr| Peer6 { subnet: subnet.parse().unwrap(), public_ip: ip, vtep_mac: PEER_VTEP6, mode: Mode::Vxlan };
    let second = peer("fd42:0:4::/64", PEER_IP6);
    lab.maps6.upsert_peer(&second).unwrap();
    let senders = |lab: &Lab| lab.maps6.nodes().unwrap().into_iter().map(|s| (s.public_ip, s.leases)).collect::<Vec<_>>();
    assert_eq!(senders(&lab), vec![(PEER_IP6, 2), (DIRECT_PEER_IP6, 1)]);
    // VXLAN from the peer with an inner source in either lease passes.
    let from_second = Vx6 { inner_src: "fd42:0:4::9".parse().unwrap(), ..Default::default() }.frame();
    assert_eq!(lab.run(FROM_UPLINK, &from_second).2, Reason::PassedToVxlanDriver);
    // The first lease moves to another node: the peer keeps one lease.
    lab.maps6.upsert_peer(&peer("fd42:0:2::/64", STRANGER_IP6)).unwrap();
    assert_eq!(senders(&lab), vec![(PEER_IP6, 1), (DIRECT_PEER_IP6, 1), (STRANGER_IP6, 1)]);
    assert_eq!(lab.run(FROM_UPLINK, &Vx6::default().frame()).2, Reason::DropSpoofedSource);
    lab.maps6.remove_peer(second.subnet).unwrap();
    assert_eq!(lab.run(FROM_UPLINK, &from_second).2, Reason::DropUnknownSender, "no lease names it any more");
    // A reconcile makes the maps exactly the wanted leases.
    let wanted = std::collections::BTreeMap::from([(second.subnet, second)]);
    let changes = lab.maps6.reconcile_peers(&wanted).unwrap();
    assert_eq!((changes.written, changes.removed), (1, 2));
    assert_eq!(lab.maps6.peers().unwrap(), vec![second]);
    assert_eq!(senders(&lab), vec![(PEER_IP6, 1)]);
    assert_eq!(lab.maps6.reconcile_peers(&wanted).unwrap(), Default::default(), "nothing left to do");
    // Endpoints.
    let ep = PodEndpoint6 { ip: UNKNOWN_LOCAL_POD6, ifindex: 7, mac: POD_MAC };
    assert_eq!(lab.maps6.reconcile_endpoints(&[ep]).unwrap(), (1, 1));
    assert_eq!(lab.maps6.endpoints().unwrap(), vec![ep]);
}
