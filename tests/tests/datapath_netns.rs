//! The data path on real veths in network namespaces: agent nodes running
//! the real binary against a real etcd (on the underlay), pods behind cni0,
//! and a reference flannel node (our re-implementation of flanneld's vxlan
//! backend on the kernel's flannel.1, tests/src/flannel.rs).
//! Needs root.

use std::net::Ipv4Addr;

use overlay_tests::flannel::{add_kernel_peer, setup_kernel_vxlan, VxlanLease};
use overlay_tests::{capture::*, cluster::*, netns::next, traffic::*};

#[test]
fn pods_talk_across_agent_nodes_icmp_tcp_udp() {
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    wait_ping(a, b.ip());
    wait_ping(b, a.ip());
    tcp_roundtrip(a, b, 4 << 20);
    tcp_roundtrip(b, a, 4 << 20);
    udp_echo(a, b, 50);
    udp_echo(b, a, 50);
    // The host itself reaches remote pods, and they answer it.
    wait_ping(c.tb.host(0), b.ip());
    wait_ping(c.tb.host(1), a.ip());
    // No flannel-style VXLAN device: the only one is the agent's overlay0,
    // metadata-collecting ("external": no VNI, no remote), with no FDB and
    // no neighbour entries (no per-node state in the kernel).
    for i in 0..2 {
        let host = c.tb.host(i);
        let vxlan = host.run(&["ip", "-d", "-o", "link", "show", "type", "vxlan"]).unwrap();
        let lines: Vec<&str> = vxlan.lines().collect();
        assert_eq!(lines.len(), 1, "agent node {i}: {vxlan}");
        assert!(lines[0].contains("overlay0") && lines[0].contains("vxlan external"), "agent node {i}: {vxlan}");
        let fdb = host.run(&["bridge", "fdb", "show", "dev", "overlay0"]).unwrap();
        assert!(fdb.trim().is_empty(), "agent node {i}: FDB entries on overlay0: {fdb}");
        let neigh = host.run(&["ip", "neigh", "show", "dev", "overlay0"]).unwrap();
        assert!(neigh.trim().is_empty(), "agent node {i}: neighbours on overlay0: {neigh}");
    }
    // Each pod's veth carries the encapsulation itself (the bridge is the
    // fallback for pods not attached yet).
    for i in 0..2 {
        let pin = c.agents[i].pin_dir().join("links").join(format!("from_pods@{}", c.pods[i][0].host_veth()));
        // The agent looks for new pod veths every second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pin.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(pin.exists(), "{} missing", pin.display());
    }
    let counters = c.counters(0);
    assert!(counters["encapsulated"] > 0 && counters["decap_to_pod"] + counters["decap_to_host"] > 0, "{counters:?}");
}

#[test]
fn sixty_four_megabytes_arrive_intact() {
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    wait_ping(a, b.ip());
    let before = c.maps(0).stats().unwrap().get(overlay_common::stats::Reason::Encapsulated);
    tcp_roundtrip(a, b, 64 << 20);
    let after = c.maps(0).stats().unwrap().get(overlay_common::stats::Reason::Encapsulated);
    // GSO super-packets were encapsulated whole (the kernel segments them
    // afterwards as UDP-tunnel GSO), not chopped into MTU-sized writes.
    let (packets, bytes) = (after.packets - before.packets, after.bytes - before.bytes);
    assert!(bytes >= 64 << 20, "{bytes} bytes encapsulated");
    assert!(bytes / packets > 4 * 1500, "average {} bytes per encapsulated packet", bytes / packets);
}

#[test]
fn interoperates_with_a_kernel_flannel_node_both_ways() {
    let c = Cluster::start_with(2, 1, 0, VXLAN_CONFIG);
    let kernel_pod = &c.pods[2][0];
    for i in 0..2 {
        let pod = &c.pods[i][0];
        wait_ping(pod, kernel_pod.ip());
        wait_ping(kernel_pod, pod.ip());
        tcp_roundtrip(pod, kernel_pod, 2 << 20);
        tcp_roundtrip(kernel_pod, pod, 2 << 20);
        udp_echo(kernel_pod, pod, 20);
    }
    // Host of the kernel node to our pods and back.
    wait_ping(c.tb.host(2), c.pods[0][0].ip());
}

/// Every outer field of our frames against the kernel's (flannel.<VNI> on
/// the reference node, configured from the same etcd config), both ways:
/// pings of every ECN codepoint and a DSCP, and MTU-sized pings.
fn compare_wire(config: &str, vni: u32, port: u16, underlay_mtu: u32) {
    let c = Cluster::start_with(1, 1, 0, config);
    let pod_mtu = underlay_mtu - 50;
    assert_eq!(c.pod_mtu, pod_mtu, "agent's FLANNEL_MTU");
    assert_eq!(c.flannel[0].pod_mtu, pod_mtu, "reference's flannel.{vni} MTU");
    let (ours, kernel) = (&c.pods[0][0], &c.pods[1][0]);
    wait_ping(ours, kernel.ip());
    wait_ping(kernel, ours.ip());
    let capture = Capture::start(&c.tb, 0, &format!("udp port {port}"));
    // TOS values: not-ECT, ECT(1), ECT(0), CE, then DSCP EF with each.
    const TOS: [u8; 8] = [0x00, 0x01, 0x02, 0x03, 0xb8, 0xb9, 0xba, 0xbb];
    for (from, to) in [(ours, kernel), (kernel, ours)] {
        for tos in TOS {
            from.run(&["ping", "-c", "3", "-i", "0.05", "-W", "1", "-Q", &format!("{tos:#x}"), &to.ip().to_string()])
                .unwrap();
        }
        // The largest packet the pod MTU allows, DF set inside.
        let size = (pod_mtu - 28).to_string();
        from.run(&["ping", "-c", "2", "-i", "0.05", "-W", "1", "-M", "do", "-s", &size, &to.ip().to_string()]).unwrap();
    }
    let frames = capture.finish();
    let agent_vtep = c.vtep_mac(0);
    let kernel_vtep = c.kernel_leases[0].vtep_mac;
    let sent: Vec<&VxlanFrame> = frames.iter().filter(|f| f.outer_src == c.tb.host(0).ip()).collect();
    let kernel_sent: Vec<&VxlanFrame> = frames.iter().filter(|f| f.outer_src == c.tb.host(1).ip()).collect();
    assert!(
        sent.len() >= 40 && kernel_sent.len() >= 40,
        "{} of ours, {} of the kernel's",
        sent.len(),
        kernel_sent.len()
    );
    for (who, list, src_vtep, dst_vtep) in
        [("ours", &sent, agent_vtep, kernel_vtep), ("kernel", &kernel_sent, kernel_vtep, agent_vtep)]
    {
        for f in list.iter() {
            let ctx = format!("{who}: {f:?}");
            // Outer IPv4.
            assert_eq!(f.outer_ihl, 5, "{ctx}");
            assert_eq!(f.outer_ttl, 64, "TTL: {ctx}");
            assert!(!f.outer_df && !f.outer_fragment, "DF clear, not a fragment: {ctx}");
            assert!(f.outer_csum_ok, "outer IPv4 checksum: {ctx}");
            assert_eq!(f.outer_len as usize + 14, f.len, "outer total length: {ctx}");
            // RFC 6040 normal mode, as ip_tunnel_ecn_encap: DSCP 0, inner
            // ECN copied, CE sent as ECT(0).
            let ecn = f.inner_tos & 3;
            assert_eq!(f.outer_tos, if ecn == 3 { 2 } else { ecn }, "TOS/ECN for inner TOS {:#x}: {ctx}", f.inner_tos);
            // Outer UDP.
            assert!((32768..=60999).contains(&f.sport), "source port outside the ephemeral range: {ctx}");
            assert_eq!(f.dport, port, "{ctx}");
            assert_eq!(f.udp_len, f.outer_len - 20, "{ctx}");
            // VXLAN.
            assert_eq!(f.vxlan_flags, 0x08, "{ctx}");
            assert_eq!(f.vxlan_reserved, [0; 4], "{ctx}");
            assert_eq!(f.vni, vni, "{ctx}");
            // Inner Ethernet, between VtepMACs.
            assert_eq!(f.inner_src_mac, src_vtep, "{ctx}");
            assert_eq!(f.inner_dst_mac, dst_vtep, "{ctx}");
            assert_eq!(f.inner_ethertype, 0x0800, "{ctx}");
            assert!(f.len <= underlay_mtu as usize + 14, "larger than Backend.MTU: {ctx}");
        }
        // Every inner TOS was seen, with the MTU-sized packets at exactly
        // Backend.MTU on the wire.
        for tos in TOS {
            assert!(list.iter().any(|f| f.inner_tos == tos), "{who}: no frame with inner TOS {tos:#x}");
        }
        assert!(list.iter().any(|f| f.len == underlay_mtu as usize + 14), "{who}: no frame of Backend.MTU");
        // One flow (one ping run, both directions of it) keeps one source port.
        // The IP ID varies between packets (kernel: a per-destination counter;
        // ours: random, see docs/datapath.md).
        let ids: std::collections::BTreeSet<u16> = list.iter().map(|f| f.outer_id).collect();
        assert!(ids.len() > list.len() / 2, "{who}: IP IDs repeat: {ids:?}");
    }
    // The documented differences (docs/datapath.md): our outer UDP checksum
    // is 0, flannel.1's is computed (udpcsum).
    assert!(sent.iter().all(|f| f.udp_csum == 0), "our outer UDP checksum");
    assert!(kernel_sent.iter().all(|f| f.udp_csum != 0), "the kernel's outer UDP checksum");
    // Same overhead both ways: our encapsulation adds exactly what flannel.1 adds.
    assert_eq!(sent[0].len - sent[0].inner_ip_len, kernel_sent[0].len - kernel_sent[0].inner_ip_len);
    assert!(sent.iter().all(|f| f.inner_ttl == 63), "the sending node routed the packet once");
}

#[test]
fn our_frames_have_the_kernel_vxlan_layout() {
    compare_wire(VXLAN_CONFIG, 1, 8472, 1500);
}

#[test]
fn non_default_port_vni_and_mtu_on_the_wire_match_the_kernel() {
    compare_wire(
        r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan","VNI":4097,"Port":4789,"MTU":1400}}"#,
        4097,
        4789,
        1400,
    );
}

#[test]
fn vxlan_from_strangers_and_forged_sources_never_reach_pods() {
    let c = Cluster::start_with(1, 1, 1, VXLAN_CONFIG);
    let victim = &c.pods[0][0];
    let member = &c.pods[1][0];
    wait_ping(member, victim.ip());

    // A stranger on the underlay sets up flannel.1 exactly like a member
    // would, with a lease nobody granted, and points it at our node.
    let stranger = c.tb.host(2);
    let fake = VxlanLease {
        subnet: Ipv4Addr::new(10, 42, 251, 0),
        prefix_len: 24,
        public_ip: stranger.ip(),
        vtep_mac: [0x0e, 0, 0, 0, 0xfb, 1],
    };
    setup_kernel_vxlan(stranger, 1, &fake, 1500).unwrap();
    let (subnet, len, _) = c.agents[0].lease().unwrap();
    let ours = VxlanLease { subnet, prefix_len: len, public_ip: c.tb.host(0).ip(), vtep_mac: c.vtep_mac(0) };
    add_kernel_peer(stranger, 1, &ours).unwrap();
    let spy = stranger.add_pod("cni0", "10.42.251.2/24", fake.gateway(), 1450).unwrap();
    let before = c.counters(0)["drop_unknown_sender"];
    let out = spy.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &victim.ip().to_string()]).unwrap();
    assert!(!out.status.success(), "a stranger's VXLAN reached a pod");
    assert!(c.counters(0)["drop_unknown_sender"] >= before + 3, "{:?}", c.counters(0));

    // A member forging an inner source outside its own lease.
    let kernel_host = c.tb.host(1);
    kernel_host.run(&["ip", "addr", "add", "10.42.252.9/32", "dev", "cni0"]).unwrap();
    let before = c.counters(0)["drop_spoofed_source"];
    let forged = kernel_host
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.42.252.9", &victim.ip().to_string()])
        .unwrap();
    assert!(!forged.status.success(), "a forged inner source reached a pod");
    assert!(c.counters(0)["drop_spoofed_source"] >= before + 3, "{:?}", c.counters(0));
    // The member's real traffic still flows.
    wait_ping(member, victim.ip());
}

#[test]
fn mtu_sized_ping_passes_and_one_byte_more_gets_frag_needed() {
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let b = &c.pods[1][0];
    // A pod whose own MTU is larger than the overlay's: the node must answer
    // frag-needed instead of dropping silently.
    let (_, len, gw) = c.agents[0].lease().unwrap();
    let big = c.tb.host(0).add_pod("cni0", &format!("{}/{len}", next(gw, 50)), gw, 1500).unwrap();
    wait_ping(&big, b.ip());
    let ok = big.exec(&["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", &b.ip().to_string()]).unwrap();
    assert!(ok.status.success(), "1450-byte DF ping: {}", String::from_utf8_lossy(&ok.stdout));
    let too_big = big.exec(&["ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1423", &b.ip().to_string()]).unwrap();
    let out = String::from_utf8_lossy(&too_big.stdout).to_string() + &String::from_utf8_lossy(&too_big.stderr);
    assert!(!too_big.status.success());
    assert!(out.contains("Frag needed") || out.contains("mtu = 1450") || out.contains("Message too long"), "{out}");
    // The route now knows the path MTU.
    let route = big.run(&["ip", "route", "get", &b.ip().to_string()]).unwrap();
    assert!(route.contains("mtu 1450"), "path MTU learnt from frag-needed: {route}");
}

#[test]
fn host_gw_cluster_works_without_vxlan_on_the_wire() {
    let c = Cluster::start_with(2, 0, 0, r#"{"Network":"10.42.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    assert_eq!(c.pod_mtu, 1500, "host-gw pods get the uplink MTU");
    wait_ping(a, b.ip());
    let capture = Capture::start(&c.tb, 0, "udp port 8472");
    tcp_roundtrip(a, b, 1 << 20);
    wait_ping(b, a.ip());
    assert!(capture.finish().is_empty(), "no VXLAN on the wire with host-gw");
    assert!(c.counters(0)["direct_routed"] > 0);
}


/// The send path caches each node's underlay MACs (UNDERLAY) instead of a
/// route lookup per packet. The cache must never outlive what the kernel
/// knows: when a peer's NIC changes its MAC without announcing it, the
/// kernel's neighbour probing (driven by our once-a-second refresh packet)
/// finds the new MAC, and the cache follows it.
#[test]
fn the_underlay_cache_follows_a_peer_whose_mac_changes() {
    use aya::maps::{HashMap, MapData};
    use overlay_common::maps::UnderlayHop;
    use std::time::{Duration, Instant};

    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    let (node0, node1) = (c.tb.host(0), c.tb.host(1));
    // Neighbour timers short enough for a test (defaults: 30 s reachable,
    // 5 s before the first probe); the mechanism is the same.
    for (key, value) in [
        ("net/ipv4/neigh/eth0/base_reachable_time_ms", "1000"),
        ("net/ipv4/neigh/eth0/delay_first_probe_time", "1"),
        ("net/ipv4/neigh/eth0/retrans_time_ms", "200"),
    ] {
        node0.ns().set_sysctl(key, value).unwrap();
    }
    wait_ping(a, b.ip());
    let pin = c.agents[0].pin_dir().join(overlay_common::map_names::UNDERLAY);
    let cached = || -> Option<[u8; 6]> {
        let map = MapData::from_pin(&pin).expect("pinned UNDERLAY");
        let map = HashMap::<_, [u8; 4], UnderlayHop>::try_from(aya::maps::Map::LruHashMap(map)).unwrap();
        map.get(&node1.ip().octets(), 0).ok().map(|h| h.dst_mac)
    };
    let old_mac = node1.ns().mac("eth0").unwrap();
    // The first packet found no neighbour yet (the kernel resolved it); the
    // next one caches what the kernel learnt.
    a.ns().ping(b.ip()).unwrap();
    assert_eq!(cached(), Some(old_mac), "node 0 caches node 1's MAC once traffic flowed");

    let new_mac = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
    let mac_text = new_mac.map(|b| format!("{b:02x}")).join(":");
    node1.ns().run(&["ip", "link", "set", "eth0", "address", &mac_text]).unwrap();
    assert_eq!(node1.ns().mac("eth0").unwrap(), new_mac);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let mut reached = false;
    while Instant::now() < deadline {
        // One ping a time: each is a packet through the cache (or a refresh).
        if a.ns().exec(&["ping", "-c", "1", "-W", "1", &b.ip().to_string()]).unwrap().status.success()
            && cached() == Some(new_mac)
        {
            reached = true;
            break;
        }
    }
    let neigh = node0.ns().run(&["ip", "neigh", "show", "dev", "eth0"]).unwrap_or_default();
    assert!(
        reached,
        "pod on node 0 did not reach node 1 at its new MAC within 30 s; cached {:?}, kernel neighbours: {neigh}",
        cached()
    );
    eprintln!("recovered {:.1} s after the MAC change", started.elapsed().as_secs_f64());
}
