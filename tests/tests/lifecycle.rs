//! The agent's life on a node: stopping it leaves the data path, the pins
//! and the lease in place (a restart causes no loss); `cleanup` removes what
//! it installed; `--xdp-guard` drops strangers' VXLAN before TC sees it.
//! Needs root.

use std::time::Duration;

use overlay_common::stats::Reason;
use overlay_tests::{
    agent::{agent_binary, Agent, AgentOptions},
    capture::{Capture, VxlanFrame},
    cluster::{Cluster, PREFIX, VXLAN_CONFIG},
    etcd::Etcd,
    flannel::{add_kernel_peer, setup_kernel_vxlan, VxlanLease},
    netns::{ensure_bpffs, Host, Pod, Testbed},
    poll_until,
    traffic::wait_ping,
};

/// Names of the programs attached through TCX to the host's uplink and
/// bridge, asked from inside its namespace (Debian's bpftool 7.1 predates
/// TCX in `bpftool net show`).
fn tcx_programs(host: &Host) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    host.in_ns(|| {
        let mut names = Vec::new();
        for (iface, hook) in [
            ("eth0", TcAttachType::Ingress),
            ("cni0", TcAttachType::Ingress),
            ("overlay0", TcAttachType::Ingress),
            ("overlay0", TcAttachType::Egress),
        ] {
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
    let mut c = Cluster::build(2, 0, 0, VXLAN_CONFIG).agent_flags(&["--ip-masq"]).start();
    let (pod0, pod1) = (&c.pods[0][0], &c.pods[1][0]);
    wait_ping(pod1, pod0.ip());
    let (subnet, len, _) = c.agents[0].lease().unwrap();
    let key = format!("{PREFIX}/subnets/{subnet}-{len}");
    let host = c.tb.host(0);
    assert!(host.run(&["iptables-save", "-t", "nat"]).unwrap().contains("FLANNEL-POSTRTG"));
    // The agent finds the pod bridge (made with the pod) within a second.
    poll_until(Duration::from_secs(10), "from_pods on the pod bridge", || {
        let progs = tcx_programs(host);
        progs.iter().any(|p| p == "from_pods").then_some(()).ok_or_else(|| anyhow::anyhow!("{progs:?}"))
    })
    .unwrap();

    let status = c.agents[0].stop().expect("the agent exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // Nothing was torn down: traffic flows, the lease and the pins remain.
    wait_ping(pod1, pod0.ip());
    assert!(c.etcd.get(&key).unwrap().is_some(), "the lease stays in etcd");
    assert!(c.agents[0].pin_dir().join("SUBNETS").exists());
    assert_eq!(tcx_programs(host), ["from_host", "from_pods", "from_tunnel", "from_uplink"]);

    let out = host
        .exec(&[
            agent_binary().to_str().unwrap(),
            "cleanup",
            "--release-lease",
            &format!("--bpf-pin-dir={}", c.agents[0].pin_root.display()),
            &format!("--subnet-file={}", c.agents[0].subnet_file.display()),
            &format!("--etcd-endpoints={}", c.agents[0].etcd_endpoints()),
            &format!("--etcd-prefix={PREFIX}"),
        ])
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleanup failed: {said}");
    assert!(!c.agents[0].pin_root.exists(), "pins removed");
    assert!(tcx_programs(host).is_empty(), "programs detached");
    assert!(!host.run(&["iptables-save"]).unwrap().contains("FLANNEL"), "iptables rules removed");
    let routes = host.run(&["ip", "route"]).unwrap();
    assert!(!routes.contains("10.42.0.0/16"), "cluster route removed: {routes}");
    assert!(c.etcd.get(&key).unwrap().is_none(), "lease released");
    assert!(!c.agents[0].subnet_file.exists(), "subnet file removed with the lease");
    assert!(pod1.ping(pod0.ip()).is_err(), "the node no longer routes the overlay");

    // Cleaning up twice is fine.
    let again = host
        .exec(&[agent_binary().to_str().unwrap(), "cleanup", &format!("--bpf-pin-dir={}", c.agents[0].pin_root.display())])
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}

/// What reached agent 0's node while a stranger (a host holding no lease)
/// and a flannel kernel node (holding one) each sent it VXLAN.
#[derive(Debug)]
struct Arrivals {
    /// The stranger's VXLAN frames on the wire into agent 0's eth0 (its
    /// port of the underlay bridge).
    stranger_on_wire: usize,
    /// The stranger's frames in a capture on agent 0's eth0 itself: what
    /// arrives after XDP and before TC.
    stranger_on_eth0: usize,
    /// The kernel node's frames in the same capture on eth0.
    peer_on_eth0: usize,
    /// How much agent 0's drop_unknown_sender counter went up.
    dropped: u64,
    /// `ip link show eth0` on agent 0's node.
    link: String,
}

/// Agent 0 (with `flags`) on host 0, a flannel kernel node on host 1 whose
/// lease is in etcd, and a stranger on host 2: kernel VXLAN configured with
/// agent 0 as its peer and a pod behind it, but no lease. The stranger's pod
/// pings agent 0's pod (it must not get through), then the kernel node's
/// pod does (it must), with captures running on the wire and on eth0.
/// Checks what holds with or without the XDP guard: the stranger's frames
/// were sent and every one was counted as dropped, the peer's got through.
fn stranger_and_peer_send_vxlan(flags: &[&str]) -> Arrivals {
    let c = Cluster::build(1, 1, 1, VXLAN_CONFIG).agent_flags(flags).start();
    let (host, stranger) = (c.tb.host(0), c.tb.host(2));
    let (target, peer_pod) = (&c.pods[0][0], &c.pods[1][0]);
    let fake = VxlanLease {
        subnet: "10.42.251.0".parse().unwrap(),
        prefix_len: 24,
        public_ip: stranger.ip(),
        vtep_mac: [0x0e, 0, 0, 0, 0xfb, 1],
    };
    setup_kernel_vxlan(stranger, 1, &fake, 1500).unwrap();
    let (subnet, len, _) = c.agents[0].lease().unwrap();
    let agent_lease = VxlanLease { subnet, prefix_len: len, public_ip: host.ip(), vtep_mac: c.vtep_mac(0) };
    add_kernel_peer(stranger, 1, &agent_lease).unwrap();
    let spy = stranger.add_pod("cni0", "10.42.251.2/24", fake.gateway(), 1450).unwrap();
    // The legit path works before anything is measured.
    wait_ping(peer_pod, target.ip());

    let dropped = || c.maps(0).stats().unwrap().get(Reason::DropUnknownSender).packets;
    let before = dropped();
    let vxlan = "udp dst port 8472";
    let wire = Capture::start(&c.tb, 0, vxlan);
    let eth0 = Capture::on(host, "eth0", c.tb.dir(), vxlan);
    let ping3 = |from: &Pod| from.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &target.ip().to_string()]).unwrap();
    let out = ping3(&spy);
    assert!(!out.status.success(), "a stranger reached a pod: {}", String::from_utf8_lossy(&out.stdout));
    let out = ping3(peer_pod);
    assert!(out.status.success(), "the kernel node's pod lost pings: {}", String::from_utf8_lossy(&out.stdout));
    let (wire, eth0) = (wire.finish(), eth0.finish());
    let from = |frames: &[VxlanFrame], ip| frames.iter().filter(|f| f.outer_src == ip).count();
    let seen = Arrivals {
        stranger_on_wire: from(&wire, stranger.ip()),
        stranger_on_eth0: from(&eth0, stranger.ip()),
        peer_on_eth0: from(&eth0, c.tb.host(1).ip()),
        dropped: dropped() - before,
        link: host.run(&["ip", "link", "show", "eth0"]).unwrap(),
    };
    eprintln!("{seen:#?}");
    // Both ways (guard or not): the stranger's frames were sent and all
    // counted as dropped, and the real peer's got through eth0.
    assert!(seen.stranger_on_wire >= 3, "the stranger sent its pings: {seen:#?}");
    assert!(seen.dropped >= seen.stranger_on_wire as u64, "drop_unknown_sender missed frames: {seen:#?}");
    assert!(seen.peer_on_eth0 >= 3, "the real peer's VXLAN on eth0: {seen:#?}");
    seen
}

/// With `--xdp-guard`, the stranger's frames reach eth0 on the wire but a
/// capture on eth0 never sees them (a packet tap sees what XDP passes,
/// before TC), and the counter still counts them: XDP dropped them, not the
/// TC program. A real peer's VXLAN still gets through. The control case is
/// the next test.
#[test]
fn xdp_guard_drops_strangers_before_tc() {
    let seen = stranger_and_peer_send_vxlan(&["--xdp-guard"]);
    assert!(
        seen.link.contains("prog/xdp ") && seen.link.contains("name xdp_guard"),
        "xdp_guard attached to the uplink in native mode: {}",
        seen.link
    );
    assert_eq!(seen.stranger_on_eth0, 0, "the stranger's frames reached the packet taps (past XDP)");
}

/// The control for the test above: without the guard the same frames do
/// reach eth0 (so the capture there can see them) and the TC program drops
/// and counts them.
#[test]
fn without_the_xdp_guard_tc_drops_strangers() {
    let seen = stranger_and_peer_send_vxlan(&[]);
    assert!(!seen.link.contains("xdp"), "no XDP program on the uplink: {}", seen.link);
    assert_eq!(seen.stranger_on_eth0, seen.stranger_on_wire, "every frame on the wire reaches eth0's taps");
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
    let mut agent = Agent::start_forwarded(
        tb.host(0),
        AgentOptions {
            etcd_endpoints: &etcd.endpoint(),
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
        let c = Cluster::start_with(1, 0, 0, VXLAN_CONFIG);
        seen = Some((
            c.agents[0].pin_root.clone(),
            c.agents[0].pid().unwrap(),
            c.tb.host(0).name().to_string(),
            c.etcd.pid().unwrap(),
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

/// flanneld accepts a Network holding the nodes' own addresses (or the
/// whole IPv4 space); its cluster route then captures the underlay (or
/// competes with the default route). The agent refuses to start, naming
/// the Network and what it contains, before it touches anything.
#[test]
fn a_network_that_would_capture_the_underlay_is_refused_at_start() {
    // The testbed's underlay is 192.168.77.0/24; host 0 is 192.168.77.10.
    let (status, log) = failed_start(Some(r#"{"Network":"192.168.0.0/16","Backend":{"Type":"vxlan"}}"#), &[]);
    assert!(!status.success());
    assert!(log.contains("192.168.0.0/16") && log.contains("192.168.77.10") && log.contains("uplink"), "{log}");
    let (status, log) = failed_start(Some(r#"{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}"#), &[]);
    assert!(!status.success());
    assert!(log.contains("0.0.0.0/0") && log.contains("default route"), "{log}");
}

/// The programs attached through TCX at `iface`'s `hook` in `host`, by name.
fn tcx_on(host: &Host, iface: &str, hook: aya::programs::TcAttachType) -> Vec<String> {
    use aya::programs::SchedClassifier;
    host.in_ns(|| match SchedClassifier::query_tcx(iface, hook) {
        Ok((_, progs)) => progs.iter().filter_map(|p| p.name_as_str().map(str::to_string)).collect(),
        Err(_) => Vec::new(),
    })
}

/// `bpftool map create` a small map pinned at `pin` (another tool's pin).
fn pin_foreign_map(pin: &std::path::Path) {
    std::fs::create_dir_all(pin.parent().unwrap()).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(pin)
        .args(["type", "array", "key", "4", "value", "4", "entries", "1", "name", "foreign"])
        .output()
        .expect("bpftool (Debian package bpftool) is needed to pin another tool's map");
    assert!(out.status.success(), "bpftool map create {}: {}", pin.display(), String::from_utf8_lossy(&out.stderr));
}

/// An upgrade to a new pin layout version: the old version's programs
/// (here: the same programs, left attached through links pinned under
/// `v<old>`) must be detached from every interface, pod veths included,
/// since TCX stops at the first program that passes or redirects and the
/// old ones run first. Other tools' pins under a shared `--bpf-pin-dir`
/// (even a folder named like a version) survive that and `cleanup`.
#[test]
fn a_new_pin_layout_detaches_the_old_ones_programs_and_cleanup_spares_other_tools_pins() {
    use aya::programs::TcAttachType::{Egress, Ingress};
    let mut c = Cluster::build(1, 0, 0, VXLAN_CONFIG).start();
    let host = c.tb.host(0);
    let veth = c.pods[0][0].host_veth().to_string();
    let hooks = [("eth0", Ingress), ("overlay0", Ingress), ("cni0", Ingress), (veth.as_str(), Ingress), (veth.as_str(), Egress)];
    let attached = || hooks.iter().map(|(i, h)| (i.to_string(), tcx_on(host, i, *h))).collect::<Vec<_>>();
    poll_until(Duration::from_secs(10), "the pod side programs on the pod's veth", || {
        let now = attached();
        now.iter().all(|(_, p)| p.len() == 1).then_some(()).ok_or_else(|| anyhow::anyhow!("{now:?}"))
    })
    .unwrap();
    let status = c.agents[0].stop().expect("the agent exits on SIGTERM");
    assert!(status.success());

    // The stopped agent's pins become an older layout's, still attached.
    let root = c.agents[0].pin_root.clone();
    let ours = c.agents[0].pin_dir();
    let old = root.join("v1");
    assert_ne!(ours, old, "v1 is not the current layout");
    std::fs::rename(&ours, &old).unwrap();
    // Other tools' pins under the same root.
    let foreign = [root.join("othertool/map"), root.join("v9/map"), root.join("loose_map")];
    for pin in &foreign {
        pin_foreign_map(pin);
    }

    c.agents[0].restart(host).unwrap();
    c.agents[0].wait_ready_n(2, Duration::from_secs(30)).unwrap();
    poll_until(Duration::from_secs(10), "the new programs, and only those, everywhere", || {
        let now = attached();
        now.iter().all(|(_, p)| p.len() == 1).then_some(()).ok_or_else(|| anyhow::anyhow!("{now:?}"))
    })
    .unwrap();
    assert!(!old.exists(), "the old layout's folder is removed");
    for pin in &foreign {
        assert!(pin.exists(), "{} is another tool's and must stay", pin.display());
    }

    c.agents[0].stop();
    let out = host
        .exec(&[agent_binary().to_str().unwrap(), "cleanup", &format!("--bpf-pin-dir={}", root.display())])
        .unwrap();
    assert!(out.status.success(), "cleanup: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!ours.exists(), "cleanup removes our layout");
    // Unpinning drops the last reference; the kernel detaches right after.
    poll_until(Duration::from_secs(10), "every program detached", || {
        let now = attached();
        now.iter().all(|(_, p)| p.is_empty()).then_some(()).ok_or_else(|| anyhow::anyhow!("{now:?}"))
    })
    .unwrap();
    for pin in &foreign {
        assert!(pin.exists(), "cleanup removed another tool's {}", pin.display());
    }
}
