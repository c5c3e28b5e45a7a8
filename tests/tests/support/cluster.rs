//! A cluster in namespaces: agent nodes (the real binary), nodes running
//! flannel's kernel VXLAN, spare hosts, one pod per node, a real etcd, and
//! the traffic helpers the data path tests share.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::Ipv4Net;
use overlay_agent::datapath::{DatapathMaps, Peer};
use overlay_tests::{
    agent::{Agent, AgentOptions},
    etcd::Etcd,
    flannel::{add_kernel_peer, setup_kernel_vxlan, VxlanLease},
    forward::PortForward,
    netns::{ensure_bpffs, ChildHandle, Netns, Pod, Testbed},
};

use super::pcap::{vxlan_frames, VxlanFrame};

pub const PREFIX: &str = "/overlay-test/network";
pub const VXLAN_CONFIG: &str = r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#;
const READY: Duration = Duration::from_secs(30);

pub struct Cluster {
    // Field order is drop order: agents (and their pins) first, the
    // namespaces last.
    pub agents: Vec<Agent>,
    pub forwards: Vec<PortForward>,
    pub etcd: Etcd,
    pub pods: Vec<Vec<Pod>>,
    pub kernel_leases: Vec<VxlanLease>,
    pub pod_mtu: u32,
    /// The testbed host each agent runs in (agent i is on host i unless
    /// added later with [`Cluster::add_agent`]).
    pub agent_hosts: Vec<usize>,
    pub tb: Testbed,
}

/// What [`Cluster::build`] starts: node counts, the configuration, extra
/// agent flags, how long to wait for the agents, a testbed hook.
pub struct ClusterBuilder<'a> {
    agents: usize,
    kernels: usize,
    spare: usize,
    config: &'a str,
    ready: Duration,
    /// Extra command-line flags, one list per agent.
    flags: Vec<Vec<String>>,
    prepare: Option<Box<dyn FnOnce(&Testbed) + 'a>>,
}

impl<'a> ClusterBuilder<'a> {
    /// Extra flags for every agent (after the harness's own, so a flag
    /// given again here wins where the agent takes the last one).
    pub fn agent_flags(mut self, flags: &[&str]) -> Self {
        for list in &mut self.flags {
            list.extend(flags.iter().map(|f| f.to_string()));
        }
        self
    }

    /// Extra flags for agent `i` only, after any given to all of them.
    pub fn agent_flags_for(mut self, i: usize, flags: &[&str]) -> Self {
        assert!(i < self.agents, "agent {i} of {}", self.agents);
        self.flags[i].extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// How long to wait for each agent to be ready (default 30 s; they all
    /// start at once, so many agents on 2 cores need longer).
    pub fn ready(mut self, timeout: Duration) -> Self {
        self.ready = timeout;
        self
    }

    /// Called on the testbed before any node is set up (e.g. to re-address
    /// hosts or add routers).
    pub fn prepare(mut self, prepare: impl FnOnce(&Testbed) + 'a) -> Self {
        self.prepare = Some(Box::new(prepare));
        self
    }

    pub fn start(self) -> Cluster {
        let ClusterBuilder { agents, kernels, spare, config, ready, flags, prepare } = self;
        ensure_bpffs().unwrap();
        let tb = Testbed::new(agents + kernels + spare).unwrap();
        if let Some(prepare) = prepare {
            prepare(&tb);
        }
        let etcd = Etcd::start().unwrap();
        etcd.put(&format!("{PREFIX}/config"), config).unwrap();
        let target: SocketAddr = etcd.endpoint().trim_start_matches("http://").parse().unwrap();

        let mut kernel_leases = Vec::new();
        for k in 0..kernels {
            let lease = VxlanLease {
                subnet: Ipv4Addr::new(10, 42, 250 - k as u8, 0),
                prefix_len: 24,
                public_ip: tb.host(agents + k).ip(),
                vtep_mac: [0x0e, 0, 0, 0, 0xfa, k as u8 + 1],
            };
            etcd.put(&lease.etcd_key(PREFIX), &lease.etcd_value(1)).unwrap();
            setup_kernel_vxlan(tb.host(agents + k), 1, &lease, 1500).unwrap();
            kernel_leases.push(lease);
        }

        let mut forwards = Vec::new();
        let mut started = Vec::new();
        for (i, extra) in flags.into_iter().enumerate() {
            let (fwd, agent) = start_agent(&tb, i, target, extra);
            forwards.push(fwd);
            started.push(agent);
        }
        let mut cluster = Cluster {
            agents: started,
            forwards,
            etcd,
            pods: vec![],
            kernel_leases,
            pod_mtu: 1450,
            agent_hosts: (0..agents).collect(),
            tb,
        };
        for a in &cluster.agents {
            a.wait_ready(ready).unwrap();
        }
        if let Some(a) = cluster.agents.first() {
            cluster.pod_mtu = flannel_mtu(&a.subnet_file);
        }
        for i in 0..agents {
            let (_, len, gw) = cluster.agents[i].lease().unwrap();
            let pod = cluster.tb.host(i).add_pod("cni0", &format!("{}/{len}", next(gw, 1)), gw, cluster.pod_mtu).unwrap();
            cluster.pods.push(vec![pod]);
        }
        for k in 0..kernels {
            let lease = cluster.kernel_leases[k];
            let host = cluster.tb.host(agents + k);
            let pod = host.add_pod("cni0", &format!("{}/24", next(lease.gateway(), 1)), lease.gateway(), 1450).unwrap();
            cluster.pods.push(vec![pod]);
            for i in 0..agents {
                let (subnet, len, _) = cluster.agents[i].lease().unwrap();
                let peer = VxlanLease { subnet, prefix_len: len, public_ip: cluster.tb.host(i).ip(), vtep_mac: cluster.vtep_mac(i) };
                add_kernel_peer(host, 1, &peer).unwrap();
            }
            for (j, other) in cluster.kernel_leases.iter().enumerate() {
                if j != k {
                    add_kernel_peer(host, 1, other).unwrap();
                }
            }
        }
        cluster
    }
}

impl Cluster {
    /// `agents` agent nodes (hosts 0..), then `kernels` flannel kernel
    /// nodes, then `spare` unconfigured hosts; one pod on each node. Set
    /// more (agent flags, ...) on the builder, then `.start()`.
    pub fn build(agents: usize, kernels: usize, spare: usize, config: &str) -> ClusterBuilder<'_> {
        ClusterBuilder { agents, kernels, spare, config, ready: READY, flags: vec![Vec::new(); agents], prepare: None }
    }

    /// `Cluster::build(agents, kernels, spare, config).start()`.
    pub fn start_with(agents: usize, kernels: usize, spare: usize, config: &str) -> Cluster {
        Self::build(agents, kernels, spare, config).start()
    }

    /// [`Cluster::start_with`] with [`ClusterBuilder::prepare`].
    pub fn start_prepared<'a>(
        agents: usize,
        kernels: usize,
        spare: usize,
        config: &'a str,
        prepare: impl FnOnce(&Testbed) + 'a,
    ) -> Cluster {
        Self::build(agents, kernels, spare, config).prepare(prepare).start()
    }

    /// [`Cluster::start_prepared`] with [`ClusterBuilder::ready`].
    pub fn start_custom<'a>(
        agents: usize,
        kernels: usize,
        spare: usize,
        config: &'a str,
        ready: Duration,
        prepare: impl FnOnce(&Testbed) + 'a,
    ) -> Cluster {
        Self::build(agents, kernels, spare, config).ready(ready).prepare(prepare).start()
    }

    /// Agent `i`'s VtepMAC, from its pinned configuration.
    pub fn vtep_mac(&self, i: usize) -> [u8; 6] {
        let maps = DatapathMaps::open_pinned(&self.agents[i].pins()).unwrap();
        maps.config().unwrap().expect("configured").vtep_mac
    }

    /// Agent `i`'s packet counters by reason name.
    pub fn counters(&self, i: usize) -> HashMap<String, u64> {
        let maps = DatapathMaps::open_pinned(&self.agents[i].pins()).unwrap();
        maps.stats().unwrap().counters.iter().map(|(r, c)| (r.name().to_string(), c.packets)).collect()
    }

    pub fn maps(&self, i: usize) -> DatapathMaps {
        DatapathMaps::open_pinned(&self.agents[i].pins()).unwrap()
    }

    /// Where etcd listens in the root namespace (what the forwards relay to).
    pub fn etcd_target(&self) -> SocketAddr {
        self.etcd.endpoint().trim_start_matches("http://").parse().unwrap()
    }

    /// Starts an agent on testbed host `host` (normally a spare one) with
    /// its own forward to etcd, without waiting for it to be ready.
    /// Returns its index in `agents`.
    pub fn add_agent(&mut self, host: usize) -> usize {
        let (fwd, agent) = start_agent(&self.tb, host, self.etcd_target(), vec![]);
        self.forwards.push(fwd);
        self.agents.push(agent);
        self.agent_hosts.push(host);
        self.agents.len() - 1
    }

    /// A new pod behind agent `i`'s cni0, at the `nth` address of its lease
    /// (the gateway is the first).
    pub fn add_agent_pod(&self, i: usize, nth: u32) -> Pod {
        let (_, len, gw) = self.agents[i].lease().unwrap();
        let host = self.tb.host(self.agent_hosts[i]);
        host.add_pod("cni0", &format!("{}/{len}", next(gw, nth - 1)), gw, self.pod_mtu).unwrap()
    }

    /// The remote subnets in agent `i`'s SUBNETS map.
    pub fn peers(&self, i: usize) -> Vec<Peer> {
        self.maps(i).peers().unwrap()
    }

    /// Agent `i`'s own lease as a subnet.
    pub fn subnet(&self, i: usize) -> Ipv4Net {
        let (net, len, _) = self.agents[i].lease().unwrap();
        Ipv4Net::new(net, len).unwrap()
    }

    /// Watches `<prefix>/` with `etcdctl watch`, run inside agent
    /// `agent`'s host through its forward (so the testbed kills it).
    pub fn watch_leases(&self, agent: usize) -> LeaseWatch {
        let ns_host = self.tb.host(self.agent_hosts[agent]);
        let mut cmd = ns_host.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.forwards[agent].url()))
            .args(["watch", "--prefix", &format!("{PREFIX}/")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = ns_host.spawn(cmd).unwrap();
        let stdout = child.take_stdout().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(op)) = lines.next() {
                let put = match op.as_str() {
                    "PUT" => true,
                    "DELETE" => false,
                    _ => continue,
                };
                let Some(Ok(key)) = lines.next() else { break };
                let value = if put { lines.next().and_then(|l| l.ok()) } else { None };
                if tx.send(LeaseChange { at: SystemTime::now(), key, value }).is_err() {
                    break;
                }
            }
        });
        // The watch must be established before the caller acts: poke a key
        // of our own (outside subnets/, so no agent sees it) and wait for it
        // to come through.
        let probe = format!("{PREFIX}/test-watch-probe-{}", overlay_tests::random_hex(3));
        let watch = LeaseWatch { _child: child, rx };
        let start = Instant::now();
        loop {
            self.etcd.put(&probe, "probe").unwrap();
            if let Ok(ch) = watch.rx.recv_timeout(Duration::from_millis(300)) {
                if ch.key == probe {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "etcdctl watch did not start");
        }
        self.etcd.delete(&probe).unwrap();
        // Drain the probe's own events.
        while let Ok(ch) = watch.rx.recv_timeout(Duration::from_millis(300)) {
            if ch.key == probe && ch.value.is_none() {
                break;
            }
        }
        watch
    }
}

/// An agent on testbed host `host` with `extra` flags, reaching etcd (at
/// `etcd` in the root namespace) through a forward of its own.
fn start_agent(tb: &Testbed, host: usize, etcd: SocketAddr, extra: Vec<String>) -> (PortForward, Agent) {
    let fwd = PortForward::into_ns(tb.host(host), etcd).unwrap();
    let agent =
        Agent::start(tb.host(host), AgentOptions { etcd_endpoints: &fwd.url(), prefix: PREFIX, dir: tb.dir(), extra })
            .unwrap();
    (fwd, agent)
}

/// One change seen by [`LeaseWatch`].
#[derive(Clone, Debug)]
pub struct LeaseChange {
    pub at: SystemTime,
    pub key: String,
    /// The new value of a PUT; None for a DELETE.
    pub value: Option<String>,
}

/// `etcdctl watch --prefix <prefix>/`, timestamping each change as it
/// arrives.
pub struct LeaseWatch {
    _child: ChildHandle,
    pub rx: mpsc::Receiver<LeaseChange>,
}

impl LeaseWatch {
    /// The next PUT (new or changed lease) within `timeout`.
    pub fn next_put(&self, timeout: Duration) -> Option<LeaseChange> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(ch) if ch.value.is_some() && ch.key.contains("/subnets/") => return Some(ch),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// The subnet of a lease key `<prefix>/subnets/10.42.3.0-24`.
pub fn key_subnet(key: &str) -> Option<Ipv4Net> {
    let (ip, len) = key.rsplit('/').next()?.split_once('-')?;
    Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()
}

/// Seconds since the epoch, as `ping -D` prints them.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A `ping -D` running in the background (tracked by the testbed), its
/// output in a file.
pub struct PingRun {
    child: ChildHandle,
    out: PathBuf,
    what: String,
}

/// What a finished ping reported.
#[derive(Clone, Debug)]
pub struct PingStats {
    pub transmitted: u64,
    pub received: u64,
    /// Wall-clock time (seconds since the epoch) of every reply.
    pub replies: Vec<f64>,
    /// icmp_seq of every reply, in order.
    pub seqs: Vec<u32>,
    pub text: String,
}

impl PingStats {
    pub fn lost(&self) -> u64 {
        self.transmitted.saturating_sub(self.received)
    }

    pub fn first_reply(&self) -> Option<f64> {
        self.replies.first().copied()
    }
}

impl PingRun {
    /// `count` echo requests every `interval` seconds from `from` to `to`,
    /// each waiting up to 1 s for its answer.
    pub fn start(dir: &Path, from: &Netns, to: Ipv4Addr, interval: f64, count: u32) -> PingRun {
        let out = dir.join(format!("ping-{}.txt", overlay_tests::random_hex(4)));
        let file = std::fs::File::create(&out).unwrap();
        let mut cmd = from.command("ping");
        cmd.args(["-D", "-n", "-i", &format!("{interval}"), "-c", &count.to_string(), "-W", "1", &to.to_string()])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = from.spawn(cmd).unwrap();
        PingRun { child, out, what: format!("ping from {} to {to}", from.name()) }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    /// Waits for ping to end (at most `timeout`) and parses its output.
    pub fn wait(self, timeout: Duration) -> PingStats {
        let status = self.child.wait_timeout(timeout);
        if status.is_none() {
            self.child.kill();
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        assert!(status.is_some(), "{} still running after {timeout:?}:\n{}", self.what, tail_lines(&text, 5));
        parse_ping(&text).unwrap_or_else(|| panic!("{}: no summary in its output:\n{text}", self.what))
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Parses `ping -D` output: reply timestamps and the summary line.
pub fn parse_ping(text: &str) -> Option<PingStats> {
    let mut replies = Vec::new();
    let mut seqs = Vec::new();
    let mut summary = None;
    for line in text.lines() {
        if line.contains(" bytes from ") && line.contains("icmp_seq=") {
            if let Some(ts) =
                line.strip_prefix('[').and_then(|l| l.split(']').next()).and_then(|t| t.parse::<f64>().ok())
            {
                replies.push(ts);
            }
            let seq: Option<u32> =
                line.split("icmp_seq=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok());
            seqs.extend(seq);
        }
        if let Some((tx, rest)) = line.split_once(" packets transmitted, ") {
            let tx: u64 = tx.trim().parse().ok()?;
            let rx: u64 = rest.split_whitespace().next()?.parse().ok()?;
            summary = Some((tx, rx));
        }
    }
    let (transmitted, received) = summary?;
    Some(PingStats { transmitted, received, replies, seqs, text: text.to_string() })
}

pub fn next(ip: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) + n)
}

fn flannel_mtu(path: &PathBuf) -> u32 {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().find_map(|l| l.strip_prefix("FLANNEL_MTU=")).unwrap().trim().parse().unwrap()
}

/// Pings until answered (up to 10 s): leases take a moment to propagate.
pub fn wait_ping(from: &Netns, to: Ipv4Addr) {
    let start = Instant::now();
    loop {
        if from.ping(to).is_ok() {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let out = from.exec(&["ping", "-c", "1", "-W", "1", &to.to_string()]).unwrap();
            panic!("{} cannot ping {to}: {}", from.name(), String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// A byte pattern with period 2^20, so it can be sent in 1 MiB chunks.
fn pattern(i: usize) -> u8 {
    (((i & 0xfffff) as u64).wrapping_mul(2654435761) >> 13) as u8
}

/// Sends `bytes` over TCP from `from` to `to` and checks every byte arrived
/// in order (the receiver verifies the pattern and reports the count back).
pub fn tcp_roundtrip(from: &Pod, to: &Pod, bytes: usize) {
    let listener = to.in_ns(|| TcpListener::bind(SocketAddrV4::new(to.ip(), 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        let mut first_bad = None;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            if first_bad.is_none() {
                if let Some(k) = (0..n).find(|k| buf[*k] != pattern(total + k)) {
                    first_bad = Some(total + k);
                }
            }
            total += n;
        }
        s.write_all(&(total as u64).to_be_bytes()).unwrap();
        (total, first_bad)
    });
    let mut c = from.in_ns(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(pattern).collect();
    let mut sent = 0;
    while sent < bytes {
        // The pattern repeats every 2^20 bytes, so chunks line up.
        let n = (bytes - sent).min(chunk.len());
        c.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    c.read_exact(&mut count).unwrap();
    let (total, first_bad) = server.join().unwrap();
    assert_eq!(total, bytes, "bytes received");
    assert_eq!(u64::from_be_bytes(count) as usize, bytes);
    assert_eq!(first_bad, None, "payload corrupted");
}

const UDP_ECHO_END: &[u8] = b"\0end of udp_echo";

/// `n` UDP datagrams from `from` to `to`, each echoed back. The echo server
/// ends at its 5 s read timeout, so this takes at least 5 s.
pub fn udp_echo(from: &Pod, to: &Pod, n: usize) {
    udp_echo_with(from, to, n, false)
}

/// [`udp_echo`] that tells the echo server to stop when done, so it does
/// not wait for its 5 s read timeout.
pub fn udp_echo_quick(from: &Pod, to: &Pod, n: usize) {
    udp_echo_with(from, to, n, true)
}

fn udp_echo_with(from: &Pod, to: &Pod, n: usize, quick: bool) {
    let server = to.in_ns(|| UdpSocket::bind(SocketAddrV4::new(to.ip(), 0))).unwrap();
    let addr = server.local_addr().unwrap();
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut echoed = 0;
        while let Ok((len, peer)) = server.recv_from(&mut buf) {
            if &buf[..len] == UDP_ECHO_END {
                break;
            }
            server.send_to(&buf[..len], peer).unwrap();
            echoed += 1;
        }
        echoed
    });
    let client = from.in_ns(|| UdpSocket::bind(SocketAddrV4::new(from.ip(), 0))).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    for i in 0..n {
        let msg = format!("datagram {i} {}", "x".repeat(i * 17 % 1200));
        let mut ok = false;
        for _ in 0..3 {
            client.send_to(msg.as_bytes(), addr).unwrap();
            let mut buf = [0u8; 2048];
            if let Ok((len, _)) = client.recv_from(&mut buf) {
                if &buf[..len] == msg.as_bytes() {
                    ok = true;
                    break;
                }
            }
        }
        assert!(ok, "datagram {i} was not echoed");
    }
    // Ends the echo server now rather than at its 5 s read timeout (which
    // still ends it if this datagram is lost).
    if quick {
        let _ = client.send_to(UDP_ECHO_END, addr);
    }
    drop(client);
    assert!(echo.join().unwrap() >= n);
}

/// tcpdump on an interface: by default host `host`'s port of the underlay
/// bridge (the bridge device itself does not see unicast it forwards between
/// ports), or any interface of a namespace ([`Capture::on`]). A capture on a
/// host's eth0 sees what arrives after any XDP program and before TC.
pub struct Capture {
    child: ChildHandle,
    file: PathBuf,
    // Kept open: tcpdump must not meet a closed stderr while it runs.
    _stderr: std::process::ChildStderr,
}

impl Capture {
    /// On host `host`'s port of the underlay bridge (what goes to and
    /// comes from the host's eth0 on the wire).
    pub fn start(tb: &Testbed, host: usize, filter: &str) -> Capture {
        Self::on(tb.underlay(), &tb.underlay_port(host), tb.dir(), filter)
    }

    /// On interface `iface` of namespace `ns`, writing into folder `dir`
    /// (the testbed's own).
    pub fn on(ns: &Netns, iface: &str, dir: &Path, filter: &str) -> Capture {
        let file = dir.join(format!("capture-{}.pcap", overlay_tests::random_hex(3)));
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", iface, "--immediate-mode", "-U", "-n", "-s", "256", "-w"])
            .arg(&file)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = ns.spawn(cmd).unwrap();
        // tcpdump says "listening on" once the capture is armed.
        let mut stderr = child.take_stderr().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        let start = Instant::now();
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            assert!(start.elapsed() < Duration::from_secs(10), "tcpdump did not start");
            if stderr.read(&mut byte).unwrap_or(0) == 0 {
                panic!("tcpdump exited: {}", String::from_utf8_lossy(&seen));
            }
            seen.push(byte[0]);
        }
        Capture { child, file, _stderr: stderr }
    }

    pub fn finish(self) -> Vec<VxlanFrame> {
        vxlan_frames(&self.finish_raw())
    }

    /// Every IPv4 frame captured, VXLAN or not.
    pub fn finish_ip(self) -> Vec<IpFrame> {
        ip_frames(&self.finish_raw())
    }

    /// Stops tcpdump and returns the pcap file's bytes.
    pub fn finish_raw(self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.signal(libc::SIGINT);
        self.child.wait_timeout(Duration::from_secs(5));
        std::fs::read(&self.file).unwrap_or_default()
    }
}

/// The outer IPv4 header of a captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpFrame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// UDP destination port, for UDP.
    pub udp_dport: Option<u16>,
}

impl IpFrame {
    pub fn is_vxlan(&self) -> bool {
        self.proto == 17 && self.udp_dport == Some(8472)
    }
}

/// The IPv4 frames of an Ethernet pcap.
pub fn ip_frames(pcap: &[u8]) -> Vec<IpFrame> {
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let le = pcap[0..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |i: usize| {
        let a = [pcap[i], pcap[i + 1], pcap[i + 2], pcap[i + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32_at(off + 8) as usize;
        let start = off + 16;
        if start + incl > pcap.len() {
            break;
        }
        let f = &pcap[start..start + incl];
        if f.len() >= 34 && f[12..14] == [0x08, 0x00] {
            let ip4 = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
            let l4 = 14 + (f[14] & 0x0f) as usize * 4;
            let proto = f[23];
            let udp_dport = (proto == 17 && f.len() >= l4 + 4).then(|| u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]));
            out.push(IpFrame { src: ip4(26), dst: ip4(30), proto, udp_dport });
        }
        off = start + incl;
    }
    out
}

/// The time stamp of an agent log line (env_logger's
/// `[2026-11-23T19:49:00.123Z LEVEL target] message`).
pub fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.strip_prefix('[')?.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, s) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days since the epoch of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = (days * 86400 + h * 3600 + min * 60) as f64 + s;
    Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
}
