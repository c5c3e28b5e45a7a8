//! A cluster in namespaces: agent nodes (the real binary), reference flannel
//! nodes (our re-implementation of flanneld's vxlan backend, kernel data
//! path: [`crate::flannel::FlannelRef`]), spare hosts, one pod per node, a real etcd, and
//! a timestamped watch of its leases.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use ipnet::Ipv4Net;
use overlay_agent::datapath::{DatapathMaps, DatapathMaps6, Peer};

use crate::{
    agent::{Agent, AgentOptions},
    etcd::Etcd,
    flannel::{read_watch_events, FlannelRef, RefOptions, VxlanLease},
    netns::{ensure_bpffs, next, ChildHandle, Netns, Pod, Testbed},
    poll_until,
};

pub const PREFIX: &str = "/overlay-test/network";
pub const VXLAN_CONFIG: &str = r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#;
const READY: Duration = Duration::from_secs(30);

pub struct Cluster {
    // Field order is drop order: agents (their pins, then their forwards to
    // etcd) first, the namespaces last.
    pub agents: Vec<Agent>,
    pub etcd: Etcd,
    pub pods: Vec<Vec<Pod>>,
    pub kernel_leases: Vec<VxlanLease>,
    /// The kernel nodes: our re-implementation of flanneld's vxlan backend
    /// (see [`FlannelRef`]), one per kernel lease, in the same order.
    pub flannel: Vec<FlannelRef>,
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
    prepare: Option<Prepare<'a>>,
    /// Give every node its IPv4 pod (false: the caller makes its pods).
    pods: bool,
    /// The kernel nodes take IPv4-only leases even when the config has
    /// EnableIPv6 (a flanneld from before dual stack).
    kernels_v4_only: bool,
}

/// A hook run on the testbed before any node is set up.
type Prepare<'a> = Box<dyn FnOnce(&Testbed) + 'a>;

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

    /// No IPv4 pod per node (an IPv6-only cluster has no IPv4 lease to
    /// take one from): `pods` stays empty and the caller makes its own.
    pub fn without_pods(mut self) -> Self {
        self.pods = false;
        self
    }

    /// The kernel nodes run IPv4 only (no `flannel-v6`, leases without an
    /// IPv6 part), whatever the config says: a mixed cluster.
    pub fn kernel_nodes_v4_only(mut self) -> Self {
        self.kernels_v4_only = true;
        self
    }

    /// Called on the testbed before any node is set up (e.g. to re-address
    /// hosts or add routers).
    pub fn prepare(mut self, prepare: impl FnOnce(&Testbed) + 'a) -> Self {
        self.prepare = Some(Box::new(prepare));
        self
    }

    pub fn start(self) -> Cluster {
        let ClusterBuilder { agents, kernels, spare, config, ready, flags, prepare, pods, kernels_v4_only } = self;
        ensure_bpffs().unwrap();
        let tb = Testbed::new(agents + kernels + spare).unwrap();
        if let Some(prepare) = prepare {
            prepare(&tb);
        }
        let etcd = Etcd::start().unwrap();
        etcd.put(&format!("{PREFIX}/config"), config).unwrap();

        let mut flannel = Vec::new();
        for k in 0..kernels {
            let mut opts = kernel_node_options(&tb, agents + k, k);
            if kernels_v4_only {
                opts.v6 = None;
            }
            let node = FlannelRef::start(tb.host(agents + k), &etcd, PREFIX, &opts)
                .unwrap();
            flannel.push(node);
        }
        let kernel_leases = flannel.iter().map(|f| f.lease).collect();

        let started = flags.into_iter().enumerate().map(|(i, extra)| start_agent(&tb, &etcd, i, extra)).collect();
        let mut cluster = Cluster {
            agents: started,
            etcd,
            pods: vec![],
            kernel_leases,
            flannel,
            pod_mtu: 1450,
            agent_hosts: (0..agents).collect(),
            tb,
        };
        for a in &cluster.agents {
            a.wait_ready(ready).unwrap();
        }
        if let Some(a) = cluster.agents.first() {
            cluster.pod_mtu = a.flannel_mtu().unwrap();
        }
        for i in (0..agents).filter(|_| pods) {
            let (_, len, gw) = cluster.agents[i].lease().unwrap();
            let pod = cluster.tb.host(i).add_pod("cni0", &format!("{}/{len}", next(gw, 1)), gw, cluster.pod_mtu).unwrap();
            cluster.pods.push(vec![pod]);
        }
        for k in 0..kernels {
            let (lease, mtu) = (cluster.flannel[k].lease, cluster.flannel[k].pod_mtu);
            let host = cluster.tb.host(agents + k);
            let pod = host.add_pod("cni0", &format!("{}/24", next(lease.gateway(), 1)), lease.gateway(), mtu).unwrap();
            cluster.pods.push(vec![pod]);
        }
        cluster
    }
}

impl Cluster {
    /// `agents` agent nodes (hosts 0..), then `kernels` flannel kernel
    /// nodes, then `spare` unconfigured hosts; one pod on each node. Set
    /// more (agent flags, ...) on the builder, then `.start()`.
    pub fn build(agents: usize, kernels: usize, spare: usize, config: &str) -> ClusterBuilder<'_> {
        ClusterBuilder {
            agents,
            kernels,
            spare,
            config,
            ready: READY,
            flags: vec![Vec::new(); agents],
            prepare: None,
            pods: true,
            kernels_v4_only: false,
        }
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

    /// Waits until every agent node has its pods on the fast path: their
    /// veths carry the programs, and the endpoint map knows the node's first
    /// pod (which must have talked across: a pod is learnt once the host has
    /// seen it), within a second or two. Before that their traffic takes the
    /// kernel path, which is correct but not what the callers look at.
    pub fn wait_fast_path(&self) {
        for i in 0..self.agents.len() {
            let pins = self.agents[i].pins();
            let pods = self.tb.host(self.agent_hosts[i]).pods();
            poll_until(Duration::from_secs(15), &format!("node {i}'s pods on the fast path"), || {
                let eps = self.maps(i).endpoints()?;
                for pod in &pods {
                    for program in ["from_pods", "to_pods"] {
                        let pin = pins.link(program, pod.host_veth());
                        anyhow::ensure!(pin.exists(), "no {}", pin.display());
                    }
                }
                let first = &self.pods[i][0];
                anyhow::ensure!(eps.iter().any(|e| e.ip == first.ip()), "{} not in {eps:?}", first.ip());
                Ok(())
            })
            .unwrap();
        }
    }

    /// Starts a kernel node (our flanneld re-implementation) on testbed host
    /// `host` (normally a spare one) as the `k`th kernel lease. Returns its
    /// index in `flannel`.
    pub fn add_flannel(&mut self, host: usize, k: usize) -> usize {
        self.add_flannel_with(host, &kernel_node_options(&self.tb, host, k))
    }

    /// [`Cluster::add_flannel`] with options of the caller's.
    pub fn add_flannel_with(&mut self, host: usize, opts: &RefOptions) -> usize {
        let node = FlannelRef::start(self.tb.host(host), &self.etcd, PREFIX, opts).unwrap();
        self.kernel_leases.push(node.lease);
        self.flannel.push(node);
        self.flannel.len() - 1
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

    /// Agent `i`'s pinned IPv6 maps.
    pub fn maps6(&self, i: usize) -> DatapathMaps6 {
        DatapathMaps6::open_pinned(&self.agents[i].pins()).unwrap()
    }

    /// Starts an agent on testbed host `host` (normally a spare one) with
    /// its own forward to etcd, without waiting for it to be ready.
    /// Returns its index in `agents`.
    pub fn add_agent(&mut self, host: usize) -> usize {
        self.add_agent_with(host, &[])
    }

    /// [`Cluster::add_agent`] with extra flags.
    pub fn add_agent_with(&mut self, host: usize, flags: &[&str]) -> usize {
        let agent = start_agent(&self.tb, &self.etcd, host, flags.iter().map(|f| f.to_string()).collect());
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
            .arg(format!("--endpoints={}", self.agents[agent].etcd_endpoints()))
            .args(["watch", "--prefix", &format!("{PREFIX}/")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = ns_host.spawn(cmd).unwrap();
        let stdout = child.take_stdout().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            read_watch_events(stdout, |key, value| tx.send(LeaseChange { at: SystemTime::now(), key, value }).is_ok())
        });
        // The watch must be established before the caller acts: poke a key
        // of our own (outside subnets/, so no agent sees it) and wait for it
        // to come through.
        let probe = format!("{PREFIX}/test-watch-probe-{}", crate::random_hex(3));
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

/// The `k`th kernel node on testbed host `host`: subnet 10.42.(250-k).0/24,
/// VtepMAC 0e:00:00:00:fa:(k+1), subnet.env where an agent on that host
/// would write it (so an agent started there later finds it).
pub fn kernel_node_options(tb: &Testbed, host: usize, k: usize) -> RefOptions {
    RefOptions {
        subnet: Ipv4Addr::new(10, 42, 250 - k as u8, 0),
        prefix_len: 24,
        vtep_mac: [0x0e, 0, 0, 0, 0xfa, k as u8 + 1],
        ip_masq: false,
        subnet_file: crate::agent::subnet_file_for(tb.dir(), tb.host(host)),
        // Used only with EnableIPv6: fd42:0:0:(250-k)::/64 (inside the tests'
        // IPv6Network fd42::/48), flannel-v6's VtepMAC 0e:00:00:00:f6:(k+1).
        v6: Some((
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0xfd42, 0, 0, 250 - k as u16, 0, 0, 0, 0), 64).expect("a /64"),
            [0x0e, 0, 0, 0, 0xf6, k as u8 + 1],
        )),
    }
}

/// An agent on testbed host `host` with `extra` flags, reaching `etcd`
/// through a forward of its own.
fn start_agent(tb: &Testbed, etcd: &Etcd, host: usize, extra: Vec<String>) -> Agent {
    let opts = AgentOptions { etcd_endpoints: &etcd.endpoint(), prefix: PREFIX, dir: tb.dir(), extra };
    Agent::start_forwarded(tb.host(host), opts).unwrap()
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

/// Host 2 is moved to another L2 segment (192.168.88.0/24 on its own
/// bridge, with MTU `mtu`) behind host 3, a router with a leg on each
/// segment. Hosts 0 and 1 route 192.168.88.0/24 via the router.
pub fn put_host_2_behind_a_router(tb: &Testbed, mtu: u32) {
    let (ul, far, router) = (tb.underlay(), tb.host(2), tb.host(3));
    ul.ip_batch(&[
        "link add br1 type bridge".into(),
        format!("link set br1 mtu {mtu} up"),
        format!("link set {} nomaster", tb.underlay_port(2)),
        format!("link set {} master br1", tb.underlay_port(2)),
    ])
    .unwrap();
    let out = Command::new("ip")
        .args(["link", "add", "eth1", "netns", router.name(), "type", "veth", "peer", "name", "r1", "netns", ul.name()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ul.ip_batch(&[format!("link set r1 mtu {mtu} master br1 up"), format!("link set {} mtu {mtu}", tb.underlay_port(2))])
        .unwrap();
    router.ip_batch(&[format!("link set eth1 mtu {mtu} up"), "addr add 192.168.88.1/24 dev eth1".into()]).unwrap();
    far.ip_batch(&[
        format!("link set eth0 mtu {mtu}"),
        format!("addr del {} dev eth0", far.cidr()),
        "addr add 192.168.88.10/24 dev eth0".into(),
        "route add default via 192.168.88.1".into(),
    ])
    .unwrap();
    for h in 0..2 {
        tb.host(h).ip_batch(&[format!("route add 192.168.88.0/24 via {}", router.ip())]).unwrap();
    }
    for h in 0..2 {
        poll_until(Duration::from_secs(10), "host 2 reachable through the router", || far.ping(tb.host(h).ip()))
            .unwrap();
    }
    let route = tb.host(0).run(&["ip", "route", "get", "192.168.88.10"]).unwrap();
    assert!(route.contains(&format!("via {}", router.ip())), "{route}");
}

/// Host `i`'s IPv6 address on the underlay (see [`address_underlay6`]).
pub fn underlay6(i: usize) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

/// Gives every host's eth0 its [`underlay6`] address (a /64 shared by all),
/// for dual-stack clusters: a [`ClusterBuilder::prepare`] hook.
pub fn address_underlay6(tb: &Testbed) {
    for (i, h) in tb.hosts().iter().enumerate() {
        h.ns().ip_batch(&[format!("addr add {}/64 dev eth0 nodad", underlay6(i))]).unwrap();
    }
}

/// Gives `pod` on `host` the `nth` address of the v6 lease `subnet` (the
/// first, the gateway, on cni0 unless the node already put it there, as
/// the CNI bridge plugin does) and a default route via it. Returns the
/// pod's address.
pub fn add_pod6(host: &Netns, pod: &Pod, subnet: ipnet::Ipv6Net, nth: u32) -> std::net::Ipv6Addr {
    let gw = std::net::Ipv6Addr::from(u128::from(subnet.network()) + 1);
    let ip = std::net::Ipv6Addr::from(u128::from(gw) + u128::from(nth - 1));
    let len = subnet.prefix_len();
    let on_bridge = host.run(&["ip", "-6", "addr", "show", "dev", "cni0"]).unwrap();
    if !on_bridge.contains(&format!("{gw}/{len}")) {
        host.ip_batch(&[format!("addr add {gw}/{len} dev cni0 nodad")]).unwrap();
    }
    pod.ns()
        .ip_batch(&[format!("addr add {ip}/{len} dev eth0 nodad"), format!("route add default via {gw} dev eth0")])
        .unwrap();
    ip
}
