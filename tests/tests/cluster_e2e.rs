//! End to end: real agents as separate processes on a real etcd, nodes in
//! network namespaces, pods behind cni0, and a node running flannel's kernel
//! VXLAN. What a user checks after installing the agent on a cluster: every
//! pod reaches every pod, nodes join and leave quickly, DirectRouting picks
//! plain routing only where the peer is on-link. Needs root.
//!
//! (64 MB transfers, MTU edges, the wire layout and spoofed VXLAN are in
//! datapath_netns.rs.)

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use overlay_agent::datapath::Mode;
use overlay_agent::etcd::registry::parse_subnet_key;
use overlay_tests::agent::log_time;
use overlay_tests::poll_until;
use overlay_tests::{capture::*, cluster::*, traffic::*};

const DIRECT_ROUTING_CONFIG: &str = r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const HOST_GW_CONFIG: &str = r#"{"Network":"10.42.0.0/16","Backend":{"Type":"host-gw"}}"#;

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// `b - a` in seconds (negative if b is earlier).
fn since(a: SystemTime, b: f64) -> f64 {
    b - unix_secs(a)
}

#[test]
fn every_pod_pair_talks_icmp_tcp_udp_across_three_agents_and_a_kernel_node() {
    let c = Cluster::start_with(3, 1, 0, VXLAN_CONFIG);
    let pods: Vec<_> = c.pods.iter().map(|p| p[0].clone()).collect();
    assert_eq!(pods.len(), 4);

    // Every agent knows the three other nodes, with their PublicIP and VtepMAC.
    for i in 0..3 {
        let mut expected: Vec<(ipnet::Ipv4Net, Ipv4Addr, [u8; 6])> =
            (0..3).filter(|j| *j != i).map(|j| (c.subnet(j), c.tb.host(j).ip(), c.vtep_mac(j))).collect();
        let k = c.kernel_leases[0];
        expected.push((ipnet::Ipv4Net::new(k.subnet, k.prefix_len).unwrap(), k.public_ip, k.vtep_mac));
        expected.sort();
        poll_until(Duration::from_secs(10), &format!("agent {i} knowing every other node"), || {
            let mut got: Vec<_> = c.peers(i).iter().map(|p| (p.subnet, p.public_ip, p.vtep_mac)).collect();
            got.sort();
            anyhow::ensure!(got == expected, "agent {i} peers {got:?}, expected {expected:?}");
            Ok(())
        })
        .unwrap();
        assert!(c.peers(i).iter().all(|p| p.mode == Mode::Vxlan));
    }

    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            wait_ping(a, b.ip());
            tcp_roundtrip(a, b, 256 << 10);
            udp_echo_quick(a, b, 10);
        }
    }
    // Each node's host reaches every remote pod (and gets the answers).
    for h in 0..4 {
        for b in pods.iter().filter(|p| p.host_index() != h) {
            wait_ping(c.tb.host(h), b.ip());
        }
    }
}

#[test]
fn a_joining_node_is_reachable_from_all_others_within_two_seconds() {
    let mut c = Cluster::start_with(2, 0, 1, VXLAN_CONFIG);
    wait_ping(&c.pods[0][0], c.pods[1][0].ip());
    wait_ping(&c.pods[1][0], c.pods[0][0].ip());

    let watch = c.watch_leases(0);
    let new = c.add_agent(2);
    let put = watch.next_put(Duration::from_secs(30)).expect("the new node's lease never appeared in etcd");
    let subnet = parse_subnet_key(PREFIX, &put.key).unwrap_or_else(|| panic!("lease key {}", put.key));
    // Ping the new node itself (its overlay0 address, <subnet>.0, as
    // flannel.1 has it; there are no pods and no bridge on it yet) from a
    // pod on every other node, from the moment its lease is in etcd.
    let gateway = subnet.network();
    let pings: Vec<PingRun> = (0..2).map(|i| PingRun::start(c.tb.dir(), &c.pods[i][0], gateway, 0.02, 150)).collect();

    // Every other agent has the new subnet in its SUBNETS map.
    let mut in_maps = [None; 2];
    let start = Instant::now();
    while in_maps.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(10) {
        for (i, seen) in in_maps.iter_mut().enumerate() {
            if seen.is_none() && c.peers(i).iter().any(|p| p.subnet == subnet) {
                *seen = Some(SystemTime::now());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    c.agents[new].wait_ready(Duration::from_secs(30)).unwrap();
    let ready_line = c.agents[new].wait_log("] ready", Duration::from_secs(1)).unwrap();
    let ready = log_time(&ready_line).unwrap_or_else(|| panic!("no timestamp in {ready_line:?}"));
    let stats: Vec<PingStats> = pings.into_iter().map(|p| p.wait(Duration::from_secs(15))).collect();

    let mut report = format!(
        "new node {subnet}: lease put at t=0, agent ready at t={:+.3} s\n",
        unix_secs(ready) - unix_secs(put.at)
    );
    let t = |v: Option<f64>| v.map(|v| format!("{v:+.3} s")).unwrap_or_else(|| "never".into());
    for i in 0..2 {
        report += &format!(
            "  from node {i}: in SUBNETS at t={}, first answered ping at t={} ({} after ready)\n",
            t(in_maps[i].map(|m| unix_secs(m) - unix_secs(put.at))),
            t(stats[i].first_reply().map(|r| since(put.at, r))),
            t(stats[i].first_reply().map(|r| since(ready, r))),
        );
    }
    eprintln!("{report}");
    for i in 0..2 {
        let map_t = in_maps[i].unwrap_or_else(|| panic!("node {i} never learnt {subnet}\n{report}"));
        assert!(unix_secs(map_t) - unix_secs(put.at) < 2.0, "node {i} learnt {subnet} too late\n{report}");
        let first = stats[i].first_reply().unwrap_or_else(|| panic!("node {i} never reached {gateway}\n{report}"));
        assert!(since(put.at, first) < 2.0, "node {i} reached the new node more than 2 s after its lease\n{report}");
        // Once it answered, every later ping was answered too.
        let first_seq = stats[i].seqs[0];
        let answered: std::collections::BTreeSet<u32> = stats[i].seqs.iter().copied().collect();
        let missing: Vec<u32> = (first_seq..=stats[i].transmitted as u32).filter(|s| !answered.contains(s)).collect();
        assert!(missing.is_empty(), "node {i}: pings {missing:?} lost after the first answer\n{report}");
    }

    // A pod on the new node: every pod pair, both ways.
    let pod = c.add_agent_pod(new, 2);
    let created = Instant::now();
    for i in 0..2 {
        wait_ping(&c.pods[i][0], pod.ip());
        wait_ping(&pod, c.pods[i][0].ip());
    }
    eprintln!("new pod reachable both ways from both nodes {} after it was created", secs(created.elapsed()));
    tcp_roundtrip(&pod, &c.pods[0][0], 256 << 10);
    tcp_roundtrip(&c.pods[1][0], &pod, 256 << 10);
}

#[test]
fn a_removed_lease_leaves_every_map_within_two_seconds() {
    let mut c = Cluster::start_with(3, 1, 0, VXLAN_CONFIG);
    let leaving = c.subnet(2);
    let kernel = c.kernel_leases[0];
    let kernel_subnet = ipnet::Ipv4Net::new(kernel.subnet, kernel.prefix_len).unwrap();
    for i in 0..2 {
        poll_until(Duration::from_secs(10), "every lease in every map", || {
            let subnets: Vec<_> = c.peers(i).iter().map(|p| p.subnet).collect();
            anyhow::ensure!(subnets.contains(&leaving) && subnets.contains(&kernel_subnet), "{subnets:?}");
            Ok(())
        })
        .unwrap();
    }
    wait_ping(&c.pods[0][0], c.pods[1][0].ip());

    // Node 2 is decommissioned: its agent stops (which leaves the lease in
    // place, as flanneld does), then the operator deletes its lease, and
    // the kernel node's.
    c.agents[2].stop().expect("agent 2 exits on SIGTERM");
    let key = format!("{PREFIX}/subnets/{}-{}", leaving.network(), leaving.prefix_len());
    assert!(c.etcd.get(&key).unwrap().is_some(), "a stopped agent keeps its lease");
    let t0 = Instant::now();
    c.etcd.etcdctl(&["del", &key]).unwrap();
    c.etcd.etcdctl(&["del", &kernel.etcd_key(PREFIX)]).unwrap();
    let deleted = t0.elapsed();

    let mut gone_at = vec![None; 2];
    while gone_at.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(10) {
        for (i, gone) in gone_at.iter_mut().enumerate() {
            if gone.is_none() {
                let peers = c.peers(i);
                let nodes = c.maps(i).nodes().unwrap();
                if !peers.iter().any(|p| p.subnet == leaving || p.subnet == kernel_subnet)
                    && !nodes.iter().any(|n| n.public_ip == c.tb.host(2).ip() || n.public_ip == kernel.public_ip)
                {
                    *gone = Some(t0.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("leases deleted in {}; gone from the maps after {gone_at:?}", secs(deleted));
    for (i, gone) in gone_at.iter().enumerate() {
        let gone = gone.unwrap_or_else(|| panic!("agent {i} still has the removed leases: {:?}", c.peers(i)));
        assert!(gone < Duration::from_secs(2), "agent {i} removed them after {}", secs(gone));
    }
    // The remaining nodes still talk; the removed node is unreachable.
    wait_ping(&c.pods[0][0], c.pods[1][0].ip());
    wait_ping(&c.pods[1][0], c.pods[0][0].ip());
    assert!(c.pods[0][0].ping(c.pods[2][0].ip()).is_err());
    assert_eq!(c.peers(0).len(), 1);
}

#[test]
fn direct_routing_sends_plain_ip_on_link_and_vxlan_through_a_router() {
    let far_ip = Ipv4Addr::new(192, 168, 88, 10);
    let c = Cluster::start_prepared(3, 0, 1, DIRECT_ROUTING_CONFIG, |tb| put_host_2_behind_a_router(tb, tb.underlay_mtu()));
    assert_eq!(c.pod_mtu, 1450, "DirectRouting keeps the VXLAN MTU (some peers still need VXLAN)");
    let subnets: Vec<_> = (0..3).map(|i| c.subnet(i)).collect();
    let public: Vec<Ipv4Addr> = vec![c.tb.host(0).ip(), c.tb.host(1).ip(), far_ip];

    // The per-lease decision, from the maps.
    let expected_mode = |i: usize, j: usize| if i < 2 && j < 2 { Mode::Direct } else { Mode::Vxlan };
    for i in 0..3 {
        poll_until(Duration::from_secs(10), &format!("agent {i} knowing both other nodes"), || {
            let peers = c.peers(i);
            for j in (0..3).filter(|j| *j != i) {
                let p = peers.iter().find(|p| p.subnet == subnets[j]);
                let p = p.ok_or_else(|| anyhow::anyhow!("agent {i} lacks {}: {peers:?}", subnets[j]))?;
                anyhow::ensure!(p.public_ip == public[j], "agent {i}: {p:?}");
                anyhow::ensure!(p.mode == expected_mode(i, j), "agent {i} -> node {j}: {p:?}");
            }
            Ok(())
        })
        .unwrap();
    }

    let pods: Vec<_> = c.pods.iter().map(|p| p[0].clone()).collect();
    for a in &pods {
        for b in &pods {
            if a.ip() != b.ip() {
                wait_ping(a, b.ip());
            }
        }
    }

    let before = c.counters(0);
    let capture = Capture::start(&c.tb, 0, "ip");
    for (a, b) in [(0, 1), (1, 0), (0, 2), (2, 0)] {
        pods[a].run(&["ping", "-c", "3", "-i", "0.05", "-W", "1", &pods[b].ip().to_string()]).unwrap();
        tcp_roundtrip(&pods[a], &pods[b], 128 << 10);
    }
    let frames = capture.finish_ip();
    let after = c.counters(0);

    let between = |f: &IpFrame, x: Ipv4Addr, y: Ipv4Addr| (f.src == x && f.dst == y) || (f.src == y && f.dst == x);
    // On-link peer: plain IP pod to pod, both ways, and no VXLAN between the two nodes.
    for (x, y) in [(pods[0].ip(), pods[1].ip()), (pods[1].ip(), pods[0].ip())] {
        for proto in [1, 6] {
            assert!(
                frames.iter().any(|f| f.src == x && f.dst == y && f.proto == proto),
                "no plain IP proto {proto} {x} -> {y} on the wire"
            );
        }
    }
    assert!(
        !frames.iter().any(|f| f.is_vxlan() && between(f, public[0], public[1])),
        "VXLAN between on-link DirectRouting peers"
    );
    // Routed peer: VXLAN both ways, never plain pod addresses.
    for (x, y) in [(public[0], far_ip), (far_ip, public[0])] {
        assert!(frames.iter().any(|f| f.is_vxlan() && f.src == x && f.dst == y), "no VXLAN {x} -> {y}");
    }
    assert!(
        !frames.iter().any(|f| f.src == pods[2].ip() || f.dst == pods[2].ip()),
        "plain IP to/from the routed peer's pod on the wire"
    );
    assert!(after["direct_routed"] > before["direct_routed"], "{after:?}");
    assert!(after["encapsulated"] > before["encapsulated"], "{after:?}");
}

#[test]
fn host_gw_with_three_nodes_routes_every_pair() {
    let c = Cluster::start_with(3, 0, 0, HOST_GW_CONFIG);
    for i in 0..3 {
        poll_until(Duration::from_secs(10), "two direct peers", || {
            let peers = c.peers(i);
            anyhow::ensure!(peers.len() == 2 && peers.iter().all(|p| p.mode == Mode::Direct), "{peers:?}");
            Ok(())
        })
        .unwrap();
    }
    let capture = Capture::start(&c.tb, 0, "udp port 8472");
    let pods: Vec<_> = c.pods.iter().map(|p| p[0].clone()).collect();
    for a in &pods {
        for b in &pods {
            if a.ip() != b.ip() {
                wait_ping(a, b.ip());
                tcp_roundtrip(a, b, 128 << 10);
            }
        }
    }
    assert!(capture.finish().is_empty(), "VXLAN on the wire with host-gw");
}
