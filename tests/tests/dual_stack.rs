//! Dual stack (issue #15) end to end: two real agents with a real etcd and
//! flannel's `EnableIPv6` config, pods with an IPv4 address (as every
//! cluster test makes them) plus a global IPv6 address from their node's
//! v6 lease (FLANNEL_IPV6_SUBNET, gateway its first address on cni0, as the
//! CNI bridge plugin sets it up). The hosts' eth0 carry an IPv6 address on
//! the underlay too, so VXLAN runs over IPv6 for the v6 pods.
//!
//! Checked: ping and TCP both ways over v4 and v6; the v6 maps hold the
//! other node's v6 lease and our pods' v6 addresses; overlay0 has the v6
//! address and route with the v6 MTU and FLANNEL_MTU is uplink - 70; a
//! pod sending from an address not its own is dropped; a removed lease's
//! v6 subnet becomes unreachable; `--ip-masq` installs flanneld's rules
//! through ip6tables too, and `cleanup` removes the v6 parts.
use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use ipnet::Ipv6Net;
use overlay_tests::{
    agent::{agent_binary, http_get, Agent, AgentOptions, Launch},
    cluster::{Cluster, PREFIX},
    etcd::Etcd,
    netns::{ensure_bpffs, Pod, Testbed},
    poll_until,
    traffic::{ping6, tcp_roundtrip_to, wait_ping, wait_ping6},
};

const DUAL_CONFIG: &str =
    r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}"#;

fn host_ip6(i: usize) -> String {
    format!("fd00:77::{}", 10 + i)
}

/// Node `i`'s pod also gets the second address of the node's v6 lease,
/// the lease's first address on cni0 as its gateway.
fn add_pod_v6(c: &Cluster, i: usize) -> (Ipv6Net, Ipv6Addr) {
    let (subnet, _) = c.agents[i].lease6().unwrap();
    (subnet, overlay_tests::cluster::add_pod6(c.tb.host(i).ns(), &c.pods[i][0], subnet, 2))
}

fn start() -> (Cluster, Vec<(Ipv6Net, Ipv6Addr)>) {
    start_with_flags(&[])
}

fn start_with_flags(flags: &[&str]) -> (Cluster, Vec<(Ipv6Net, Ipv6Addr)>) {
    start_config(DUAL_CONFIG, flags)
}

fn start_config(config: &str, flags: &[&str]) -> (Cluster, Vec<(Ipv6Net, Ipv6Addr)>) {
    let c = Cluster::build(2, 0, 0, config)
        .agent_flags(flags)
        .prepare(|tb| {
            for (i, h) in tb.hosts().iter().enumerate() {
                h.ns().ip_batch(&[format!("addr add {}/64 dev eth0 nodad", host_ip6(i))]).unwrap();
            }
        })
        .start();
    let v6 = (0..2).map(|i| add_pod_v6(&c, i)).collect();
    (c, v6)
}

#[test]
fn dual_stack_pods_talk_over_v4_and_v6_between_two_agents() {
    let (c, v6) = start();
    let (p0, p1): (&Pod, &Pod) = (&c.pods[0][0], &c.pods[1][0]);

    // FLANNEL_MTU with IPv6 on: the v6 underlay's 70 bytes of headers.
    assert_eq!(c.pod_mtu, c.tb.underlay_mtu() - 70, "FLANNEL_MTU");
    // overlay0: our v6 lease's first address as a /128, the IPv6Network
    // route with the v6 tunnel's MTU.
    let h0 = c.tb.host(0).ns();
    let addrs = h0.run(&["ip", "-6", "addr", "show", "dev", "overlay0"]).unwrap();
    assert!(addrs.contains(&format!("{}/128", v6[0].0.network())), "{addrs}");
    let route = h0.run(&["ip", "-6", "route", "show", "fd42::/48"]).unwrap();
    assert!(route.contains("dev overlay0") && route.contains(&format!("mtu {}", c.pod_mtu)), "{route}");

    for (a, b, b6) in [(p0, p1, v6[1].1), (p1, p0, v6[0].1)] {
        wait_ping(a, b.ip());
        wait_ping6(a, b6);
        tcp_roundtrip_to(a, b, IpAddr::V4(b.ip()), 2 << 20);
        tcp_roundtrip_to(a, b, IpAddr::V6(b6), 2 << 20);
    }

    // The v6 halves went through the v6 maps: the other node's v6 lease
    // via its PublicIPv6, our pod's v6 address learnt.
    for (i, other) in [(0, 1), (1, 0)] {
        let m = c.maps6(i);
        let peers = m.peers().unwrap();
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0].subnet, v6[other].0);
        assert_eq!(peers[0].public_ip, host_ip6(other).parse::<Ipv6Addr>().unwrap());
        // Learnt from the bridge's neighbours within a second or two.
        poll_until(Duration::from_secs(10), &format!("node {i}'s v6 pod in ENDPOINTS6"), || {
            let eps = c.maps6(i).endpoints()?;
            anyhow::ensure!(eps.iter().any(|e| e.ip == v6[i].1), "{:?} not in {eps:?}", v6[i].1);
            Ok(())
        })
        .unwrap();
        let cfg = m.config().unwrap().expect("CONFIG6 filled in");
        assert_eq!((cfg.subnet, cfg.local_ip), (v6[i].0, host_ip6(i).parse().unwrap()));
    }
}

#[test]
fn a_forged_v6_source_is_dropped_and_a_removed_lease_is_unreachable() {
    let (mut c, v6) = start();
    let p0 = c.pods[0][0].clone();
    wait_ping6(&p0, v6[1].1);

    // From pod 0, a source in another node's v6 lease.
    let forged = Ipv6Addr::from(u128::from(v6[1].1) + 7);
    p0.ns().ip_batch(&[format!("addr add {forged}/128 dev eth0 nodad")]).unwrap();
    let before = c.counters(0).get("drop_pod_spoofed_source").copied().unwrap_or(0);
    let out = p0.run(&["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", "-I", &forged.to_string(), &v6[1].1.to_string()]);
    assert!(out.is_err(), "a forged source got answers: {out:?}");
    let after = c.counters(0).get("drop_pod_spoofed_source").copied().unwrap_or(0);
    assert!(after >= before + 3, "drop_pod_spoofed_source {before} -> {after}");
    // (Source selection would prefer the forged address: it is nearer.)
    p0.ns().ip_batch(&[format!("addr del {forged}/128 dev eth0")]).unwrap();
    wait_ping6(&p0, v6[1].1);

    // Node 1 goes away and its lease with it: its v6 subnet is no longer
    // reachable from node 0 (and its entry is gone from the v6 maps).
    c.agents[1].stop();
    let leases = c.etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap();
    let key = leases.iter().map(|(k, _)| k).find(|k| k.contains(&v6[1].0.network().to_string())).expect("node 1's lease");
    c.etcd.delete(key).unwrap();
    poll_until(Duration::from_secs(15), "node 1's v6 lease gone from node 0's maps", || {
        let peers = c.maps6(0).peers()?;
        anyhow::ensure!(peers.is_empty(), "{peers:?}");
        Ok(())
    })
    .unwrap();
    let out = ping6(&p0, v6[1].1);
    assert!(out.is_err(), "node 1's v6 pod still answers after its lease was removed: {out:?}");
}

/// `--ip-masq` (with the default `--iptables-forward-rules`): flanneld's
/// FLANNEL-POSTRTG and FLANNEL-FWD rules for the IPv6Network and our v6
/// lease through ip6tables, pods still talking unmasqueraded; `cleanup`
/// removes them with overlay0's v6 address and route.
#[test]
fn ip_masq_installs_the_v6_rules_and_cleanup_removes_the_v6_parts() {
    let (mut c, v6) = start_with_flags(&["--ip-masq"]);
    let p0 = c.pods[0][0].clone();
    wait_ping6(&p0, v6[1].1);
    let host = c.tb.host(0);
    let pod6 = v6[0].0.to_string();
    let m = "-m comment --comment \"flanneld masq\"";
    let f = "-m comment --comment \"flanneld forward\"";
    // ip6tables-save prints the filter table first.
    let expected = [
        format!("-A FORWARD {f} -j FLANNEL-FWD"),
        format!("-A FLANNEL-FWD -s fd42::/48 {f} -j ACCEPT"),
        format!("-A FLANNEL-FWD -d fd42::/48 {f} -j ACCEPT"),
        format!("-A POSTROUTING {m} -j FLANNEL-POSTRTG"),
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {pod6} -d fd42::/48 {m} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s fd42::/48 -d {pod6} {m} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s fd42::/48 -d {pod6} {m} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s fd42::/48 ! -d ff00::/8 {m} -j MASQUERADE --random-fully"),
        format!("-A FLANNEL-POSTRTG ! -s fd42::/48 -d fd42::/48 {m} -j MASQUERADE --random-fully"),
    ];
    let saved = host.run(&["ip6tables-save"]).unwrap();
    let ours: Vec<&str> = saved.lines().filter(|l| l.contains("flanneld")).collect();
    assert_eq!(ours, expected.iter().map(String::as_str).collect::<Vec<_>>(), "{saved}");

    c.agents[0].stop();
    let out = host
        .exec(&[
            agent_binary().to_str().unwrap(),
            "cleanup",
            &format!("--bpf-pin-dir={}", c.agents[0].pin_root.display()),
            &format!("--subnet-file={}", c.agents[0].subnet_file.display()),
        ])
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleanup failed: {said}");
    let saved = host.run(&["ip6tables-save"]).unwrap();
    assert!(!saved.contains("FLANNEL"), "ip6tables rules removed: {saved}");
    let routes = host.run(&["ip", "-6", "route"]).unwrap();
    assert!(!routes.contains("fd42::/48"), "IPv6 network route removed: {routes}");
    assert!(ping6(&p0, v6[1].1).is_err(), "the node no longer routes the v6 overlay");
}

/// A mixed cluster: a node with a v4-only lease (our flanneld
/// re-implementation, whose lease has no IPv6 part) among dual-stack
/// agents. Its v4 pods reach the agents' pods; the agents' v6 pods still
/// talk; the v4-only lease is an IPv4 peer only.
#[test]
fn a_v4_only_node_in_a_dual_stack_cluster() {
    let c = Cluster::build(2, 1, 0, DUAL_CONFIG)
        .kernel_nodes_v4_only()
        .prepare(|tb| {
            for i in 0..2 {
                tb.host(i).ns().ip_batch(&[format!("addr add {}/64 dev eth0 nodad", host_ip6(i))]).unwrap();
            }
        })
        .start();
    let v6: Vec<_> = (0..2).map(|i| add_pod_v6(&c, i)).collect();
    let kernel = &c.pods[2][0];
    for i in 0..2 {
        let pod = &c.pods[i][0];
        wait_ping(pod, kernel.ip());
        wait_ping(kernel, pod.ip());
        let peers = c.peers(i);
        assert_eq!(peers.len(), 2, "both other nodes are IPv4 peers: {peers:?}");
        let peers6 = c.maps6(i).peers().unwrap();
        assert_eq!(peers6.iter().map(|p| p.subnet).collect::<Vec<_>>(), [v6[1 - i].0], "only the agent is a v6 peer");
    }
    wait_ping6(&c.pods[0][0], v6[1].1);
    wait_ping6(&c.pods[1][0], v6[0].1);
}

/// The lease keeper hands us back a lease whose IPv6 subnet moved while
/// its IPv4 subnet stayed (our key was deleted and another node took our
/// v6 subnet meanwhile): the new v6 lease is applied (subnet.env, overlay0,
/// CONFIG6), not only noticed.
#[test]
fn a_lease_whose_v6_subnet_alone_moved_is_applied() {
    let (c, v6) = start();
    let (old6, _) = v6[0];
    let v4 = c.subnet(0);
    // Someone else's lease on our v6 subnet, then our key goes.
    let squatter = format!("{PREFIX}/subnets/10.42.200.0-24&{}-{}", old6.addr(), old6.prefix_len());
    c.etcd
        .put(
            &squatter,
            r#"{"PublicIP":"192.0.2.99","PublicIPv6":"fd00:77::99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:01:99"}}"#,
        )
        .unwrap();
    let ours = c
        .etcd
        .get_prefix(&format!("{PREFIX}/subnets/"))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.ends_with(&format!("{}-{}&{}-{}", v4.addr(), v4.prefix_len(), old6.addr(), old6.prefix_len())))
        .expect("node 0's lease");
    c.etcd.delete(&ours).unwrap();

    poll_until(Duration::from_secs(20), "node 0's subnet.env names a new v6 lease", || {
        let (now6, _) = c.agents[0].lease6()?;
        anyhow::ensure!(now6 != old6, "still {now6}");
        Ok(())
    })
    .unwrap();
    let (new6, _) = c.agents[0].lease6().unwrap();
    assert_eq!(c.subnet(0), v4, "the IPv4 subnet stayed");
    let cfg = c.maps6(0).config().unwrap().expect("CONFIG6");
    assert_eq!(cfg.subnet, new6, "CONFIG6 follows the new v6 lease");
    let addrs = c.tb.host(0).ns().run(&["ip", "-6", "addr", "show", "dev", "overlay0"]).unwrap();
    assert!(addrs.contains(&format!("{}/128", new6.network())) && !addrs.contains(&format!("{}/128", old6.network())), "{addrs}");
}

/// A node restarted IPv4-only (the config lost EnableIPv6) after a
/// dual-stack run: overlay0's v6 address and the IPv6Network route, the
/// v6 maps and the ip6tables rules of the earlier run are gone.
#[test]
fn an_ipv4_only_restart_after_dual_stack_removes_the_v6_leftovers() {
    let (mut c, v6) = start_with_flags(&["--ip-masq"]);
    wait_ping6(&c.pods[0][0], v6[1].1);
    assert!(!c.maps6(0).peers().unwrap().is_empty());
    c.agents[0].stop();
    c.etcd.put(&format!("{PREFIX}/config"), r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    c.agents[0].restart(c.tb.host(0)).unwrap();
    c.agents[0].wait_ready_n(2, Duration::from_secs(30)).unwrap();

    let host = c.tb.host(0).ns();
    let addrs = host.run(&["ip", "-6", "addr", "show", "dev", "overlay0", "scope", "global"]).unwrap();
    assert!(addrs.trim().is_empty(), "overlay0's v6 address stayed: {addrs}");
    let routes = host.run(&["ip", "-6", "route", "show", "fd42::/48"]).unwrap();
    assert!(routes.trim().is_empty(), "the IPv6Network route stayed: {routes}");
    let m = c.maps6(0);
    assert!(m.peers().unwrap().is_empty(), "v6 peers stayed: {:?}", m.peers());
    assert!(m.endpoints().unwrap().is_empty(), "v6 endpoints stayed: {:?}", m.endpoints());
    assert_eq!(m.config().unwrap(), None, "CONFIG6 stayed filled in");
    let saved = host.run(&["ip6tables-save"]).unwrap();
    assert!(!saved.contains("flanneld"), "ip6tables rules stayed: {saved}");
    // IPv4 still works.
    wait_ping(&c.pods[0][0], c.pods[1][0].ip());
}

/// /readyz follows the ip6tables rules as it follows the iptables ones:
/// when their resync fails (here ip6tables itself fails, through a wrapper
/// first on the agent's PATH), the node is not ready and says why; when it
/// works again, it is ready again.
#[test]
fn readyz_follows_the_ip6tables_resync() {
    const PORT: u16 = 10266;
    ensure_bpffs().unwrap();
    let tb = Testbed::new(1).unwrap();
    let host = tb.host(0);
    host.ns().ip_batch(&[format!("addr add {}/64 dev eth0 nodad", host_ip6(0))]).unwrap();
    let bin = tb.dir().join("ip6tables-wrapper");
    std::fs::create_dir_all(&bin).unwrap();
    let broken = tb.dir().join("ip6tables-broken");
    let script = format!(
        "#!/bin/sh\n[ -e {} ] && {{ echo 'ip6tables: broken by the test' >&2; exit 4; }}\nexec /usr/sbin/ip6tables \"$@\"\n",
        broken.display()
    );
    std::fs::write(bin.join("ip6tables"), script).unwrap();
    std::fs::set_permissions(bin.join("ip6tables"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let etcd = Etcd::start().unwrap();
    etcd.put(&format!("{PREFIX}/config"), DUAL_CONFIG).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let _agent = Agent::start_forwarded_with(
        host,
        AgentOptions {
            etcd_endpoints: &etcd.endpoint(),
            prefix: PREFIX,
            dir: tb.dir(),
            extra: ["--ip-masq", "--iptables-resync=1", "--healthz-ip=127.0.0.1", &format!("--healthz-port={PORT}")]
                .map(String::from)
                .to_vec(),
        },
        Launch { env: vec![("PATH".into(), path)], ..Default::default() },
    )
    .unwrap();
    let answer = |status: u16, needle: &str| {
        poll_until(Duration::from_secs(30), &format!("/readyz {status} with {needle:?}"), || {
            let (s, body) = http_get(host, PORT, "/readyz", Duration::from_secs(2))?;
            anyhow::ensure!(s == status && body.contains(needle), "{s}: {body}");
            Ok(())
        })
        .unwrap()
    };
    answer(200, "ready");
    std::fs::write(&broken, "").unwrap();
    answer(503, "ip6tables");
    std::fs::remove_file(&broken).unwrap();
    answer(200, "ready");
}

/// `inspect` and /metrics on a dual-stack agent show the v6 side: CONFIG6
/// (our v6 lease, PublicIPv6), the other node's v6 lease as a remote
/// subnet and sender, our pod's v6 address as an endpoint, in JSON and
/// in the text; /metrics counts the v6 peers and endpoints.
#[test]
fn inspect_and_metrics_show_the_v6_maps() {
    const PORT: u16 = 9_361;
    let healthz = ["--healthz-ip=127.0.0.1".to_string(), format!("--healthz-port={PORT}")];
    let (c, v6) = start_with_flags(&healthz.iter().map(String::as_str).collect::<Vec<_>>());
    let p0 = c.pods[0][0].clone();
    wait_ping6(&p0, v6[1].1);
    wait_ping6(&c.pods[1][0], v6[0].1);
    poll_until(Duration::from_secs(10), "node 0's v6 pod learnt", || {
        let eps = c.maps6(0).endpoints()?;
        anyhow::ensure!(eps.iter().any(|e| e.ip == v6[0].1), "{eps:?}");
        Ok(())
    })
    .unwrap();

    let j = c.agents[0].inspect().unwrap();
    let v = &j["ipv6"];
    let (me, other) = (host_ip6(0), host_ip6(1));
    assert_eq!(v["config"]["subnet"], v6[0].0.to_string(), "{v:#}");
    assert_eq!(v["config"]["public_ip"], me, "{v:#}");
    assert_eq!(v["config"]["network"], "fd42::/48", "{v:#}");
    assert_eq!(v["subnets"][0]["subnet"], v6[1].0.to_string(), "{v:#}");
    assert_eq!(v["subnets"][0]["public_ip"], other, "{v:#}");
    assert_eq!(v["subnets"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["nodes"][0]["public_ip"], other, "{v:#}");
    assert_eq!(v["nodes"][0]["subnets"], serde_json::json!([v6[1].0.to_string()]), "{v:#}");
    assert!(v["endpoints"].as_array().unwrap().iter().any(|e| e["ip"] == v6[0].1.to_string()), "{v:#}");

    let out = std::process::Command::new(agent_binary())
        .args(["inspect", &format!("--bpf-pin-dir={}", c.agents[0].pin_root.display())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        format!("public IPv6    {me}"),
        format!("our subnet     {}", v6[0].0),
        "remote IPv6 subnets (1)".to_string(),
        v6[1].0.to_string(),
        other.clone(),
        "local IPv6 pods with direct delivery".to_string(),
        v6[0].1.to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }

    // bpftool reads the v6 maps with field names too (they carry BTF).
    for (map, field) in [("CONFIG6", "local_subnet"), ("SUBNETS6", "public_ip"), ("ENDPOINTS6", "ifindex")] {
        let pin = c.agents[0].pins().map(map);
        let out = std::process::Command::new("bpftool").args(["map", "dump", "pinned"]).arg(&pin).output();
        let out = out.unwrap_or_else(|e| panic!("bpftool is needed for this test (cargo xtask setup installs it): {e}"));
        let dump = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && dump.contains(&format!("\"{field}\"")), "{map}: {dump}{}", String::from_utf8_lossy(&out.stderr));
    }

    let (status, body) = http_get(c.tb.host(0), PORT, "/metrics", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200, "{body}");
    let value = |name: &str| -> Option<u64> {
        body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(value("overlay_leases_known_v6"), Some(1), "{body}");
    assert!(value("overlay_pod_endpoints_v6").is_some_and(|n| n >= 1), "{body}");
}

/// `--bpf-log-drops` on a dual-stack node: a pod's packet from a forged v6
/// source is logged with both v6 addresses (before issue #15's step 3 the
/// record only said "not IPv4").
#[test]
fn a_forged_v6_source_is_logged_with_its_v6_addresses() {
    let (c, v6) = start_with_flags(&["--bpf-log-drops"]);
    let p0 = c.pods[0][0].clone();
    wait_ping6(&p0, v6[1].1);
    let forged = Ipv6Addr::from(u128::from(v6[1].1) + 9);
    p0.ns().ip_batch(&[format!("addr add {forged}/128 dev eth0 nodad")]).unwrap();
    // A UDP datagram (next header 17).
    let dst = std::net::SocketAddrV6::new(v6[1].1, 7777, 0, 0);
    p0.in_ns(|| -> std::io::Result<()> {
        let s = std::net::UdpSocket::bind(std::net::SocketAddrV6::new(forged, 5555, 0, 0))?;
        for _ in 0..3 {
            s.send_to(b"forged", dst)?;
        }
        Ok(())
    })
    .unwrap();
    let expected = format!("from_pods drop_pod_spoofed_source: {forged} -> {} next header 17", v6[1].1);
    c.agents[0].wait_log(&expected, Duration::from_secs(5)).unwrap();
}

/// host-gw with IPv6 between two agents: each other's v6 lease is a direct
/// peer, and v6 pod traffic crosses the cable as plain IPv6 between the
/// pods' addresses (no VXLAN), both ways, ping and TCP.
#[test]
fn host_gw_routes_v6_pods_between_two_agents() {
    const HOST_GW_DUAL: &str =
        r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"host-gw"}}"#;
    let (c, v6) = start_config(HOST_GW_DUAL, &[]);
    assert_eq!(c.pod_mtu, c.tb.underlay_mtu(), "host-gw: no encapsulation, the uplink's MTU");
    for i in 0..2 {
        poll_until(Duration::from_secs(10), &format!("node {i}'s v6 peer, direct"), || {
            let peers = c.maps6(i).peers()?;
            anyhow::ensure!(peers.len() == 1 && peers[0].mode == overlay_agent::datapath::Mode::Direct, "{peers:?}");
            anyhow::ensure!(peers[0].subnet == v6[1 - i].0, "{peers:?}");
            Ok(())
        })
        .unwrap();
    }
    let (p0, p1) = (&c.pods[0][0], &c.pods[1][0]);
    let capture = overlay_tests::capture::Capture::start(&c.tb, 0, "ip6");
    wait_ping6(p0, v6[1].1);
    wait_ping6(p1, v6[0].1);
    tcp_roundtrip_to(p0, p1, IpAddr::V6(v6[1].1), 1 << 20);
    tcp_roundtrip_to(p1, p0, IpAddr::V6(v6[0].1), 1 << 20);
    let frames = capture.finish_ip6();
    let vxlan: Vec<_> = frames.iter().filter(|f| f.is_vxlan()).collect();
    assert!(vxlan.is_empty(), "VXLAN over IPv6 on the cable with host-gw: {:?}", &vxlan[..vxlan.len().min(3)]);
    for (src, dst) in [(v6[0].1, v6[1].1), (v6[1].1, v6[0].1)] {
        let n = frames.iter().filter(|f| f.src == src && f.dst == dst).count();
        assert!(n > 10, "{n} plain IPv6 frames {src} -> {dst} on host 0's cable");
    }
}
