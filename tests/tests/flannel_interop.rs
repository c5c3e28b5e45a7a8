//! Mixed clusters: real agents next to reference flannel nodes, which are
//! **our re-implementation of flanneld's vxlan backend (and host-gw), kernel
//! data path** (tests/src/flannel.rs: it follows etcd as flanneld does, with
//! a neighbour, an FDB entry and a route per lease, but it is not flanneld).
//! Nodes of both kinds join and leave while pings and TCP run between the
//! nodes that stay (vxlan, DirectRouting, host-gw); DirectRouting across a
//! router falls back to VXLAN on both sides; then a reference node is
//! switched to the agent in place
//! (the migration of docs/operations.md) and the loss is measured. Dual
//! stack: an agent and a reference node with `flannel-v6.1` (VXLAN over the
//! IPv6 underlay) talk over v6 and v4 both ways, and a v6 packet too big
//! for the path is answered with ICMPv6 packet too big or fragmented at the
//! source; with DirectRouting, v6 pod traffic between nodes on one link
//! is plain IPv6 on the cable. Needs root.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use overlay_agent::datapath::{DatapathMaps6, Mode};
use overlay_tests::{
    agent::log_time,
    cluster::*,
    flannel::mac_str,
    netns::{next, Pod},
    poll_until,
    traffic::*,
};

const DIRECT_ROUTING_CONFIG: &str = r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const HOST_GW_CONFIG: &str = r#"{"Network":"10.42.0.0/16","Backend":{"Type":"host-gw"}}"#;
const DUAL_STACK_CONFIG: &str =
    r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}"#;
const DUAL_STACK_DIRECT_CONFIG: &str = r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48",
    "Backend":{"Type":"vxlan","DirectRouting":true}}"#;

/// TCP transfers from `a` to `b` and back, one after the other, until
/// `stop`; counts the completed ones (each checks every byte).
fn tcp_stream(a: Pod, b: Pod, stop: Arc<AtomicBool>, done: Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            tcp_roundtrip(&a, &b, 1 << 20);
            tcp_roundtrip(&b, &a, 1 << 20);
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Hosts 0, 1: agents; 2, 3: reference flannel nodes; 4, 5: spare. Agent 0
/// and reference 0 (host 2) stay throughout, with pings both ways and TCP
/// between their pods. Then an agent joins on host 4 and a reference node
/// on host 5, and agent 1 and reference 1 leave (stopped, their leases
/// deleted). Every node that is there talks to every other; the leavers'
/// entries are gone on both survivors; the stream lost nothing.
fn churn(config: &str, expect: Mode) {
    let mut c = Cluster::build(2, 2, 2, config).ready(Duration::from_secs(60)).start();
    let (agent_pod, ref_pod) = (c.pods[0][0].clone(), c.pods[2][0].clone());
    for (a, b) in [(&agent_pod, &ref_pod), (&ref_pod, &agent_pod)] {
        wait_ping(a, b.ip());
    }
    let all_four: Vec<Ipv4Addr> =
        (0..2).map(|i| c.subnet(i).network()).chain(c.kernel_leases.iter().map(|l| l.subnet)).collect();
    c.flannel[0].wait_applied(&[all_four[0], all_four[1], all_four[3]], Duration::from_secs(10)).unwrap();

    // The stream between the survivors, for the whole churn.
    let pings = [
        PingRun::start(c.tb.dir(), &agent_pod, ref_pod.ip(), 0.02, 1500),
        PingRun::start(c.tb.dir(), &ref_pod, agent_pod.ip(), 0.02, 1500),
    ];
    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let tcp = tcp_stream(agent_pod.clone(), ref_pod.clone(), stop.clone(), done.clone());

    // Joining: an agent on host 4, a reference node on host 5.
    let new_agent = c.add_agent(4);
    c.agents[new_agent].wait_ready(Duration::from_secs(60)).unwrap();
    let new_ref = c.add_flannel(5, 2);
    let new_agent_pod = c.add_agent_pod(new_agent, 2);
    let lease = c.flannel[new_ref].lease;
    let new_ref_pod =
        c.tb.host(5)
            .add_pod("cni0", &format!("{}/24", next(lease.gateway(), 1)), lease.gateway(), c.flannel[new_ref].pod_mtu)
            .unwrap();
    let present = [&agent_pod, &c.pods[1][0], &ref_pod, &c.pods[3][0], &new_agent_pod, &new_ref_pod];
    for a in present {
        for b in present {
            if a.ip() != b.ip() {
                wait_ping(a, b.ip());
            }
        }
    }
    tcp_roundtrip(&new_agent_pod, &new_ref_pod, 1 << 20);
    tcp_roundtrip(&new_ref_pod, &new_agent_pod, 1 << 20);

    // Leaving: agent 1 and reference 1 stop, and the operator deletes
    // their leases.
    let (gone_agent, gone_ref) = (c.subnet(1), c.kernel_leases[1]);
    c.agents[1].stop().expect("agent 1 exits on SIGTERM");
    c.flannel[1].stop();
    c.etcd.delete(&format!("{PREFIX}/subnets/{}-{}", gone_agent.network(), gone_agent.prefix_len())).unwrap();
    c.etcd.delete(c.flannel[1].lease_key()).unwrap();

    let remaining = [c.subnet(0).network(), c.subnet(new_agent).network(), c.kernel_leases[0].subnet, lease.subnet];
    // Reference 0 drops exactly the leavers (its kernel state follows).
    c.flannel[0].wait_applied(&[remaining[0], remaining[1], remaining[3]], Duration::from_secs(10)).unwrap();
    let ref_host = c.tb.host(2);
    for gone in [gone_agent.network(), gone_ref.subnet] {
        let routes = ref_host.run(&["ip", "route", "show", &format!("{gone}/24")]).unwrap();
        assert!(routes.trim().is_empty(), "reference 0 still routes {gone}: {routes}");
        let neigh = ref_host.run(&["ip", "neigh", "show", &gone.to_string()]).unwrap();
        assert!(neigh.trim().is_empty(), "reference 0 still has a neighbour for {gone}: {neigh}");
    }
    let fdb = ref_host.run(&["bridge", "fdb", "show"]).unwrap();
    assert!(!fdb.contains(&mac_str(&gone_ref.vtep_mac)), "reference 0 keeps the leaver's FDB entry: {fdb}");
    assert!(c.flannel[0].errors().is_empty(), "{:?}", c.flannel[0].errors());
    // Agent 0 too, and every peer it has is in the expected mode.
    for i in [0, new_agent] {
        poll_until(Duration::from_secs(10), &format!("agent {i} with the three others"), || {
            let mut got: Vec<Ipv4Addr> = c.peers(i).iter().map(|p| p.subnet.network()).collect();
            got.sort();
            let mut want: Vec<Ipv4Addr> = remaining.iter().copied().filter(|s| *s != c.subnet(i).network()).collect();
            want.sort();
            anyhow::ensure!(got == want, "peers {got:?}, expected {want:?}");
            Ok(())
        })
        .unwrap();
        assert!(c.peers(i).iter().all(|p| p.mode == expect), "{:?}", c.peers(i));
    }
    let stayed = [&agent_pod, &ref_pod, &new_agent_pod, &new_ref_pod];
    for a in stayed {
        for b in stayed {
            if a.ip() != b.ip() {
                wait_ping(a, b.ip());
            }
        }
    }
    assert!(agent_pod.ping(c.pods[1][0].ip()).is_err() && agent_pod.ping(c.pods[3][0].ip()).is_err());

    stop.store(true, Ordering::Relaxed);
    tcp.join().expect("TCP between the survivors failed during the churn");
    let stats: Vec<PingStats> = pings.into_iter().map(|p| p.wait(Duration::from_secs(60))).collect();
    eprintln!(
        "survivors: {} TCP round trips; pings lost {} of {} and {} of {}",
        done.load(Ordering::Relaxed),
        stats[0].lost(),
        stats[0].transmitted,
        stats[1].lost(),
        stats[1].transmitted
    );
    assert!(done.load(Ordering::Relaxed) > 0, "no TCP round trip completed");
    for s in &stats {
        assert_eq!(s.lost(), 0, "pings lost between the survivors during the churn:\n{}", s.text);
    }
}

#[test]
fn vxlan_nodes_of_both_kinds_join_and_leave_under_traffic() {
    churn(VXLAN_CONFIG, Mode::Vxlan);
}

#[test]
fn direct_routing_nodes_of_both_kinds_join_and_leave_under_traffic() {
    churn(DIRECT_ROUTING_CONFIG, Mode::Direct);
}

#[test]
fn host_gw_nodes_of_both_kinds_join_and_leave_under_traffic() {
    churn(HOST_GW_CONFIG, Mode::Direct);
}

/// A node that ran (our re-implementation of) flanneld, with its
/// flannel.1, its lease with its VtepMAC, flanneld's iptables rules and its
/// subnet.env, is switched to the agent: flanneld stops, the agent starts.
/// It keeps the subnet and the VtepMAC, removes flannel.1, and the other
/// nodes (a reference node and an agent) keep talking to its pod. The
/// loss is reported (docs/operations.md records it); the test asserts that
/// traffic resumes and stays.
#[test]
fn a_flannel_node_switched_to_the_agent_keeps_its_lease_and_traffic_resumes() {
    let mut c = Cluster::build(1, 1, 1, VXLAN_CONFIG).ready(Duration::from_secs(60)).start();
    let host = 2;
    let mut opts = kernel_node_options(&c.tb, host, 1);
    opts.ip_masq = true;
    let migrating = c.add_flannel_with(host, &opts);
    let before = c.flannel[migrating].lease;
    let subnet_env = std::fs::read_to_string(&opts.subnet_file).unwrap();
    let pod = c
        .tb
        .host(host)
        .add_pod("cni0", &format!("{}/24", next(before.gateway(), 1)), before.gateway(), c.flannel[migrating].pod_mtu)
        .unwrap();
    let (agent_pod, ref_pod) = (c.pods[0][0].clone(), c.pods[1][0].clone());
    for from in [&agent_pod, &ref_pod] {
        wait_ping(from, pod.ip());
        wait_ping(&pod, from.ip());
    }
    let nat = c.tb.host(host).run(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]).unwrap();
    assert!(nat.contains("flanneld masq"), "{nat}");

    // 100 pings a second from both other nodes, across the switch.
    let interval = 0.01;
    let pings = [
        PingRun::start(c.tb.dir(), &ref_pod, pod.ip(), interval, 4000),
        PingRun::start(c.tb.dir(), &agent_pod, pod.ip(), interval, 4000),
    ];
    std::thread::sleep(Duration::from_secs(2));
    // systemctl disable --now flanneld && systemctl enable --now overlay-agent
    c.flannel[migrating].stop();
    let agent = c.add_agent_with(host, &["--ip-masq"]);
    c.agents[agent].wait_ready(Duration::from_secs(60)).unwrap();
    let stats: Vec<PingStats> = pings.into_iter().map(|p| p.wait(Duration::from_secs(120))).collect();

    // Same lease, same VtepMAC, same subnet.env; flannel.1 gone.
    assert_eq!(c.subnet(agent).network(), before.subnet, "the agent took another subnet");
    assert_eq!(c.vtep_mac(agent), before.vtep_mac, "the agent changed the VtepMAC");
    let after = std::fs::read_to_string(&opts.subnet_file).unwrap();
    let subnet_line = |s: &str| s.lines().find(|l| l.starts_with("FLANNEL_SUBNET=")).map(str::to_string);
    assert_eq!(subnet_line(&after), subnet_line(&subnet_env), "{subnet_env}\n{after}");
    let vxlan = c.tb.host(host).run(&["ip", "-o", "link", "show", "type", "vxlan"]).unwrap();
    assert!(!vxlan.contains("flannel.1"), "flannel.1 still there: {vxlan}");

    // Where the gap is: from the agent deleting flannel.1 to its "ready".
    let log_at = |needle: &str| {
        let line = c.agents[agent].wait_log(needle, Duration::from_secs(1)).unwrap();
        unix_secs(log_time(&line).unwrap_or_else(|| panic!("no time in {line:?}")))
    };
    let (deleted, ready) = (log_at("left by flanneld"), log_at("] ready"));
    let mut report = format!(
        "switch from the flannel reference to the agent: flannel.1 deleted {:.3} s before the agent was ready\n",
        ready - deleted
    );
    for (from, s) in ["reference node", "agent node"].iter().zip(&stats) {
        let gap = s.replies.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        report += &format!(
            "  from the {from}: {} of {} pings lost ({:.2} s at {interval} s), longest gap between replies {gap:.3} s\n",
            s.lost(),
            s.transmitted,
            s.lost() as f64 * interval
        );
    }
    eprintln!("{report}");
    for s in &stats {
        // Traffic resumed and stayed: the last 500 pings (5 s) were all answered.
        let answered: std::collections::BTreeSet<u32> = s.seqs.iter().copied().collect();
        let tail: Vec<u32> =
            (s.transmitted as u32 - 500..=s.transmitted as u32).filter(|q| !answered.contains(q)).collect();
        assert!(tail.is_empty(), "pings {tail:?} lost after the switch\n{report}");
    }
    for from in [&agent_pod, &ref_pod] {
        tcp_roundtrip(from, &pod, 1 << 20);
        tcp_roundtrip(&pod, from, 1 << 20);
    }
}

/// DirectRouting across two segments: agents 0 and 1 share one, the
/// reference node (host 2) sits behind a router (host 3). Between the
/// agents: plain routes; between either agent and the reference: VXLAN,
/// chosen on both sides (the reference by `ip route get`, as flannel's
/// ip.DirectRouting does).
#[test]
fn direct_routing_falls_back_to_vxlan_for_a_reference_node_behind_a_router() {
    let c = Cluster::build(2, 1, 1, DIRECT_ROUTING_CONFIG)
        .prepare(|tb| put_host_2_behind_a_router(tb, tb.underlay_mtu()))
        .ready(Duration::from_secs(60))
        .start();
    let kernel = c.kernel_leases[0].subnet;
    c.flannel[0].wait_applied(&[c.subnet(0).network(), c.subnet(1).network()], Duration::from_secs(10)).unwrap();
    assert!(c.flannel[0].applied().values().all(|l| !l.direct), "{:?}", c.flannel[0].applied());
    for i in 0..2 {
        poll_until(Duration::from_secs(10), &format!("agent {i} with both peers"), || {
            let peers = c.peers(i);
            anyhow::ensure!(peers.len() == 2, "{peers:?}");
            for p in &peers {
                let want = if p.subnet.network() == kernel { Mode::Vxlan } else { Mode::Direct };
                anyhow::ensure!(p.mode == want, "{p:?}");
            }
            Ok(())
        })
        .unwrap();
    }
    let pods: Vec<Pod> = c.pods.iter().map(|p| p[0].clone()).collect();
    for a in &pods {
        for b in &pods {
            if a.ip() != b.ip() {
                wait_ping(a, b.ip());
                tcp_roundtrip(a, b, 256 << 10);
            }
        }
    }
}

/// An agent (host 0) and a reference node (host 1) in a dual-stack network,
/// the underlay carrying IPv6 too. The reference writes its lease as
/// flanneld does (`v4&v6` key, PublicIPv6, BackendV6Data with flannel-v6.1's
/// own VtepMAC) and applies the agent's v6 half to flannel-v6.1 (neighbour,
/// FDB entry, onlink route); the agent installs the reference's v6 half as
/// a VXLAN peer. Pods ping and move TCP both ways over v6 and v4. MTU: the
/// reference's pod has flanneld's FLANNEL_MTU (uplink - 50, which does not
/// fit flannel-v6.1's uplink - 70): its big v6 packets get ICMPv6 packet
/// too big from its node and then arrive fragmented; the agent's pod (MTU
/// uplink - 70) fragments big ones at the source.
#[test]
fn dual_stack_pods_talk_with_a_kernel_flannel_v6_node_both_ways() {
    let c = Cluster::build(1, 1, 0, DUAL_STACK_CONFIG).prepare(address_underlay6).ready(Duration::from_secs(60)).start();
    let reference = &c.flannel[0];
    let ref6 = reference.lease6.expect("the reference took a v6 lease");
    let (agent6, _) = c.agents[0].lease6().unwrap();

    // The reference's lease as flanneld writes it.
    let key = reference.lease_key();
    assert!(key.ends_with(&format!("/subnets/10.42.250.0-24&{}-64", ref6.subnet.network())), "{key}");
    let value = c.etcd.get(key).unwrap().expect("the reference's lease");
    let v: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(v["PublicIPv6"], underlay6(1).to_string(), "{value}");
    assert_eq!(v["BackendV6Data"]["VtepMAC"], mac_str(&ref6.vtep_mac), "{value}");
    assert_ne!(v["BackendV6Data"]["VtepMAC"], v["BackendData"]["VtepMAC"], "one VtepMAC per device: {value}");

    let (agent_pod, ref_pod) = (c.pods[0][0].clone(), c.pods[1][0].clone());
    let agent_pod6 = add_pod6(c.tb.host(0), &agent_pod, agent6, 2);
    let ref_pod6 = add_pod6(c.tb.host(1), &ref_pod, ref6.subnet, 2);

    // Each side has the other's v6 half: the agent as a VXLAN peer to
    // PublicIPv6 with BackendV6Data's VtepMAC, the reference in the kernel.
    reference.wait_applied6(&[agent6], Duration::from_secs(10)).unwrap();
    poll_until(Duration::from_secs(10), "the reference's v6 half in the agent's SUBNETS6", || {
        let peers = DatapathMaps6::open_pinned(&c.agents[0].pins())?.peers()?;
        anyhow::ensure!(peers.len() == 1, "{peers:?}");
        let p = &peers[0];
        anyhow::ensure!(
            (p.subnet, p.public_ip, p.vtep_mac, p.mode) == (ref6.subnet, underlay6(1), ref6.vtep_mac, Mode::Vxlan),
            "{p:?}"
        );
        Ok(())
    })
    .unwrap();

    for (a, b, b6) in [(&agent_pod, &ref_pod, ref_pod6), (&ref_pod, &agent_pod, agent_pod6)] {
        wait_ping_any(a, IpAddr::V6(b6));
        wait_ping(a, b.ip());
        tcp_roundtrip_to(a, b, IpAddr::V6(b6), 2 << 20);
        tcp_roundtrip(a, b, 2 << 20);
    }

    // MTU. 1420 bytes of ICMPv6 payload make a 1468-byte packet: over the
    // agent pod's MTU (1430) and over flannel-v6.1's (1430), under the
    // reference pod's (1450).
    assert_eq!((c.pod_mtu, reference.pod_mtu), (c.tb.underlay_mtu() - 70, c.tb.underlay_mtu() - 50));
    let big_ping = |from: &Pod, to: std::net::Ipv6Addr| {
        poll_until(Duration::from_secs(10), &format!("{} pings {to} with 1420 bytes", from.name()), || {
            from.run(&["ping", "-6", "-c", "1", "-W", "1", "-s", "1420", &to.to_string()])
        })
        .unwrap();
    };
    big_ping(&ref_pod, agent_pod6);
    // Only an ICMPv6 packet too big sets a path MTU on the reference pod's route.
    let route = ref_pod.run(&["ip", "-6", "route", "get", &agent_pod6.to_string()]).unwrap();
    assert!(route.contains(&format!("mtu {}", c.tb.underlay_mtu() - 70)), "no packet too big learnt: {route}");
    big_ping(&agent_pod, ref_pod6);
    assert!(reference.errors().is_empty(), "{:?}", reference.errors());
}

/// DirectRouting in a dual-stack network: two agents (hosts 0, 1) and a
/// reference node (host 2), all on one IPv6 link. Every v6 peer is on-link,
/// so the agents install them as direct routes (no VXLAN) and the reference
/// routes via PublicIPv6 as flannel's vxlan backend does; pods ping and move
/// TCP over v6 between all three, and on host 0's cable the v6 pod traffic
/// is plain IPv6 between pod addresses, never VXLAN over IPv6.
#[test]
fn direct_routing_sends_v6_pod_traffic_unencapsulated_between_nodes_on_one_link() {
    let c = Cluster::build(2, 1, 0, DUAL_STACK_DIRECT_CONFIG)
        .prepare(address_underlay6)
        .ready(Duration::from_secs(60))
        .start();
    let ref6 = c.flannel[0].lease6.expect("the reference took a v6 lease");
    let subnets6: Vec<ipnet::Ipv6Net> =
        (0..2).map(|i| c.agents[i].lease6().unwrap().0).chain([ref6.subnet]).collect();
    let pods: Vec<Pod> = c.pods.iter().map(|p| p[0].clone()).collect();
    let pods6: Vec<std::net::Ipv6Addr> =
        (0..3).map(|i| add_pod6(c.tb.host(i), &pods[i], subnets6[i], 2)).collect();

    c.flannel[0].wait_applied6(&subnets6[..2], Duration::from_secs(10)).unwrap();
    assert!(c.flannel[0].applied().values().all(|l| l.v6.is_some_and(|v| v.direct)), "{:?}", c.flannel[0].applied());
    for i in 0..2 {
        poll_until(Duration::from_secs(10), &format!("agent {i}'s v6 peers, direct"), || {
            let peers = DatapathMaps6::open_pinned(&c.agents[i].pins())?.peers()?;
            anyhow::ensure!(peers.len() == 2 && peers.iter().all(|p| p.mode == Mode::Direct), "{peers:?}");
            Ok(())
        })
        .unwrap();
    }

    let capture = overlay_tests::capture::Capture::start(&c.tb, 0, "ip6");
    for (a, pod) in pods.iter().enumerate() {
        for (b, ip) in pods6.iter().enumerate() {
            if a != b {
                wait_ping_any(pod, IpAddr::V6(*ip));
            }
        }
    }
    for b in [1, 2] {
        tcp_roundtrip_to(&pods[0], &pods[b], IpAddr::V6(pods6[b]), 1 << 20);
        tcp_roundtrip_to(&pods[b], &pods[0], IpAddr::V6(pods6[0]), 1 << 20);
    }
    let frames = capture.finish_ip6();
    let vxlan: Vec<_> = frames.iter().filter(|f| f.is_vxlan()).collect();
    assert!(vxlan.is_empty(), "VXLAN over IPv6 on the cable with DirectRouting: {:?}", &vxlan[..vxlan.len().min(3)]);
    for b in [1, 2] {
        for (src, dst) in [(pods6[0], pods6[b]), (pods6[b], pods6[0])] {
            let n = frames.iter().filter(|f| f.src == src && f.dst == dst).count();
            assert!(n > 10, "{n} plain IPv6 frames {src} -> {dst} on host 0's cable");
        }
    }
    assert!(c.flannel[0].errors().is_empty(), "{:?}", c.flannel[0].errors());
}
