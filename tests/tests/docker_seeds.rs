//! Issue 12, "Docker and CNI for real": the seeds' walkthroughs with agent
//! nodes, each with its own real dockerd (or the real CNI plugins) in its
//! namespace, and containers talking across nodes both ways (ping and TCP).
//! The harness is tests/src/docker.rs and tests/src/cni.rs (checked on its
//! own by real_clients.rs).
//!
//! The nodes here have no bridge and no pod of the harness's: the bridge is
//! the client's (docker0 from `--bip`, the seed's `br-<id>`, cni0 from the
//! bridge plugin), and the agent must find it by the lease's gateway
//! address. With an agent that makes its own `cni0` with that address, the
//! client's bridge gets the same address and the cluster route points at
//! the empty cni0: the bug of issue 12; these tests are its acceptance.
use std::net::SocketAddr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ipnet::Ipv6Net;
use overlay_agent::datapath::DatapathMaps6;
use overlay_tests::{
    agent::{agent_binary, Agent, AgentOptions},
    cni::{CniNode, CniPod, PortMapping},
    docker::{opts_from_env_file, Dockerd},
    etcd::Etcd,
    flannel::{add_kernel_peer, setup_kernel_vxlan, VxlanLease},
    forward::PortForward,
    netns::{ensure_bpffs, ChildHandle, Host, Netns, Testbed},
    poll_until,
};

const PREFIX: &str = "/overlay-test/network";
const VXLAN_CONFIG: &str = r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// Dual stack (issue #15), as tests/dual_stack.rs configures it.
const DUAL_CONFIG: &str =
    r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}"#;
const READY: Duration = Duration::from_secs(30);

/// Hosts on one underlay and a real etcd with the network config; agents
/// on some hosts. No bridge, no pod: that is the clients' job here. Field
/// order is drop order (agents and their pins first, namespaces last); the
/// tests' Dockerd and CniNode locals are declared later, so they go first.
struct Nodes {
    agents: Vec<Agent>,
    forwards: Vec<PortForward>,
    etcd: Etcd,
    tb: Testbed,
}

impl Nodes {
    /// `hosts` hosts, etcd with [`VXLAN_CONFIG`], no agent yet.
    fn new(hosts: usize) -> Nodes {
        Self::with_config(hosts, VXLAN_CONFIG)
    }

    /// `hosts` hosts, etcd with `config`, no agent yet.
    fn with_config(hosts: usize, config: &str) -> Nodes {
        ensure_bpffs().unwrap();
        let tb = Testbed::new(hosts).unwrap();
        let etcd = Etcd::start().unwrap();
        etcd.put(&format!("{PREFIX}/config"), config).unwrap();
        Nodes { agents: vec![], forwards: vec![], etcd, tb }
    }

    /// Dual stack: hosts whose eth0 also has an IPv6 underlay address
    /// (`fd00:77::<10+i>`, so VXLAN runs over IPv6 for the v6 pods), etcd
    /// with [`DUAL_CONFIG`], agents on hosts 0..n with `flags`, all ready.
    fn start_dual(n: usize, flags: &[&str]) -> Nodes {
        let mut nodes = Nodes::with_config(n, DUAL_CONFIG);
        for i in 0..n {
            nodes.host(i).ip_batch(&[format!("addr add fd00:77::{}/64 dev eth0 nodad", 10 + i)]).unwrap();
        }
        for i in 0..n {
            nodes.start_agent(i, flags);
        }
        nodes.wait_ready();
        nodes
    }

    /// Agents on hosts 0..n with `flags`, all ready.
    fn start(n: usize, flags: &[&str]) -> Nodes {
        let mut nodes = Nodes::new(n);
        for i in 0..n {
            nodes.start_agent(i, flags);
        }
        nodes.wait_ready();
        nodes
    }

    fn host(&self, i: usize) -> &Host {
        self.tb.host(i)
    }

    /// A relay inside host `i` to the root namespace's etcd; its URL (for
    /// agents started by hand, with their own command line).
    fn etcd_url(&mut self, i: usize) -> String {
        let target: SocketAddr = self.etcd.endpoint().trim_start_matches("http://").parse().unwrap();
        let fwd = PortForward::into_ns(self.tb.host(i), target).unwrap();
        let url = fwd.url();
        self.forwards.push(fwd);
        url
    }

    /// The harness's agent (`--etcd-endpoints=... --iface=eth0 ...`) on host
    /// `i` (agent i is on host i), not waiting for it.
    fn start_agent(&mut self, i: usize, flags: &[&str]) {
        assert_eq!(self.agents.len(), i, "agents go on hosts 0, 1, ... in order");
        let extra = flags.iter().map(|f| f.to_string()).collect();
        let endpoint = self.etcd.endpoint();
        let opts = AgentOptions { etcd_endpoints: &endpoint, prefix: PREFIX, dir: self.tb.dir(), extra };
        let agent = Agent::start_forwarded(self.tb.host(i), opts).unwrap();
        self.agents.push(agent);
    }

    fn wait_ready(&self) {
        for a in &self.agents {
            a.wait_ready(READY).unwrap();
        }
    }

    /// FLANNEL_MTU of agent 0's subnet file.
    fn pod_mtu(&self) -> u32 {
        env_value(&self.agents[0].subnet_file, "FLANNEL_MTU").parse().unwrap()
    }

    /// The VtepMAC a lease of `subnet` (`10.42.5.0/24`) announces in etcd.
    fn vtep_mac_of(&self, subnet: &str) -> [u8; 6] {
        let key = format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"));
        let value = self.etcd.get(&key).unwrap().unwrap_or_else(|| panic!("no lease {key}"));
        let v: serde_json::Value = serde_json::from_str(&value).unwrap();
        let mac = v.pointer("/BackendData/VtepMAC").and_then(|m| m.as_str()).unwrap_or_else(|| panic!("{value}"));
        let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
        bytes.try_into().unwrap()
    }
}

/// `KEY`'s value in a subnet file.
fn env_value(path: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {}:\n{text}", path.display()))
        .trim()
        .to_string()
}

/// FLANNEL_SUBNET's lease as a network (`10.42.5.0/24`).
fn lease_network(subnet_file: &Path) -> String {
    let s = env_value(subnet_file, "FLANNEL_SUBNET");
    let (gw, len) = s.split_once('/').unwrap();
    let gw: Ipv4Addr = gw.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    format!("{}/{len}", Ipv4Addr::from(u32::from(gw) & (u32::MAX << (32 - len))))
}

/// `overlay-agent docker-opts -f <subnet file> -d <out> <flags>` in the
/// node's namespace (the script checks the node's routes), as the seeds run
/// mk-docker-opts.sh; returns the output file.
fn docker_opts(node: &Netns, subnet_file: &Path, dir: &Path, flags: &[&str]) -> PathBuf {
    let out = dir.join(format!("{}-docker_opts.env", node.name()));
    let mut cmd = node.command(agent_binary().to_str().unwrap());
    let res = cmd.arg("docker-opts").arg("-f").arg(subnet_file).arg("-d").arg(&out).args(flags).stdin(Stdio::null()).output().unwrap();
    assert!(res.status.success(), "docker-opts {flags:?}: {}", String::from_utf8_lossy(&res.stderr));
    out
}

/// dockerd's words from `docker-opts -c` for the agent's subnet file.
fn dockerd_opts(nodes: &Nodes, i: usize) -> Vec<String> {
    let env = docker_opts(nodes.host(i), &nodes.agents[i].subnet_file, nodes.tb.dir(), &["-c"]);
    opts_from_env_file(&env, "DOCKER_OPTS").unwrap()
}

/// The agent's lease as FLANNEL_SUBNET writes it (`10.42.5.1/24`).
fn flannel_subnet(agent: &Agent) -> String {
    let (_, len, gw) = agent.lease().unwrap();
    format!("{gw}/{len}")
}

/// A container `name` running a TCP server on port 7000 that answers
/// `pong-<name>` to every connection, plus its address.
fn tcp_server(d: &mut Dockerd, name: &str, network: Option<&str>) -> Ipv4Addr {
    let mut extra = vec![];
    if let Some(n) = network {
        extra.extend(["--network", n]);
    }
    let script = format!("while true; do echo pong-{name} | nc -l -p 7000; done");
    d.run_container_with(name, &extra, &["sh", "-c", &script]).unwrap();
    d.container_ip(name, network).unwrap()
}

/// From container `from` of `d`: ping `to` until answered (up to 15 s:
/// leases propagate), then 3 of 3 pings must be answered.
fn ping_across(d: &Dockerd, from: &str, to: impl Into<IpAddr>) {
    let to = to.into();
    poll_until(Duration::from_secs(15), &format!("{from} -> {to} answered"), || d.ping(from, to))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diagnose(d.netns())));
    let out = d.exec_output(from, &["ping", "-c", "3", "-W", "2", &to.to_string()]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 packets transmitted, 3 packets received"), "{from} -> {to}:\n{text}");
}

/// From container `from`: a TCP connection to `to`:7000 gets `expect`.
fn tcp_across(d: &Dockerd, from: &str, to: impl Into<IpAddr>, expect: &str) {
    let to = to.into();
    let got = poll_until(Duration::from_secs(15), &format!("TCP {from} -> {to}:7000"), || {
        let out = d.exec(from, &["sh", "-c", &format!("nc -w 3 {to} 7000 </dev/null")])?;
        anyhow::ensure!(out.trim() == expect, "got {out:?}");
        Ok(out)
    });
    got.unwrap_or_else(|e| panic!("{e:#}\n{}", diagnose(d.netns())));
}

/// A node's bridges, addresses and routes, for failure messages.
fn diagnose(ns: &Netns) -> String {
    let addrs = ns.run(&["ip", "-br", "-4", "addr"]).unwrap_or_default();
    let routes = ns.run(&["ip", "-4", "route"]).unwrap_or_default();
    format!("--- {} addresses ---\n{addrs}--- routes ---\n{routes}", ns.name())
}

/// On each of `d`: a container `ctr` (on `network` if given) and a TCP
/// server `srv<i>`; then ping and TCP from every node's `ctr` to the other
/// nodes' containers.
fn containers_talk(d: &mut [Dockerd], network: Option<&str>) {
    for x in d.iter_mut() {
        x.run_container("ctr", network).unwrap();
    }
    let srv: Vec<Ipv4Addr> = d.iter_mut().enumerate().map(|(i, x)| tcp_server(x, &format!("srv{i}"), network)).collect();
    let ip: Vec<Ipv4Addr> = d.iter().map(|x| x.container_ip("ctr", network).unwrap()).collect();
    for a in 0..d.len() {
        for b in (0..d.len()).filter(|&b| b != a) {
            ping_across(&d[a], "ctr", ip[b]);
            tcp_across(&d[a], "ctr", srv[b], &format!("pong-srv{b}"));
        }
    }
}

/// Issue #15: dockerd with `--ipv6 --fixed-cidr-v6=<the node's v6 lease>`
/// (by hand: flannel's mk-docker-opts.sh, and so `docker-opts`, emits no
/// IPv6 option) besides `docker-opts -c`'s words, on two dual-stack agent
/// nodes: docker0 takes the v6 lease's first address (FLANNEL_IPV6_SUBNET),
/// containers get addresses of both leases and talk over v4 and v6 both
/// ways; the agent learns the containers' v6 addresses.
#[test]
fn docker_ipv6_fixed_cidr_v6_containers_talk_across_two_dual_stack_agent_nodes() {
    let nodes = Nodes::start_dual(2, &[]);
    let lease6: Vec<(Ipv6Net, Ipv6Addr)> = nodes.agents.iter().map(|a| a.lease6().unwrap()).collect();
    let mut docker = Vec::new();
    for (i, (net6, gw6)) in lease6.iter().enumerate() {
        let mut opts = dockerd_opts(&nodes, i);
        assert!(!opts.iter().any(|o| o.contains("v6")), "mk-docker-opts.sh has no IPv6 option: {opts:?}");
        assert_eq!(*net6, lease_network_v6(&nodes.agents[i].subnet_file));
        let fixed = format!("--fixed-cidr-v6={net6}");
        opts.extend(["--ipv6".to_string(), fixed]);
        docker.push(Dockerd::start(nodes.host(i), &opts).unwrap());
        let docker0 = nodes.host(i).run(&["ip", "-6", "-br", "addr", "show", "dev", "docker0"]).unwrap();
        let gw6 = format!("{gw6}/{}", net6.prefix_len());
        assert!(docker0.contains(&gw6), "docker0 has FLANNEL_IPV6_SUBNET {gw6}: {docker0}");
    }
    containers_talk(&mut docker, None);
    let ctr6: Vec<Ipv6Addr> = docker.iter().map(|d| d.container_ip6("ctr").unwrap()).collect();
    let srv6: Vec<Ipv6Addr> = docker.iter().enumerate().map(|(i, d)| d.container_ip6(&format!("srv{i}")).unwrap()).collect();
    for i in 0..2 {
        assert!(lease6[i].0.contains(&ctr6[i]) && lease6[i].0.contains(&srv6[i]), "{ctr6:?} {srv6:?} in {}", lease6[i].0);
    }
    for (a, b) in [(0, 1), (1, 0)] {
        ping_across(&docker[a], "ctr", ctr6[b]);
        ping_across(&docker[a], "ctr", srv6[b]);
        tcp_across(&docker[a], "ctr", srv6[b], &format!("pong-srv{b}"));
    }
    for i in 0..2 {
        poll_until(Duration::from_secs(10), &format!("node {i}'s containers' v6 addresses in ENDPOINTS6"), || {
            let eps = DatapathMaps6::open_pinned(&nodes.agents[i].pins())?.endpoints()?;
            for ip in [ctr6[i], srv6[i]] {
                anyhow::ensure!(eps.iter().any(|e| e.ip == ip), "{ip} not in {eps:?}");
            }
            Ok(())
        })
        .unwrap();
    }
}

/// FLANNEL_IPV6_SUBNET's lease as a network (`fd42:0:0:5::/64`).
fn lease_network_v6(subnet_file: &Path) -> Ipv6Net {
    env_value(subnet_file, "FLANNEL_IPV6_SUBNET").parse::<Ipv6Net>().unwrap().trunc()
}

/// Two agent nodes, dockerd on each started from `docker-opts <flags>`'s
/// `key`; containers talk both ways.
fn seed_docker_opts(flags: &[&str], key: &str) {
    let nodes = Nodes::start(2, &[]);
    let mut docker = Vec::new();
    for i in 0..2 {
        let env = docker_opts(nodes.host(i), &nodes.agents[i].subnet_file, nodes.tb.dir(), flags);
        let opts = opts_from_env_file(&env, key).unwrap();
        assert!(opts.contains(&format!("--bip={}", flannel_subnet(&nodes.agents[i]))), "{opts:?}");
        docker.push(Dockerd::start(nodes.host(i), &opts).unwrap());
    }
    containers_talk(&mut docker, None);
}

#[test]
fn seed_002_docker_opts_c_then_dockerd() {
    seed_docker_opts(&["-c"], "DOCKER_OPTS");
}

#[test]
fn seed_003_docker_network_options() {
    seed_docker_opts(&["-k", "DOCKER_NETWORK_OPTIONS"], "DOCKER_NETWORK_OPTIONS");
}

#[test]
fn seed_000_docker_network_create_flannel() {
    let nodes = Nodes::start(2, &[]);
    let mut docker = Vec::new();
    for i in 0..2 {
        let d = Dockerd::start(nodes.host(i), &[]).unwrap();
        // `docker network create --subnet $FLANNEL_SUBNET flannel`, then the
        // seed sets the bridge's MTU to FLANNEL_MTU by hand.
        let net = d.create_network("flannel", &flannel_subnet(&nodes.agents[i]), &[]).unwrap();
        nodes.host(i).run(&["ip", "link", "set", "dev", &net.bridge, "mtu", &nodes.pod_mtu().to_string()]).unwrap();
        docker.push(d);
    }
    containers_talk(&mut docker, Some("flannel"));
}

/// An agent started the way seed 004 starts flanneld: Go's single-dash
/// flags (`-etcd-endpoints=...`), a bare `-ip-masq`, `-iface eth0` with the
/// value as the next word. The harness's [`Agent`] always passes
/// `--etcd-endpoints=...`, so this one is spawned here. Dropping it kills
/// it and removes its pins.
struct GoFlagsAgent {
    child: Option<ChildHandle>,
    pin_root: PathBuf,
    subnet_file: PathBuf,
    log: PathBuf,
}

impl GoFlagsAgent {
    fn start(host: &Host, etcd_url: &str, dir: &Path) -> GoFlagsAgent {
        let pin_root = PathBuf::from("/sys/fs/bpf").join(format!("{}-agent", host.name()));
        let subnet_file = dir.join(format!("{}-subnet.env", host.name()));
        let log = dir.join(format!("{}-agent.log", host.name()));
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = host.command(agent_binary().to_str().unwrap());
        cmd.arg(format!("-etcd-endpoints={etcd_url}"))
            .arg(format!("-etcd-prefix={PREFIX}"))
            .args(["-iface", host.uplink()])
            .arg("-ip-masq")
            .arg(format!("-subnet-file={}", subnet_file.display()))
            .arg(format!("-bpf-pin-dir={}", pin_root.display()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let child = Some(host.spawn(cmd).unwrap());
        GoFlagsAgent { child, pin_root, subnet_file, log }
    }

    fn wait_ready(&self) {
        poll_until(READY, "agent started with Go flags ready", || {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.lines().any(|l| l.ends_with(" ready")) {
                return Ok(());
            }
            anyhow::ensure!(self.child.as_ref().is_some_and(|c| c.is_running()), "it exited; log:\n{log}");
            anyhow::bail!("not yet; log:\n{log}")
        })
        .unwrap();
    }
}

impl Drop for GoFlagsAgent {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            c.kill();
        }
        let _ = std::fs::remove_dir_all(&self.pin_root);
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

#[test]
fn seed_004_single_dash_go_flags_then_docker_network_options() {
    let mut nodes = Nodes::new(2);
    let agents: Vec<GoFlagsAgent> = (0..2)
        .map(|i| {
            let url = nodes.etcd_url(i);
            GoFlagsAgent::start(nodes.host(i), &url, nodes.tb.dir())
        })
        .collect();
    for a in &agents {
        a.wait_ready();
        // The flags took: the prefix (a lease under it), -ip-masq.
        assert_eq!(env_value(&a.subnet_file, "FLANNEL_IPMASQ"), "true");
        let key = format!("{PREFIX}/subnets/{}", lease_network(&a.subnet_file).replace('/', "-"));
        assert!(nodes.etcd.get(&key).unwrap().is_some(), "no lease {key}");
    }
    // Seed 004 writes /etc/sysconfig/docker-network by hand:
    // DOCKER_NETWORK_OPTIONS=' --bip=<FLANNEL_SUBNET> --mtu=<FLANNEL_MTU> '.
    let mut docker = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let file = nodes.tb.dir().join(format!("docker-network-{i}"));
        let line = format!(
            "DOCKER_NETWORK_OPTIONS=' --bip={} --mtu={} '\n",
            env_value(&a.subnet_file, "FLANNEL_SUBNET"),
            env_value(&a.subnet_file, "FLANNEL_MTU")
        );
        std::fs::write(&file, line).unwrap();
        let opts = opts_from_env_file(&file, "DOCKER_NETWORK_OPTIONS").unwrap();
        docker.push(Dockerd::start(nodes.host(i), &opts).unwrap());
    }
    containers_talk(&mut docker, None);
}

#[test]
fn containers_on_an_agent_node_and_a_flannel_kernel_node_talk() {
    // Host 0: the agent. Host 1: flanneld's kernel data path (flannel.1,
    // per-peer neighbour, FDB entry and route), its lease put in etcd as
    // flanneld would, its subnet.env written as flanneld would, and dockerd
    // from `docker-opts -c` of that file.
    let mut nodes = Nodes::new(2);
    let kernel = VxlanLease {
        subnet: Ipv4Addr::new(10, 42, 250, 0),
        prefix_len: 24,
        public_ip: nodes.host(1).ip(),
        vtep_mac: [0x0e, 0, 0, 0, 0xfa, 1],
    };
    nodes.etcd.put(&kernel.etcd_key(PREFIX), &kernel.etcd_value(1)).unwrap();
    setup_kernel_vxlan(nodes.host(1), 1, &kernel, 1500).unwrap();
    // That helper also makes a cni0 with the gateway address for the
    // harness's pods; here the pods are docker's, behind docker0 with
    // --bip=<gateway>: the same address must not be on cni0 too.
    nodes.host(1).run(&["ip", "link", "del", "cni0"]).unwrap();
    nodes.start_agent(0, &[]);
    nodes.wait_ready();
    let agent_net = lease_network(&nodes.agents[0].subnet_file);
    let (subnet, len, _) = nodes.agents[0].lease().unwrap();
    let peer = VxlanLease { subnet, prefix_len: len, public_ip: nodes.host(0).ip(), vtep_mac: nodes.vtep_mac_of(&agent_net) };
    add_kernel_peer(nodes.host(1), 1, &peer).unwrap();
    // FLANNEL_IPMASQ=true, as under `flanneld --ip-masq`: docker gets
    // --ip-masq=false, so nothing between the containers is masqueraded.
    let kernel_env = nodes.tb.dir().join("kernel-subnet.env");
    std::fs::write(
        &kernel_env,
        format!("FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", kernel.gateway()),
    )
    .unwrap();
    let kernel_opts = opts_from_env_file(&docker_opts(nodes.host(1), &kernel_env, nodes.tb.dir(), &["-c"]), "DOCKER_OPTS").unwrap();
    let mut docker = vec![
        Dockerd::start(nodes.host(0), &dockerd_opts(&nodes, 0)).unwrap(),
        Dockerd::start(nodes.host(1), &kernel_opts).unwrap(),
    ];
    containers_talk(&mut docker, None);
}

#[test]
fn dockerd_started_before_the_agent_from_the_last_run_s_subnet_env() {
    // A node's first run leaves its subnet.env (and its lease in etcd);
    // then, as after a reboot where docker.service comes up before the
    // agent, dockerd starts from that file, and only then the agent.
    let mut nodes = Nodes::start(2, &[]);
    let before = flannel_subnet(&nodes.agents[0]);
    // "Reboot" node 0: the agent is gone and so is what lived in the kernel
    // (its pins on bpffs, its overlay0); files and the etcd lease remain.
    nodes.agents[0].kill();
    std::fs::remove_dir_all(&nodes.agents[0].pin_root).unwrap();
    let _ = nodes.host(0).run(&["ip", "link", "del", "overlay0"]);
    let opts0 = dockerd_opts(&nodes, 0);
    assert!(opts0.contains(&format!("--bip={before}")), "{opts0:?}");
    let mut docker = vec![Dockerd::start(nodes.host(0), &opts0).unwrap()];
    // docker0 carries the gateway before any agent runs on the node.
    let docker0 = nodes.host(0).run(&["ip", "-4", "-br", "addr", "show", "dev", "docker0"]).unwrap();
    assert!(docker0.contains(&before), "{docker0}");
    let host0 = nodes.tb.host(0);
    nodes.agents[0].restart(host0).unwrap();
    nodes.agents[0].wait_ready_n(2, READY).unwrap();
    assert_eq!(flannel_subnet(&nodes.agents[0]), before, "the agent took another lease than the one docker0 carries");
    docker.push(Dockerd::start(nodes.host(1), &dockerd_opts(&nodes, 1)).unwrap());
    containers_talk(&mut docker, None);
}

#[test]
fn dockerd_restarted_while_the_agent_runs() {
    let nodes = Nodes::start(2, &[]);
    let mut docker: Vec<Dockerd> = (0..2).map(|i| Dockerd::start(nodes.host(i), &dockerd_opts(&nodes, i)).unwrap()).collect();
    for d in docker.iter_mut() {
        d.run_container("ctr", None).unwrap();
    }
    docker[1].restart().unwrap();
    docker[1].docker(&["start", "ctr"]).unwrap();
    let ip: Vec<Ipv4Addr> = docker.iter().map(|d| d.container_ip("ctr", None).unwrap()).collect();
    ping_across(&docker[0], "ctr", ip[1]);
    ping_across(&docker[1], "ctr", ip[0]);
    let srv1 = tcp_server(&mut docker[1], "srv1", None);
    let srv0 = tcp_server(&mut docker[0], "srv0", None);
    tcp_across(&docker[0], "ctr", srv1, "pong-srv1");
    tcp_across(&docker[1], "ctr", srv0, "pong-srv0");
}

#[test]
fn agent_sigkilled_while_containers_talk_loses_nothing() {
    let mut nodes = Nodes::start(2, &[]);
    let mut docker: Vec<Dockerd> = (0..2).map(|i| Dockerd::start(nodes.host(i), &dockerd_opts(&nodes, i)).unwrap()).collect();
    for d in docker.iter_mut() {
        d.run_container("ctr", None).unwrap();
    }
    let to = docker[1].container_ip("ctr", None).unwrap();
    ping_across(&docker[0], "ctr", to);
    // 100 pings, 50 ms apart, while agent 0 is SIGKILLed and started again.
    let mut ping = docker[0].cli_command();
    ping.args(["exec", "ctr", "ping", "-c", "100", "-i", "0.05", "-W", "1", &to.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = ping.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    nodes.agents[0].kill();
    let host0 = nodes.tb.host(0);
    nodes.agents[0].restart(host0).unwrap();
    nodes.agents[0].wait_ready_n(2, READY).unwrap();
    let out = run.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("100 packets transmitted, 100 packets received"), "{text}");
    // And after the restart, TCP both ways and pings back.
    let back = docker[0].container_ip("ctr", None).unwrap();
    ping_across(&docker[1], "ctr", back);
    let srv1 = tcp_server(&mut docker[1], "srv1", None);
    let srv0 = tcp_server(&mut docker[0], "srv0", None);
    tcp_across(&docker[0], "ctr", srv1, "pong-srv1");
    tcp_across(&docker[1], "ctr", srv0, "pong-srv0");
}

/// In pod `pod` (namespace under node `node`, so the testbed kills it): a
/// TCP server on port `port` answering `pong-<pod name>` to every
/// connection.
fn pod_tcp_server(node: &Host, pod: &CniPod, port: u16) {
    let script = format!("while true; do echo pong-{} | /bin/busybox nc -l -p {port}; done", pod.name);
    let mut cmd = pod.command("/bin/busybox");
    cmd.args(["sh", "-c", &script]).stdout(Stdio::null()).stderr(Stdio::null());
    node.spawn(cmd).unwrap();
}

/// From pod `from`: a TCP connection to `to:port` gets `expect`.
fn pod_tcp(from: &CniPod, to: IpAddr, port: u16, expect: &str) {
    poll_until(Duration::from_secs(15), &format!("TCP {} -> {to}:{port}", from.name), || {
        let out = from.run(&["/bin/busybox", "sh", "-c", &format!("/bin/busybox nc -w 3 {to} {port} </dev/null")])?;
        anyhow::ensure!(out.trim() == expect, "got {out:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Ping (until answered, then 3 of 3) and TCP from `a` to `b` and back;
/// both run [`pod_tcp_server`] on 7000.
fn pods_talk(a: &CniPod, b: &CniPod, diag: &[&Netns]) {
    for (from, to) in [(a, b), (b, a)] {
        poll_until(Duration::from_secs(15), &format!("{} -> {}", from.name, to.ip), || from.ping(to.ip)).unwrap_or_else(|e| {
            panic!("{e:#}\n{}", diag.iter().map(|n| diagnose(n)).collect::<Vec<_>>().join("\n"))
        });
        let out = from.run(&["ping", "-c", "3", "-W", "2", &to.ip.to_string()]).unwrap();
        assert!(out.contains("3 packets transmitted, 3 received"), "{} -> {}:\n{out}", from.name, to.ip);
        pod_tcp(from, IpAddr::V4(to.ip), 7000, &format!("pong-{}", to.name));
    }
}

/// [`pods_talk`] over IPv6: ping6 (until answered, then 3 of 3) and TCP
/// to each other's IPv6 address, both ways.
fn pods_talk_v6(a: &CniPod, b: &CniPod, diag: &[&Netns]) {
    for (from, to) in [(a, b), (b, a)] {
        let to6 = to.ipv6().unwrap();
        poll_until(Duration::from_secs(15), &format!("{} -> {to6}", from.name), || from.ping6(to6)).unwrap_or_else(|e| {
            panic!("{e:#}\n{}", diag.iter().map(|n| diagnose6(n)).collect::<Vec<_>>().join("\n"))
        });
        let out = from.run(&["ping", "-6", "-c", "3", "-W", "2", &to6.to_string()]).unwrap();
        assert!(out.contains("3 packets transmitted, 3 received"), "{} -> {to6}:\n{out}", from.name);
        pod_tcp(from, IpAddr::V6(to6), 7000, &format!("pong-{}", to.name));
    }
}

/// A node's IPv6 addresses, routes and neighbours, for failure messages.
fn diagnose6(ns: &Netns) -> String {
    let addrs = ns.run(&["ip", "-br", "-6", "addr"]).unwrap_or_default();
    let routes = ns.run(&["ip", "-6", "route"]).unwrap_or_default();
    let neigh = ns.run(&["ip", "-6", "neigh"]).unwrap_or_default();
    format!("--- {} v6 addresses ---\n{addrs}--- routes ---\n{routes}--- neighbours ---\n{neigh}", ns.name())
}

/// Issue #15: flannel's CNI plugin with dual stack hands `bridge` +
/// `host-local` two ranges, the node's v4 lease and its v6 lease
/// (FLANNEL_IPV6_SUBNET), and routes to both networks. Pods on two agent
/// nodes get an address of each, talk over v4 and v6 both ways, and the
/// agent learns their v6 addresses (the v6 fast path).
#[test]
fn cni_pods_with_v4_and_v6_ranges_talk_across_two_agent_nodes() {
    let nodes = Nodes::start_dual(2, &["--ip-masq"]);
    let mut cni: Vec<CniNode> = (0..2).map(|i| CniNode::new(nodes.host(i), &nodes.agents[i].subnet_file).unwrap()).collect();
    let lease6: Vec<(Ipv6Net, Ipv6Addr)> = nodes.agents.iter().map(|a| a.lease6().unwrap()).collect();
    let conf = cni[0].conf().unwrap();
    let v4_lease = lease_network(&nodes.agents[0].subnet_file);
    assert_eq!(
        conf["ipam"]["ranges"],
        serde_json::json!([[{ "subnet": v4_lease }], [{ "subnet": lease6[0].0.to_string() }]]),
        "flannel's plugin: the v4 lease, then the v6 lease"
    );
    assert_eq!(conf["ipam"]["routes"], serde_json::json!([{ "dst": "10.42.0.0/16" }, { "dst": "fd42::/48" }]));

    let pods = [cni[0].add_pod().unwrap(), cni[1].add_pod().unwrap()];
    for (i, p) in pods.iter().enumerate() {
        let (ip6, len, gw6) = p.ip6.unwrap_or_else(|| panic!("pod {} got no IPv6 address: {}", p.name, p.result));
        assert!(lease6[i].0.contains(&ip6) && ip6 != lease6[i].1, "{ip6} in {}", lease6[i].0);
        assert_eq!((len, gw6), (lease6[i].0.prefix_len(), lease6[i].1), "the v6 lease's first address is the gateway");
        let routes = p.run(&["ip", "-6", "route"]).unwrap();
        assert!(routes.contains(&format!("fd42::/48 via {gw6} dev eth0")), "routes of {}:\n{routes}", p.name);
        assert_eq!(cni[i].allocated_v6().unwrap(), vec![(ip6, p.container_id.clone())], "host-local's v6 range");
    }
    pod_tcp_server(nodes.host(0), &pods[0], 7000);
    pod_tcp_server(nodes.host(1), &pods[1], 7000);
    let diag: [&Netns; 2] = [nodes.host(0), nodes.host(1)];
    pods_talk(&pods[0], &pods[1], &diag);
    pods_talk_v6(&pods[0], &pods[1], &diag);

    // The agent found the plugin's cni0 and learnt the pods' v6 addresses
    // from its neighbours, and the other node's v6 lease is a v6 peer.
    for i in 0..2 {
        let ip6 = pods[i].ipv6().unwrap();
        poll_until(Duration::from_secs(10), &format!("node {i}'s CNI pod {ip6} in ENDPOINTS6"), || {
            let eps = DatapathMaps6::open_pinned(&nodes.agents[i].pins())?.endpoints()?;
            anyhow::ensure!(eps.iter().any(|e| e.ip == ip6), "{ip6} not in {eps:?}");
            Ok(())
        })
        .unwrap();
        let peers = DatapathMaps6::open_pinned(&nodes.agents[i].pins()).unwrap().peers().unwrap();
        assert_eq!(peers.iter().map(|p| p.subnet).collect::<Vec<_>>(), vec![lease6[1 - i].0], "{peers:?}");
    }
    // DEL releases the v6 address too.
    cni[0].del_pod(&pods[0]).unwrap();
    assert!(cni[0].allocated_v6().unwrap().is_empty(), "{:?}", cni[0].allocated_v6());
}

#[test]
fn cni_pods_on_two_agent_nodes_talk_and_cni0_is_remade() {
    let nodes = Nodes::start(2, &["--ip-masq"]);
    let mut cni: Vec<CniNode> = (0..2).map(|i| CniNode::new(nodes.host(i), &nodes.agents[i].subnet_file).unwrap()).collect();
    let a = cni[0].add_pod().unwrap();
    let b = cni[1].add_pod().unwrap();
    pod_tcp_server(nodes.host(0), &a, 7000);
    pod_tcp_server(nodes.host(1), &b, 7000);
    pods_talk(&a, &b, &[nodes.host(0), nodes.host(1)]);
    // cni0 deleted while the agent runs: the plugin makes it again at the
    // next ADD, and that pod is reachable across nodes.
    nodes.host(0).run(&["ip", "link", "del", "cni0"]).unwrap();
    let a2 = cni[0].add_pod().unwrap();
    pod_tcp_server(nodes.host(0), &a2, 7000);
    pods_talk(&a2, &b, &[nodes.host(0), nodes.host(1)]);
    // DEL releases the address.
    cni[0].del_pod(&a2).unwrap();
    assert!(cni[0].allocated().unwrap().iter().all(|(ip, _)| *ip != a2.ip));
}

#[test]
fn cni_add_and_del_on_three_nodes_release_addresses_and_the_rest_keep_talking() {
    // kube-flannel's way: flanneld --ip-masq, so the bridge plugin gets
    // ipMasq false.
    let nodes = Nodes::start(3, &["--ip-masq"]);
    let hosts: Vec<&Netns> = (0..3).map(|i| &**nodes.host(i)).collect();
    let mut cni: Vec<CniNode> = (0..3).map(|i| CniNode::new(nodes.host(i), &nodes.agents[i].subnet_file).unwrap()).collect();
    let mut pods: Vec<Vec<CniPod>> = Vec::new();
    for (i, node) in cni.iter_mut().enumerate() {
        let two = vec![node.add_pod().unwrap(), node.add_pod().unwrap()];
        let net = lease_network(&nodes.agents[i].subnet_file);
        for p in &two {
            pod_tcp_server(nodes.host(i), p, 7000);
            assert!(ipnet_contains(&net, p.ip), "{} not in the lease {net}", p.ip);
        }
        let allocated = node.allocated().unwrap();
        for p in &two {
            assert!(allocated.contains(&(p.ip, p.container_id.clone())), "{allocated:?} lacks {} of {}", p.ip, p.container_id);
        }
        pods.push(two);
    }
    // Around the ring, both ways: node0 <-> node1 <-> node2 <-> node0.
    for i in 0..3 {
        pods_talk(&pods[i][0], &pods[(i + 1) % 3][1], &hosts);
    }
    // DEL the first pod on every node: its address is released there, the
    // other stays allocated.
    for (i, node) in cni.iter_mut().enumerate() {
        let gone = pods[i].remove(0);
        node.del_pod(&gone).unwrap();
        let allocated = node.allocated().unwrap();
        assert!(allocated.iter().all(|(ip, _)| *ip != gone.ip), "node{i}: {} still allocated: {allocated:?}", gone.ip);
        assert!(allocated.iter().any(|(ip, _)| *ip == pods[i][0].ip), "node{i}: {allocated:?}");
    }
    // The rest keep talking; new pods (ADD after DEL) talk too.
    for i in 0..3 {
        pods_talk(&pods[i][0], &pods[(i + 1) % 3][0], &hosts);
    }
    for (i, node) in cni.iter_mut().enumerate() {
        let p = node.add_pod().unwrap();
        pod_tcp_server(nodes.host(i), &p, 7000);
        pods[i].push(p);
    }
    for i in 0..3 {
        pods_talk(&pods[i][1], &pods[(i + 2) % 3][1], &hosts);
    }
    // DEL of everything leaves no allocation on any node.
    for (i, node) in cni.iter_mut().enumerate() {
        for p in std::mem::take(&mut pods[i]) {
            node.del_pod(&p).unwrap();
        }
        assert_eq!(node.allocated().unwrap(), vec![], "node{i} after DEL of all its pods");
    }
}

fn ipnet_contains(net: &str, ip: Ipv4Addr) -> bool {
    let (a, len) = net.split_once('/').unwrap();
    let (a, len): (Ipv4Addr, u32) = (a.parse().unwrap(), len.parse().unwrap());
    let mask = u32::MAX << (32 - len);
    u32::from(ip) & mask == u32::from(a) & mask
}

#[test]
fn cni_portmap_host_port_reached_from_a_pod_on_the_other_node() {
    let nodes = Nodes::start(2, &["--ip-masq"]);
    let mut cni: Vec<CniNode> = (0..2).map(|i| CniNode::new(nodes.host(i), &nodes.agents[i].subnet_file).unwrap()).collect();
    // A pod with hostPort 8080 -> 7000 on node 0, as kubelet asks for
    // `ports: [{containerPort: 7000, hostPort: 8080}]`.
    let web = cni[0].add_pod_with_ports(&[PortMapping { host_port: 8080, container_port: 7000, protocol: "tcp" }]).unwrap();
    let client = cni[1].add_pod().unwrap();
    pod_tcp_server(nodes.host(0), &web, 7000);
    pod_tcp_server(nodes.host(1), &client, 7000);
    // The overlay between the two pods, both ways.
    pods_talk(&web, &client, &[nodes.host(0), nodes.host(1)]);
    // node 0's IP:8080 from the pod on node 1 reaches the pod on node 0.
    pod_tcp(&client, IpAddr::V4(nodes.host(0).ip()), 8080, &format!("pong-{}", web.name));
    let rules = nodes.host(0).run(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(rules.contains("CNI-HOSTPORT-DNAT") && rules.contains("--dport 8080"), "portmap's rules:\n{rules}");
    // DEL runs portmap's DEL too: its rules for the pod go, the address is free.
    cni[0].del_pod(&web).unwrap();
    let rules = nodes.host(0).run(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(!rules.contains("--dport 8080"), "portmap's rules left after DEL:\n{rules}");
    assert!(cni[0].allocated().unwrap().iter().all(|(ip, _)| *ip != web.ip));
}

/// Who masquerades container traffic leaving its node.
#[derive(Clone, Copy, PartialEq)]
enum Masq {
    /// The agent (`--ip-masq`); docker-opts gives dockerd `--ip-masq=false`.
    Agent,
    /// dockerd's own rule (the agent without `--ip-masq`).
    Dockerd,
    /// Nobody: the request reaches node 1 with the container's address and
    /// the reply goes back over the overlay.
    Nobody,
}

/// `docker run -p 18080:7000` on node 1 (real dockerd writes the DNAT in
/// its DOCKER chain), called at node 1's address from a container on node
/// 0. With `Masq::Nobody` the reply leaves the published container for a
/// container on the other node over the overlay: it must pass node 1's
/// conntrack to get its source translated back (issue 13) rather than take
/// the fast path. dockerd runs without its userland proxy, so only the DNAT
/// can answer.
fn published_port_from_the_other_node(masq: Masq) {
    let flags: &[&str] = if masq == Masq::Agent { &["--ip-masq"] } else { &[] };
    let nodes = Nodes::start(2, flags);
    let mut docker: Vec<Dockerd> = (0..2)
        .map(|i| {
            let mut opts = dockerd_opts(&nodes, i);
            assert_eq!(opts.contains(&"--ip-masq=false".to_string()), masq == Masq::Agent, "{opts:?}");
            if masq == Masq::Nobody {
                opts.push("--ip-masq=false".into());
            }
            opts.push("--userland-proxy=false".into());
            Dockerd::start(nodes.host(i), &opts).unwrap()
        })
        .collect();
    docker[0].run_container("ctr", None).unwrap();
    let script = "while true; do echo pong-web | nc -l -p 7000; done";
    docker[1].run_container_with("web", &["-p", "18080:7000"], &["sh", "-c", script]).unwrap();
    let web = docker[1].container_ip("web", None).unwrap();
    let rules = nodes.host(1).run(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(
        rules.lines().any(|l| l.starts_with("-A DOCKER") && l.contains("--dport 18080") && l.contains(&format!("--to-destination {web}:7000"))),
        "dockerd's DNAT for -p 18080:7000:\n{rules}"
    );
    // Straight to the container (the overlay, fast path), then through the
    // published port at node 1's address, several connections in a row.
    tcp_across(&docker[0], "ctr", web, "pong-web");
    let node1 = nodes.host(1).ip();
    for _ in 0..3 {
        let out = docker[0].exec("ctr", &["sh", "-c", &format!("nc -w 3 {node1} 18080 </dev/null")]).unwrap();
        assert_eq!(out.trim(), "pong-web", "ctr on node 0 -> {node1}:18080 (published port of web)\n{}", diagnose(nodes.host(1)));
    }
}

#[test]
fn docker_run_p_answers_a_container_on_the_other_node_agent_masquerades() {
    published_port_from_the_other_node(Masq::Agent);
}

#[test]
fn docker_run_p_answers_a_container_on_the_other_node_dockerd_masquerades() {
    published_port_from_the_other_node(Masq::Dockerd);
}

#[test]
fn docker_run_p_answers_a_container_on_the_other_node_without_masquerade() {
    published_port_from_the_other_node(Masq::Nobody);
}
