//! Translated traffic across the fast path: Kubernetes Services as
//! kube-proxy (iptables mode) writes them, a published port as `docker run
//! -p` writes it, masquerade to a host outside the cluster, hairpin; the
//! rules are real iptables rules in the nodes' namespaces, driven by real
//! agents. Also what a pod may not send (forged sources, a node's VXLAN
//! port), and what the host firewall's FORWARD chain sees.
//! Needs root.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use overlay_tests::netns::{Netns, Pod};
use overlay_tests::{
    cluster::{Cluster, VXLAN_CONFIG},
    netns::next,
    traffic::{send_raw_ipv4, tcp_roundtrip, wait_ping},
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A server in a pod that answers every TCP connection and every UDP
/// datagram on `port` with the pod's own address, until dropped.
struct Identity {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Identity {
    fn serve(pod: &Pod, port: u16) -> Identity {
        let ip = pod.ip();
        let tcp = pod.in_ns(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))).unwrap();
        let udp = pod.in_ns(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))).unwrap();
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s1 = stop.clone();
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(format!("{ip}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let s2 = stop.clone();
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(ip.to_string().as_bytes(), peer);
                }
            }
        });
        Identity { stop, threads: vec![t1, t2] }
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from `from` to `to` over TCP and returns what the server said
/// (the backend's address), or the error.
fn tcp_ask(from: &Netns, to: SocketAddrV4) -> Result<Ipv4Addr, String> {
    from.in_ns(|| {
        let mut c = TcpStream::connect_timeout(&to.into(), TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| format!("read from {to}: {e}"))?;
        s.trim().parse().map_err(|e| format!("answer {s:?} from {to}: {e}"))
    })
}

/// Sends a UDP datagram from `from` to `to`; returns the answer and the
/// address it came from (which must be `to`: the reverse translation).
fn udp_ask(from: &Netns, to: SocketAddrV4) -> Result<(Ipv4Addr, SocketAddrV4), String> {
    from.in_ns(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        for _ in 0..3 {
            s.send_to(b"who", to).unwrap();
            let mut buf = [0u8; 64];
            if let Ok((n, std::net::SocketAddr::V4(peer))) = s.recv_from(&mut buf) {
                let ip = std::str::from_utf8(&buf[..n]).unwrap().parse().map_err(|e| format!("{e}"))?;
                return Ok((ip, peer));
            }
        }
        Err(format!("no UDP answer from {to}"))
    })
}

/// Runs iptables commands (one per line) in `ns`.
fn iptables(ns: &Netns, lines: &[String]) {
    for line in lines {
        let argv: Vec<&str> = std::iter::once("iptables").chain(line.split_whitespace()).collect();
        ns.run(&argv).unwrap_or_else(|e| panic!("iptables {line}: {e}"));
    }
}

/// kube-proxy's (iptables mode) skeleton: KUBE-SERVICES from PREROUTING and
/// OUTPUT, KUBE-NODEPORTS for local destinations, KUBE-MARK-MASQ and
/// KUBE-POSTROUTING masquerading what is marked.
fn kube_proxy_base(ns: &Netns) {
    let lines: Vec<String> = [
        "-t nat -N KUBE-SERVICES",
        "-t nat -N KUBE-NODEPORTS",
        "-t nat -N KUBE-MARK-MASQ",
        "-t nat -N KUBE-POSTROUTING",
        "-t nat -A PREROUTING -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
        "-t nat -A OUTPUT -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
        "-t nat -A POSTROUTING -m comment --comment kubernetes-postrouting-rules -j KUBE-POSTROUTING",
        "-t nat -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-t nat -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        "-t nat -A KUBE-POSTROUTING -j MASQUERADE --random-fully",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    iptables(ns, &lines);
}

/// A Service as kube-proxy writes it: `KUBE-SVC-<name>` spreading over one
/// `KUBE-SEP-<name><i>` per backend, each DNATing to it (and marking for
/// masquerade when a backend calls itself: hairpin), with traffic from
/// outside the cluster marked for masquerade; `node_port` adds the
/// KUBE-NODEPORTS entry.
fn kube_proxy_service(
    ns: &Netns,
    name: &str,
    cluster: &str,
    vip: Ipv4Addr,
    port: u16,
    node_port: Option<u16>,
    backends: &[(Ipv4Addr, u16)],
) {
    let svc = format!("KUBE-SVC-{name}");
    let mut l = vec![format!("-t nat -N {svc}")];
    for proto in ["tcp", "udp"] {
        l.push(format!("-t nat -A KUBE-SERVICES -d {vip}/32 -p {proto} --dport {port} -j {svc}"));
        if let Some(np) = node_port {
            l.push(format!("-t nat -A KUBE-NODEPORTS -p {proto} --dport {np} -j KUBE-MARK-MASQ"));
            l.push(format!("-t nat -A KUBE-NODEPORTS -p {proto} --dport {np} -j {svc}"));
        }
    }
    l.push(format!("-t nat -A {svc} ! -s {cluster} -d {vip}/32 -j KUBE-MARK-MASQ"));
    let n = backends.len();
    for (i, (ip, bport)) in backends.iter().enumerate() {
        let sep = format!("KUBE-SEP-{name}{i}");
        l.push(format!("-t nat -N {sep}"));
        let remaining = n - i;
        if remaining > 1 {
            let p = 1.0 / remaining as f64;
            l.push(format!("-t nat -A {svc} -m statistic --mode random --probability {p:.5} -j {sep}"));
        } else {
            l.push(format!("-t nat -A {svc} -j {sep}"));
        }
        l.push(format!("-t nat -A {sep} -s {ip}/32 -j KUBE-MARK-MASQ"));
        for proto in ["tcp", "udp"] {
            l.push(format!("-t nat -A {sep} -p {proto} -j DNAT --to-destination {ip}:{bport}"));
        }
    }
    iptables(ns, &l);
    if node_port.is_some() {
        iptables(ns, &["-t nat -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".to_string()]);
    }
}

/// What the nodes' data paths did and know, for failure messages.
fn state(c: &Cluster) -> String {
    let mut out = String::new();
    for i in 0..c.agents.len() {
        let mut moved: Vec<(String, u64)> = c.counters(i).into_iter().filter(|(_, n)| *n > 0).collect();
        moved.sort();
        let eps = c.maps(i).endpoints().unwrap_or_default();
        let flows = c.maps(i).kernel_flows().unwrap_or_default();
        out.push_str(&format!(
            "\nnode {i}: counters {moved:?}\n  endpoints {eps:?}\n  kernel flows {flows:?}\n  log:\n{}",
            c.agents[i].log_text()
        ));
    }
    out
}

fn counter(c: &Cluster, i: usize, name: &str) -> u64 {
    c.counters(i).get(name).copied().unwrap_or_else(|| panic!("no counter {name}"))
}

const CLUSTER_NET: &str = "10.42.0.0/16";

#[test]
fn cluster_ip_reaches_backends_on_both_nodes_over_tcp_and_udp() {
    let c = Cluster::build(2, 0, 0, VXLAN_CONFIG).start();
    let client = &c.pods[0][0];
    let remote = &c.pods[1][0];
    let local = c.add_agent_pod(0, 3);
    let _s1 = Identity::serve(remote, 8080);
    let _s2 = Identity::serve(&local, 8080);
    let vip_remote = Ipv4Addr::new(10, 96, 0, 10);
    let vip_both = Ipv4Addr::new(10, 96, 0, 11);
    // kube-proxy runs on every node; the client's node translates.
    for i in 0..2 {
        let ns = c.tb.host(i).ns();
        kube_proxy_base(ns);
        kube_proxy_service(ns, "REMOTE", CLUSTER_NET, vip_remote, 80, None, &[(remote.ip(), 8080)]);
        kube_proxy_service(ns, "BOTH", CLUSTER_NET, vip_both, 80, None, &[(remote.ip(), 8080), (local.ip(), 8080)]);
    }
    wait_ping(client.ns(), remote.ip());
    wait_ping(client.ns(), local.ip());
    c.wait_fast_path();
    let kernel_flows_before = counter(&c, 0, "passed_kernel_flow") + counter(&c, 1, "passed_kernel_flow");

    assert_eq!(tcp_ask(client.ns(), SocketAddrV4::new(vip_remote, 80)), Ok(remote.ip()), "{}", state(&c));
    let (who, from) = udp_ask(client.ns(), SocketAddrV4::new(vip_remote, 80)).unwrap();
    assert_eq!(who, remote.ip());
    assert_eq!(
        from,
        SocketAddrV4::new(vip_remote, 80),
        "the reply must come from the Service address; {}",
        state(&c)
    );

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let who = tcp_ask(client.ns(), SocketAddrV4::new(vip_both, 80)).unwrap();
        seen.insert(who);
        let (who, from) = udp_ask(client.ns(), SocketAddrV4::new(vip_both, 80)).unwrap();
        assert_eq!(from, SocketAddrV4::new(vip_both, 80));
        seen.insert(who);
    }
    assert_eq!(seen, [remote.ip(), local.ip()].into_iter().collect(), "both backends answer");
    // The replies from the remote backend were handed to the kernel (its
    // conntrack reverses the DNAT) instead of straight to the client.
    let kernel_flows = counter(&c, 0, "passed_kernel_flow") + counter(&c, 1, "passed_kernel_flow");
    assert!(kernel_flows > kernel_flows_before, "replies of translated flows go through the kernel");
}

#[test]
fn ordinary_pod_traffic_keeps_the_fast_path_next_to_services() {
    let c = Cluster::build(2, 0, 0, VXLAN_CONFIG).start();
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    for i in 0..2 {
        let ns = c.tb.host(i).ns();
        kube_proxy_base(ns);
        kube_proxy_service(ns, "REMOTE", CLUSTER_NET, Ipv4Addr::new(10, 96, 0, 10), 80, None, &[(b.ip(), 8080)]);
    }
    let _s = Identity::serve(b, 8080);
    wait_ping(a.ns(), b.ip());
    c.wait_fast_path();
    let before: Vec<_> = (0..2).map(|i| c.counters(i)).collect();
    for _ in 0..20 {
        assert_eq!(tcp_ask(a.ns(), SocketAddrV4::new(b.ip(), 8080)), Ok(b.ip()));
    }
    tcp_roundtrip(a, b, 4 << 20);
    let after: Vec<_> = (0..2).map(|i| c.counters(i)).collect();
    for i in 0..2 {
        let moved = |k: &str| after[i][k] - before[i][k];
        assert_eq!(moved("passed_kernel_flow"), 0, "node {i}: plain pod traffic left the fast path; counters {:?}\nlog:\n{}", after[i], c.agents[i].log_text());
        assert!(moved("encapsulated") > 20, "node {i}: encapsulated {}; {}", moved("encapsulated"), state(&c));
        assert!(moved("decap_to_pod") > 20, "node {i}: decap_to_pod {}; {}", moved("decap_to_pod"), state(&c));
    }
}

#[test]
fn node_port_from_outside_reaches_a_pod_on_the_other_node() {
    // Host 2 is outside the cluster (no agent): a client on the underlay.
    let c = Cluster::build(2, 0, 1, VXLAN_CONFIG).start();
    let backend = &c.pods[1][0];
    let _s = Identity::serve(backend, 8080);
    for i in 0..2 {
        let ns = c.tb.host(i).ns();
        kube_proxy_base(ns);
        kube_proxy_service(ns, "NP", CLUSTER_NET, Ipv4Addr::new(10, 96, 0, 20), 80, Some(30080), &[(backend.ip(), 8080)]);
    }
    let outside = c.tb.host(2).ns();
    let node0 = c.tb.host(0).ip();
    assert_eq!(tcp_ask(outside, SocketAddrV4::new(node0, 30080)), Ok(backend.ip()));
    let (who, from) = udp_ask(outside, SocketAddrV4::new(node0, 30080)).unwrap();
    assert_eq!((who, from), (backend.ip(), SocketAddrV4::new(node0, 30080)));
    // And from a pod on the node itself, to its own node's NodePort.
    let client = &c.pods[0][0];
    assert_eq!(tcp_ask(client.ns(), SocketAddrV4::new(node0, 30080)), Ok(backend.ip()));
}

#[test]
fn published_port_on_the_server_node_answers_a_pod_on_another_node() {
    let c = Cluster::build(2, 0, 0, VXLAN_CONFIG).start();
    let (client, server) = (&c.pods[0][0], &c.pods[1][0]);
    let _s = Identity::serve(server, 8080);
    let node1 = c.tb.host(1).ip();
    wait_ping(client.ns(), server.ip());
    c.wait_fast_path();
    // What `docker run -p 18080:8080` writes (its DOCKER chain).
    let ns = c.tb.host(1).ns();
    iptables(
        ns,
        &[
            "-t nat -N DOCKER".to_string(),
            "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER".to_string(),
            format!("-t nat -A DOCKER -p tcp --dport 18080 -j DNAT --to-destination {}:8080", server.ip()),
            format!("-t nat -A DOCKER -p udp --dport 18080 -j DNAT --to-destination {}:8080", server.ip()),
        ],
    );
    assert_eq!(tcp_ask(client.ns(), SocketAddrV4::new(node1, 18080)), Ok(server.ip()));
    let (who, from) = udp_ask(client.ns(), SocketAddrV4::new(node1, 18080)).unwrap();
    assert_eq!((who, from), (server.ip(), SocketAddrV4::new(node1, 18080)));
    assert!(counter(&c, 1, "passed_kernel_flow") > 0, "the server's replies went through its node's kernel");
}

#[test]
fn hairpin_a_service_whose_backend_is_the_caller() {
    let c = Cluster::build(2, 0, 0, VXLAN_CONFIG).start();
    let pod = &c.pods[0][0];
    // The CNI bridge plugin sets hairpin mode on pod ports (hairpinMode).
    c.tb.host(0).ns().run(&["bridge", "link", "set", "dev", pod.host_veth(), "hairpin", "on"]).unwrap();
    let _s = Identity::serve(pod, 8080);
    let vip = Ipv4Addr::new(10, 96, 0, 30);
    let ns = c.tb.host(0).ns();
    kube_proxy_base(ns);
    kube_proxy_service(ns, "SELF", CLUSTER_NET, vip, 80, None, &[(pod.ip(), 8080)]);
    assert_eq!(tcp_ask(pod.ns(), SocketAddrV4::new(vip, 80)), Ok(pod.ip()));
    let (who, from) = udp_ask(pod.ns(), SocketAddrV4::new(vip, 80)).unwrap();
    assert_eq!((who, from), (pod.ip(), SocketAddrV4::new(vip, 80)));
}

#[test]
fn ip_masq_reaches_a_host_outside_the_cluster() {
    let c = Cluster::build(2, 0, 1, VXLAN_CONFIG).agent_flags(&["--ip-masq"]).start();
    let outside = c.tb.host(2);
    // A server outside the cluster answers with the address it saw.
    let listener = outside.ns().in_ns(|| TcpListener::bind(SocketAddrV4::new(outside.ip(), 9090))).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(format!("{}\n", peer.ip()).as_bytes()).unwrap();
    });
    let seen = tcp_ask(c.pods[0][0].ns(), SocketAddrV4::new(outside.ip(), 9090)).unwrap();
    server.join().unwrap();
    assert_eq!(seen, c.tb.host(0).ip(), "masqueraded to the node's address");
    // Pod to pod stays unmasqueraded.
    let _s = Identity::serve(&c.pods[1][0], 8080);
    assert_eq!(tcp_ask(c.pods[0][0].ns(), SocketAddrV4::new(c.pods[1][0].ip(), 8080)), Ok(c.pods[1][0].ip()));
}

/// An IPv4/UDP packet with any source, sent from `pod` through a raw
/// socket (IP_HDRINCL), as a pod with CAP_NET_RAW can.
fn send_raw_udp(pod: &Pod, src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) {
    let mut pkt = vec![0u8; 28 + payload.len()];
    let total = pkt.len() as u16;
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    pkt[8] = 64;
    pkt[9] = 17;
    pkt[12..16].copy_from_slice(&src.octets());
    pkt[16..20].copy_from_slice(&dst.octets());
    let sum = ipv4_checksum(&pkt[..20]);
    pkt[10..12].copy_from_slice(&sum.to_be_bytes());
    pkt[20..22].copy_from_slice(&40000u16.to_be_bytes());
    pkt[22..24].copy_from_slice(&dport.to_be_bytes());
    pkt[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    pkt[28..].copy_from_slice(payload);
    send_raw_ipv4(pod.ns(), &pkt).unwrap();
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Waits up to `wait` for one datagram on `sock`.
fn received(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

#[test]
fn pods_cannot_forge_sources_or_reach_the_vxlan_port() {
    let c = Cluster::build(2, 0, 0, VXLAN_CONFIG).agent_flags(&["--ip-masq"]).start();
    let (attacker, victim) = (&c.pods[0][0], &c.pods[1][0]);
    let neighbour = c.add_agent_pod(0, 3);
    let sock = victim.in_ns(|| UdpSocket::bind(SocketAddrV4::new(victim.ip(), 7777))).unwrap();
    // The address check itself lets honest packets through: control.
    send_raw_udp(attacker, attacker.ip(), victim.ip(), 7777, b"honest");
    assert_eq!(received(&sock, TIMEOUT).as_deref(), Some(&b"honest"[..]));
    // Make sure the node knows both local pods: once the endpoint map names
    // them, their veths carry the per-veth check (attached first).
    wait_ping(neighbour.ns(), victim.ip());
    wait_ping(attacker.ns(), victim.ip());
    c.wait_fast_path();

    let spoofed_before = counter(&c, 0, "drop_pod_spoofed_source");
    let forgeries = [
        ("another local pod's address", neighbour.ip()),
        ("the node's address", c.tb.host(0).ip()),
        ("an address of another node's lease", next(c.subnet(1).network(), 9)),
        ("an address outside the cluster", Ipv4Addr::new(192, 0, 2, 1)),
        ("our lease's network address", c.subnet(0).network()),
    ];
    for (what, src) in forgeries {
        send_raw_udp(attacker, src, victim.ip(), 7777, what.as_bytes());
        assert_eq!(received(&sock, Duration::from_millis(500)), None, "forged source ({what}) arrived");
    }
    let spoofed = counter(&c, 0, "drop_pod_spoofed_source") - spoofed_before;
    assert_eq!(spoofed, forgeries.len() as u64, "each forgery dropped and counted");

    // VXLAN to the other node's port, wrapping a frame for the victim: with
    // --ip-masq it would leave as the node itself and be decapsulated.
    let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    let mut inner = Vec::new();
    inner.extend_from_slice(&c.vtep_mac(1));
    inner.extend_from_slice(&c.vtep_mac(0));
    inner.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 34, 0, 0, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&attacker.ip().octets());
    ip.extend_from_slice(&victim.ip().octets());
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&[0x9c, 0x40, 0x1e, 0x61, 0, 14, 0, 0]);
    ip.extend_from_slice(b"smuggl");
    inner.extend_from_slice(&ip);
    vxlan.extend_from_slice(&inner);
    let tunnel_before = counter(&c, 0, "drop_pod_to_tunnel_port");
    let node1 = c.tb.host(1).ip();
    attacker
        .in_ns(|| {
            let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            s.send_to(&vxlan, SocketAddrV4::new(node1, 8472))
        })
        .unwrap();
    assert_eq!(received(&sock, Duration::from_millis(800)), None, "smuggled VXLAN arrived");
    assert_eq!(counter(&c, 0, "drop_pod_to_tunnel_port") - tunnel_before, 1);
}

#[test]
fn forward_chain_sees_pod_traffic_only_with_kernel_forwarding() {
    // The documented choice: the fast path carries pod-to-pod traffic past
    // the kernel's forwarding, so the host's FORWARD chain does not see it;
    // `--kernel-forwarding` sends it through the kernel, where FORWARD
    // rules (e.g. a NetworkPolicy implementation's) apply.
    for kernel_forwarding in [false, true] {
        let flags: &[&str] = if kernel_forwarding { &["--kernel-forwarding"] } else { &[] };
        let c = Cluster::build(2, 0, 0, VXLAN_CONFIG).agent_flags(flags).start();
        let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
        let _s = Identity::serve(b, 8080);
        wait_ping(a.ns(), b.ip());
        c.wait_fast_path();
        assert_eq!(tcp_ask(a.ns(), SocketAddrV4::new(b.ip(), 8080)), Ok(b.ip()), "before the rule");
        // Rejected on the client's node (the kernel would forward it there).
        iptables(c.tb.host(0).ns(), &[format!("-I FORWARD 1 -s {} -d {} -j REJECT", a.ip(), b.ip())]);
        let after = tcp_ask(a.ns(), SocketAddrV4::new(b.ip(), 8080));
        if kernel_forwarding {
            assert!(after.is_err(), "with --kernel-forwarding the FORWARD rule applies, got {after:?}");
        } else {
            assert_eq!(after, Ok(b.ip()), "the fast path does not pass FORWARD");
        }
    }
}
