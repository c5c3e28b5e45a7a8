//! IPv6-only clusters (issue #15, flannel's `EnableIPv4: false`): two real
//! agents with a real etcd, hosts whose eth0 has only an IPv6 address (and
//! an IPv6 default route), pods with only an IPv6 address from their
//! node's v6 lease (gateway its first address on cni0).
//!
//! Checked: the leases are flanneld's (key `0.0.0.0-0&<v6>-64`, exact
//! value), subnet.env is exactly what flanneld's `WriteSubnetFile` writes
//! for IPv6 only (no IPv4 pair); ping and TCP both ways; nothing IPv4 is
//! set up (no overlay0 IPv4 address or route, the IPv4 CONFIG unfilled, no
//! IPv4 peers); a removed lease's subnet becomes unreachable; a restart
//! reuses the lease.
use std::{net::Ipv6Addr, time::Duration};

use ipnet::Ipv6Net;
use overlay_agent::etcd::registry::format_mac;
use overlay_tests::{
    cluster::{Cluster, PREFIX},
    netns::Pod6,
    poll_until,
    control_plane::count_bpf_calls,
    traffic::{ping6, tcp_roundtrip_to, wait_ping6},
};

const V6_ONLY_CONFIG: &str =
    r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd43::/48","Backend":{"Type":"vxlan"}}"#;

fn host_ip6(i: usize) -> Ipv6Addr {
    format!("fd00:78::{}", 10 + i).parse().unwrap()
}

/// `n` agents on IPv6-only hosts, one IPv6-only pod each.
fn start(n: usize) -> (Cluster, Vec<(Ipv6Net, Pod6)>) {
    let c = cluster(n);
    let pods = (0..n)
        .map(|i| {
            let (subnet, gw) = c.agents[i].lease6().unwrap();
            let pod = c.tb.host(i).add_pod6("cni0", subnet, Ipv6Addr::from(u128::from(gw) + 1), gw, c.pod_mtu).unwrap();
            (subnet, pod)
        })
        .collect();
    (c, pods)
}

/// `n` agents on IPv6-only hosts, no pods.
fn cluster(n: usize) -> Cluster {
    Cluster::build(n, 0, 0, V6_ONLY_CONFIG)
        .without_pods()
        .prepare(|tb| {
            for (i, h) in tb.hosts().iter().enumerate() {
                h.ns()
                    .ip_batch(&[
                        format!("addr del {} dev eth0", h.cidr()),
                        format!("addr add {}/64 dev eth0 nodad", host_ip6(i)),
                        "route add default via fd00:78::1 dev eth0".into(),
                    ])
                    .unwrap();
            }
        })
        .start()
}

/// The agent's lease key, found by its v6 subnet.
fn lease_key(subnet: Ipv6Net) -> String {
    format!("{PREFIX}/subnets/0.0.0.0-0&{}-{}", subnet.addr(), subnet.prefix_len())
}

#[test]
fn ipv6_only_nodes_write_flannels_leases_and_pods_talk_both_ways() {
    let (c, pods) = start(2);

    // Leases: flanneld's IPv6-only key and value, nothing else.
    let leases = c.etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    for (i, (subnet, _)) in pods.iter().enumerate() {
        assert!("fd43::/48".parse::<Ipv6Net>().unwrap().contains(subnet) && subnet.prefix_len() == 64, "{subnet}");
        let mac = c.maps6(i).config().unwrap().expect("CONFIG6 filled in").vtep_mac;
        let value = c.etcd.get(&lease_key(*subnet)).unwrap().unwrap_or_else(|| panic!("no {} in {leases:?}", lease_key(*subnet)));
        assert_eq!(
            value,
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                host_ip6(i),
                format_mac(&mac)
            )
        );
        // subnet.env exactly as flanneld writes it without IPv4.
        let env = std::fs::read_to_string(&c.agents[i].subnet_file).unwrap();
        assert_eq!(
            env,
            format!(
                "FLANNEL_IPV6_NETWORK=fd43::/48\nFLANNEL_IPV6_SUBNET={}/64\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=false\n",
                Ipv6Addr::from(u128::from(subnet.addr()) + 1),
                c.tb.underlay_mtu() - 70
            )
        );
    }

    let ((_, p0), (_, p1)) = (&pods[0], &pods[1]);
    for (a, b) in [(p0, p1), (p1, p0)] {
        wait_ping6(a, b.ip());
        tcp_roundtrip_to(a, b, b.ip().into(), 2 << 20);
    }

    for (i, other) in [(0, 1), (1, 0)] {
        // The v6 maps hold the other node and our pod (learnt from the
        // bridge found by its v6 gateway).
        let peers = c.maps6(i).peers().unwrap();
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!((peers[0].subnet, peers[0].public_ip), (pods[other].0, host_ip6(other)));
        poll_until(Duration::from_secs(10), &format!("node {i}'s v6 pod in ENDPOINTS6"), || {
            let eps = c.maps6(i).endpoints()?;
            anyhow::ensure!(eps.iter().any(|e| e.ip == pods[i].1.ip()), "{:?} not in {eps:?}", pods[i].1.ip());
            Ok(())
        })
        .unwrap();
        // Nothing IPv4: no address or route on overlay0 (a 0.0.0.0/0 one
        // would swallow the host's IPv4), the IPv4 programs unconfigured.
        let host = c.tb.host(i).ns();
        let v4 = host.run(&["ip", "-4", "addr", "show", "dev", "overlay0"]).unwrap();
        assert!(v4.trim().lines().count() <= 1 && !v4.contains("inet "), "{v4}");
        let routes = host.run(&["ip", "-4", "route", "show", "dev", "overlay0"]).unwrap();
        assert!(routes.trim().is_empty(), "IPv4 routes via overlay0: {routes}");
        assert_eq!(c.maps(i).config().unwrap(), None, "the IPv4 CONFIG is filled in");
        assert!(c.peers(i).is_empty(), "IPv4 peers: {:?}", c.peers(i));
    }
}

#[test]
fn an_ipv6_only_lease_removed_is_unreachable_and_a_restart_reuses_the_lease() {
    let (mut c, pods) = start(3);
    let ((sn0, p0), (sn1, p1), (_, p2)) = (&pods[0], &pods[1], &pods[2]);
    wait_ping6(p0, p1.ip());

    // Node 0 restarts: the same lease (key and subnet), pods talk again.
    let before = c.etcd.get(&lease_key(*sn0)).unwrap().expect("node 0's lease");
    c.agents[0].stop();
    c.agents[0].restart(c.tb.host(0)).unwrap();
    c.agents[0].wait_ready_n(2, Duration::from_secs(30)).unwrap();
    assert_eq!(c.agents[0].lease6().unwrap().0, *sn0, "the v6 lease after a restart");
    assert_eq!(c.etcd.get(&lease_key(*sn0)).unwrap(), Some(before), "the lease in etcd after a restart");
    assert_eq!(c.etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap().len(), 3);
    wait_ping6(p0, p1.ip());
    wait_ping6(p1, p0.ip());

    // Node 1 goes away and its lease with it: only its entry leaves node
    // 0's maps (all IPv6-only leases share the IPv4 part 0.0.0.0/0), its
    // subnet is unreachable, node 2's still reachable.
    wait_ping6(p0, p2.ip());
    c.agents[1].stop();
    c.etcd.delete(&lease_key(*sn1)).unwrap();
    poll_until(Duration::from_secs(15), "node 1's lease gone from node 0's maps", || {
        let peers = c.maps6(0).peers()?;
        anyhow::ensure!(peers.len() == 1 && peers[0].subnet == pods[2].0, "{peers:?}");
        Ok(())
    })
    .unwrap();
    let out = ping6(p0, p1.ip());
    assert!(out.is_err(), "node 1's pod still answers after its lease was removed: {out:?}");
    wait_ping6(p0, p2.ip());
}

/// The IPv6 counterpart of lease_state.rs's count (issue #17): removing k
/// of N IPv6 peers costs a few map syscalls each, not a walk of SUBNETS6
/// per removal (O(k*N)). Counted with strace on the running agent while
/// 256 of 512 IPv6-only leases go; a walk per removal would be ~256 * 512.
#[test]
fn removing_ipv6_peers_costs_a_few_map_syscalls_each() {
    let c = cluster(1);
    let (n, k) = (512usize, 256usize);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([c.etcd.endpoint()], None).await?;
        // fd43:0:0:100:: to fd43:0:0:2ff::, the first half removed below.
        for j in 0x100..0x100 + n {
            let key = format!("{PREFIX}/subnets/0.0.0.0-0&fd43:0:0:{j:x}::-64");
            let value = format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:79::{j:x}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"0e:00:00:00:{:02x}:{:02x}"}}}}"#,
                j >> 8,
                j & 0xff
            );
            client.put(key, value, None).await?;
        }
        anyhow::Ok(())
    })
    .unwrap();
    let peers_become = |want: usize| {
        poll_until(Duration::from_secs(60), &format!("{want} IPv6 peers"), || {
            let have = c.maps6(0).peers()?.len();
            anyhow::ensure!(have == want, "{have}");
            Ok(())
        })
        .unwrap()
    };
    peers_become(n);

    let pid = c.agents[0].pid().expect("agent running");
    let (calls, ()) = count_bpf_calls(pid, c.tb.dir(), || {
        c.etcd.etcdctl(&["del", "--prefix", &format!("{PREFIX}/subnets/0.0.0.0-0&fd43:0:0:1")]).unwrap();
        peers_become(n - k);
    })
    .unwrap();
    eprintln!("removing {k} of {n} IPv6 peers: {calls} bpf calls");
    // Per peer: the SUBNETS6 delete and the NODES6 delete; plus the
    // agent's once-a-second endpoint sync and whatever runs while we wait.
    assert!(calls <= 8 * k as u64, "{calls} bpf calls to remove {k} of {n} IPv6 peers: more than a few per peer");
}
