//! A cluster in namespaces: agent nodes (the real binary), nodes running
//! flannel's kernel VXLAN, spare hosts, one pod per node, a real etcd, and
//! the traffic helpers the data path tests share.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use overlay_agent::datapath::DatapathMaps;
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
    pub tb: Testbed,
}

impl Cluster {
    /// `agents` agent nodes (hosts 0..), then `kernels` flannel kernel
    /// nodes, then `spare` unconfigured hosts; one pod on each node.
    pub fn start_with(agents: usize, kernels: usize, spare: usize, config: &str) -> Cluster {
        ensure_bpffs().unwrap();
        let tb = Testbed::new(agents + kernels + spare).unwrap();
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
        for i in 0..agents {
            let fwd = PortForward::into_ns(tb.host(i), target).unwrap();
            let agent = Agent::start(
                tb.host(i),
                AgentOptions { etcd_endpoints: &fwd.url(), prefix: PREFIX, dir: tb.dir(), extra: vec![] },
            )
            .unwrap();
            forwards.push(fwd);
            started.push(agent);
        }
        let mut cluster = Cluster { agents: started, forwards, etcd, pods: vec![], kernel_leases, pod_mtu: 1450, tb };
        for a in &cluster.agents {
            a.wait_ready(READY).unwrap();
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

    /// Agent `i`'s VtepMAC, from its pinned configuration.
    pub fn vtep_mac(&self, i: usize) -> [u8; 6] {
        let maps = DatapathMaps::open_pinned(&self.agents[i].pin_dir()).unwrap();
        maps.config().unwrap().expect("configured").vtep_mac
    }

    /// Agent `i`'s packet counters by reason name.
    pub fn counters(&self, i: usize) -> HashMap<String, u64> {
        let maps = DatapathMaps::open_pinned(&self.agents[i].pin_dir()).unwrap();
        maps.stats().unwrap().counters.iter().map(|(r, c)| (r.name().to_string(), c.packets)).collect()
    }

    pub fn maps(&self, i: usize) -> DatapathMaps {
        DatapathMaps::open_pinned(&self.agents[i].pin_dir()).unwrap()
    }
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

/// `n` UDP datagrams from `from` to `to`, each echoed back.
pub fn udp_echo(from: &Pod, to: &Pod, n: usize) {
    let server = to.in_ns(|| UdpSocket::bind(SocketAddrV4::new(to.ip(), 0))).unwrap();
    let addr = server.local_addr().unwrap();
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut echoed = 0;
        while let Ok((len, peer)) = server.recv_from(&mut buf) {
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
    drop(client);
    assert!(echo.join().unwrap() >= n);
}

/// tcpdump on host `host`'s port of the underlay bridge (the bridge device
/// itself does not see unicast it forwards between ports).
pub struct Capture {
    child: ChildHandle,
    file: PathBuf,
    // Kept open: tcpdump must not meet a closed stderr while it runs.
    _stderr: std::process::ChildStderr,
}

impl Capture {
    pub fn start(tb: &Testbed, host: usize, filter: &str) -> Capture {
        let file = tb.dir().join(format!("capture-{}.pcap", overlay_tests::random_hex(3)));
        let mut cmd = tb.underlay().command("tcpdump");
        cmd.args(["-i", &tb.underlay_port(host), "--immediate-mode", "-U", "-n", "-s", "256", "-w"])
            .arg(&file)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = tb.underlay().spawn(cmd).unwrap();
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
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.signal(libc::SIGINT);
        self.child.wait_timeout(Duration::from_secs(5));
        let data = std::fs::read(&self.file).unwrap_or_default();
        vxlan_frames(&data)
    }
}
