//! The agent's life on a node: stopping it leaves the data path, the pins
//! and the lease in place (a restart causes no loss); `cleanup` removes what
//! it installed; `--xdp-guard` drops strangers' VXLAN before TC sees it.
//! Needs root.

mod support;

use std::{net::SocketAddr, time::Duration};

use overlay_tests::{
    agent::{agent_binary, Agent, AgentOptions},
    etcd::Etcd,
    flannel::{add_kernel_peer, setup_kernel_vxlan, VxlanLease},
    forward::PortForward,
    netns::{ensure_bpffs, Pod, Testbed},
};
use support::cluster::{next, wait_ping, PREFIX, VXLAN_CONFIG};

const READY: Duration = Duration::from_secs(30);

struct Nodes {
    agents: Vec<Agent>,
    forwards: Vec<PortForward>,
    etcd: Etcd,
    pods: Vec<Pod>,
    tb: Testbed,
}

/// `n` agent nodes (each with `extra` flags) and one pod each, plus `spare`
/// unconfigured hosts.
fn nodes(n: usize, spare: usize, extra: &[&str]) -> Nodes {
    ensure_bpffs().unwrap();
    let tb = Testbed::new(n + spare).unwrap();
    let etcd = Etcd::start().unwrap();
    etcd.put(&format!("{PREFIX}/config"), VXLAN_CONFIG).unwrap();
    let target: SocketAddr = etcd.endpoint().trim_start_matches("http://").parse().unwrap();
    let mut agents = Vec::new();
    let mut forwards = Vec::new();
    for i in 0..n {
        let fwd = PortForward::into_ns(tb.host(i), target).unwrap();
        let opts = AgentOptions {
            etcd_endpoints: &fwd.url(),
            prefix: PREFIX,
            dir: tb.dir(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        agents.push(Agent::start(tb.host(i), opts).unwrap());
        forwards.push(fwd);
    }
    let mut pods = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        a.wait_ready(READY).unwrap();
        let (_, len, gw) = a.lease().unwrap();
        pods.push(tb.host(i).add_pod("cni0", &format!("{}/{len}", next(gw, 1)), gw, 1450).unwrap());
    }
    Nodes { agents, forwards, etcd, pods, tb }
}

/// Names of the programs attached through TCX to the host's uplink and
/// bridge, asked from inside its namespace (Debian's bpftool 7.1 predates
/// TCX in `bpftool net show`).
fn tcx_programs(host: &overlay_tests::netns::Host) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    host.in_ns(|| {
        let mut names = Vec::new();
        for (iface, hook) in [("eth0", TcAttachType::Ingress), ("cni0", TcAttachType::Ingress), ("cni0", TcAttachType::Egress)] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, hook) {
                names.extend(progs.iter().filter_map(|p| p.name_as_str().map(str::to_string)));
            }
        }
        names.sort();
        names
    })
}

#[test]
fn stopping_keeps_the_data_path_and_cleanup_removes_everything() {
    let mut n = nodes(2, 0, &["--ip-masq"]);
    wait_ping(&n.pods[1], n.pods[0].ip());
    let (subnet, len, _) = n.agents[0].lease().unwrap();
    let key = format!("{PREFIX}/subnets/{subnet}-{len}");
    let host = n.tb.host(0);
    assert!(host.run(&["iptables-save", "-t", "nat"]).unwrap().contains("FLANNEL-POSTRTG"));

    let status = n.agents[0].stop().expect("the agent exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // Nothing was torn down: traffic flows, the lease and the pins remain.
    wait_ping(&n.pods[1], n.pods[0].ip());
    assert!(n.etcd.get(&key).unwrap().is_some(), "the lease stays in etcd");
    assert!(n.agents[0].pin_dir().join("SUBNETS").exists());
    assert_eq!(tcx_programs(host), ["from_host", "from_pods", "from_uplink"]);

    let out = host
        .exec(&[
            agent_binary().to_str().unwrap(),
            "cleanup",
            "--release-lease",
            &format!("--bpf-pin-dir={}", n.agents[0].pin_root.display()),
            &format!("--subnet-file={}", n.agents[0].subnet_file.display()),
            &format!("--etcd-endpoints={}", n.forwards[0].url()),
            &format!("--etcd-prefix={PREFIX}"),
        ])
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleanup failed: {said}");
    assert!(!n.agents[0].pin_root.exists(), "pins removed");
    assert!(tcx_programs(host).is_empty(), "programs detached");
    assert!(!host.run(&["iptables-save"]).unwrap().contains("FLANNEL"), "iptables rules removed");
    let routes = host.run(&["ip", "route"]).unwrap();
    assert!(!routes.contains("10.42.0.0/16"), "cluster route removed: {routes}");
    assert!(n.etcd.get(&key).unwrap().is_none(), "lease released");
    assert!(!n.agents[0].subnet_file.exists(), "subnet file removed with the lease");
    assert!(n.pods[1].ping(n.pods[0].ip()).is_err(), "the node no longer routes the overlay");

    // Cleaning up twice is fine.
    let again = host
        .exec(&[agent_binary().to_str().unwrap(), "cleanup", &format!("--bpf-pin-dir={}", n.agents[0].pin_root.display())])
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn xdp_guard_drops_strangers_before_tc() {
    let n = nodes(1, 1, &["--xdp-guard"]);
    let host = n.tb.host(0);
    assert!(host.run(&["ip", "link", "show", "eth0"]).unwrap().contains("xdp"), "XDP attached to the uplink");
    let stranger = n.tb.host(1);
    let fake = VxlanLease {
        subnet: "10.42.251.0".parse().unwrap(),
        prefix_len: 24,
        public_ip: stranger.ip(),
        vtep_mac: [0x0e, 0, 0, 0, 0xfb, 1],
    };
    setup_kernel_vxlan(stranger, 1, &fake, 1500).unwrap();
    let (subnet, len, _) = n.agents[0].lease().unwrap();
    let maps = overlay_agent::datapath::DatapathMaps::open_pinned(&n.agents[0].pin_dir()).unwrap();
    let vtep_mac = maps.config().unwrap().unwrap().vtep_mac;
    add_kernel_peer(stranger, 1, &VxlanLease { subnet, prefix_len: len, public_ip: host.ip(), vtep_mac }).unwrap();
    let spy = stranger.add_pod("cni0", "10.42.251.2/24", fake.gateway(), 1450).unwrap();
    let dropped = |m: &overlay_agent::datapath::DatapathMaps| {
        m.stats().unwrap().get(overlay_common::stats::Reason::DropUnknownSender).packets
    };
    let before = dropped(&maps);
    let out = spy.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &n.pods[0].ip().to_string()]).unwrap();
    assert!(!out.status.success(), "a stranger reached a pod");
    assert!(dropped(&maps) >= before + 3);
    // The TC program never saw them: it counts nothing as ours from there.
    let tc_seen = maps.stats().unwrap().get(overlay_common::stats::Reason::DecapToPod).packets;
    assert_eq!(tc_seen, 0);
}

/// Starts the agent in a fresh host with `config` (None: no config key at
/// all) and `extra` flags, expecting it to exit; returns its exit status and
/// log.
fn failed_start(config: Option<&str>, extra: &[&str]) -> (std::process::ExitStatus, String) {
    ensure_bpffs().unwrap();
    let tb = Testbed::new(1).unwrap();
    let etcd = Etcd::start().unwrap();
    if let Some(config) = config {
        etcd.put(&format!("{PREFIX}/config"), config).unwrap();
    }
    let target: SocketAddr = etcd.endpoint().trim_start_matches("http://").parse().unwrap();
    let fwd = PortForward::into_ns(tb.host(0), target).unwrap();
    let mut agent = Agent::start(
        tb.host(0),
        AgentOptions {
            etcd_endpoints: &fwd.url(),
            prefix: PREFIX,
            dir: tb.dir(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        },
    )
    .unwrap();
    let status = agent.wait_exit(Duration::from_secs(20)).expect("the agent should have exited");
    let log = agent.log_text();
    assert!(!agent.pin_root.exists() || !agent.pin_dir().join("CONFIG").exists(), "nothing installed");
    (status, log)
}

#[test]
fn missing_config_says_which_key_and_how_to_create_it() {
    let (status, log) = failed_start(None, &[]);
    assert!(!status.success());
    assert!(log.contains(&format!("{PREFIX}/config")), "{log}");
    assert!(log.contains("etcdctl put"), "{log}");
}

#[test]
fn unsupported_backend_names_the_supported_ones() {
    let (status, log) = failed_start(Some(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"udp"}}"#), &[]);
    assert!(!status.success());
    assert!(log.contains("udp") && log.contains("vxlan") && log.contains("host-gw"), "{log}");
}

#[test]
fn unknown_interface_is_a_clear_error() {
    let tb = Testbed::new(1).unwrap();
    // Chosen before etcd is contacted: no etcd needed to see the error.
    let out = tb
        .host(0)
        .exec(&[agent_binary().to_str().unwrap(), "--iface=nope0", "--etcd-endpoints=http://127.0.0.1:1"])
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("nope0") && said.contains("no such interface"), "{said}");
}

#[test]
fn a_panicking_test_leaves_no_agent_pins_namespaces_or_processes() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let n = nodes(1, 0, &[]);
        seen = Some((
            n.agents[0].pin_root.clone(),
            n.agents[0].pid().unwrap(),
            n.tb.host(0).name().to_string(),
            n.etcd.pid().unwrap(),
        ));
        panic!("deliberate");
    }));
    assert!(result.is_err());
    let (pins, agent_pid, ns, etcd_pid) = seen.unwrap();
    assert!(!pins.exists(), "{} left behind", pins.display());
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ");
    assert!(!alive(agent_pid), "agent {agent_pid} still running");
    assert!(!alive(etcd_pid), "etcd {etcd_pid} still running");
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&ns), "namespace {ns} left behind");
}
