//! Issue 12, "Docker and CNI for real": the seeds' walkthroughs with two
//! agent nodes, each with its own real dockerd (or the real CNI plugins) in
//! its namespace, and containers talking across nodes both ways (ping and
//! TCP). The harness is tests/src/docker.rs and tests/src/cni.rs (checked on
//! its own by real_clients.rs).
//!
//! Several of these fail with today's agent, which makes its own `cni0`
//! with the lease's gateway address: docker0 (`--bip`) or the seed's
//! `br-<id>` then gets the same address and the cluster route points at the
//! empty cni0. That is the bug of issue 12; these tests are its acceptance.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use overlay_tests::{
    agent::{agent_binary, Agent},
    cni::CniNode,
    docker::{opts_from_env_file, Dockerd},
    netns::Netns,
    poll_until,
};
use overlay_tests::{
    cluster::{Cluster, VXLAN_CONFIG},
    traffic::parse_ping,
};

/// `overlay-agent docker-opts -f <agent's subnet file> -d <out> <flags>`,
/// as the seeds run mk-docker-opts.sh; returns the output file.
fn docker_opts(agent: &Agent, dir: &std::path::Path, flags: &[&str]) -> PathBuf {
    let out = dir.join(format!("{}-docker_opts.env", agent.name));
    let res = std::process::Command::new(agent_binary())
        .arg("docker-opts")
        .arg("-f")
        .arg(&agent.subnet_file)
        .arg("-d")
        .arg(&out)
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(res.status.success(), "docker-opts {flags:?}: {}", String::from_utf8_lossy(&res.stderr));
    out
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
fn ping_across(d: &Dockerd, from: &str, to: Ipv4Addr) {
    poll_until(Duration::from_secs(15), &format!("{from} -> {to} answered"), || d.ping(from, to))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diagnose(d.netns())));
    let out = d.exec_output(from, &["ping", "-c", "3", "-W", "2", &to.to_string()]).unwrap();
    let stats = parse_ping(&String::from_utf8_lossy(&out.stdout)).expect("ping summary");
    assert_eq!((stats.transmitted, stats.received), (3, 3), "{from} -> {to}:\n{}", stats.text);
}

/// From container `from`: a TCP connection to `to`:7000 gets `expect`.
fn tcp_across(d: &Dockerd, from: &str, to: Ipv4Addr, expect: &str) {
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

/// Two agent nodes, dockerd on each started from `docker-opts <flags>`'s
/// `key`, a container and a TCP server on each; traffic both ways.
fn seed_docker_opts(flags: &[&str], key: &str) {
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let mut docker = Vec::new();
    for i in 0..2 {
        let env = docker_opts(&c.agents[i], c.tb.dir(), flags);
        let opts = opts_from_env_file(&env, key).unwrap();
        assert!(opts.contains(&format!("--bip={}", flannel_subnet(&c.agents[i]))), "{opts:?}");
        let mut d = Dockerd::start(c.tb.host(i), &opts).unwrap();
        d.run_container("ctr", None).unwrap();
        docker.push(d);
    }
    let srv: Vec<Ipv4Addr> = docker.iter_mut().enumerate().map(|(i, d)| tcp_server(d, &format!("srv{i}"), None)).collect();
    let ip: Vec<Ipv4Addr> = docker.iter().map(|d| d.container_ip("ctr", None).unwrap()).collect();
    ping_across(&docker[0], "ctr", ip[1]);
    ping_across(&docker[1], "ctr", ip[0]);
    tcp_across(&docker[0], "ctr", srv[1], "pong-srv1");
    tcp_across(&docker[1], "ctr", srv[0], "pong-srv0");
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
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let mut docker = Vec::new();
    for i in 0..2 {
        let mut d = Dockerd::start(c.tb.host(i), &[]).unwrap();
        // `docker network create --subnet $FLANNEL_SUBNET flannel`, then the
        // seed sets the bridge's MTU to FLANNEL_MTU by hand.
        let net = d.create_network("flannel", &flannel_subnet(&c.agents[i]), &[]).unwrap();
        c.tb.host(i).run(&["ip", "link", "set", "dev", &net.bridge, "mtu", &c.pod_mtu.to_string()]).unwrap();
        d.run_container("ctr", Some("flannel")).unwrap();
        docker.push(d);
    }
    let srv: Vec<Ipv4Addr> =
        docker.iter_mut().enumerate().map(|(i, d)| tcp_server(d, &format!("srv{i}"), Some("flannel"))).collect();
    let ip: Vec<Ipv4Addr> = docker.iter().map(|d| d.container_ip("ctr", Some("flannel")).unwrap()).collect();
    ping_across(&docker[0], "ctr", ip[1]);
    ping_across(&docker[1], "ctr", ip[0]);
    tcp_across(&docker[0], "ctr", srv[1], "pong-srv1");
    tcp_across(&docker[1], "ctr", srv[0], "pong-srv0");
}

#[test]
fn dockerd_restarted_while_the_agent_runs() {
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let mut docker = Vec::new();
    for i in 0..2 {
        let opts = opts_from_env_file(&docker_opts(&c.agents[i], c.tb.dir(), &["-c"]), "DOCKER_OPTS").unwrap();
        let mut d = Dockerd::start(c.tb.host(i), &opts).unwrap();
        d.run_container("ctr", None).unwrap();
        docker.push(d);
    }
    docker[1].restart().unwrap();
    docker[1].docker(&["start", "ctr"]).unwrap();
    let ip: Vec<Ipv4Addr> = docker.iter().map(|d| d.container_ip("ctr", None).unwrap()).collect();
    ping_across(&docker[0], "ctr", ip[1]);
    ping_across(&docker[1], "ctr", ip[0]);
}

#[test]
fn agent_sigkilled_while_containers_talk_loses_nothing() {
    let mut c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let mut docker = Vec::new();
    for i in 0..2 {
        let opts = opts_from_env_file(&docker_opts(&c.agents[i], c.tb.dir(), &["-c"]), "DOCKER_OPTS").unwrap();
        let mut d = Dockerd::start(c.tb.host(i), &opts).unwrap();
        d.run_container("ctr", None).unwrap();
        docker.push(d);
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
    c.agents[0].kill();
    c.agents[0].restart(c.tb.host(0)).unwrap();
    c.agents[0].wait_ready_n(2, Duration::from_secs(30)).unwrap();
    let out = run.wait_with_output().unwrap();
    let stats = parse_ping(&String::from_utf8_lossy(&out.stdout)).expect("ping summary");
    assert_eq!(stats.lost(), 0, "{}", stats.text);
}

#[test]
fn cni_pods_on_two_agent_nodes_talk_and_cni0_is_remade() {
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let mut nodes: Vec<CniNode> = (0..2).map(|i| CniNode::new(c.tb.host(i), &c.agents[i].subnet_file).unwrap()).collect();
    let a = nodes[0].add_pod().unwrap();
    let b = nodes[1].add_pod().unwrap();
    for (from, to) in [(&a, b.ip), (&b, a.ip)] {
        poll_until(Duration::from_secs(15), &format!("{} -> {to}", from.name), || from.ping(to))
            .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", diagnose(c.tb.host(0)), diagnose(c.tb.host(1))));
    }
    // cni0 deleted while the agent runs: the plugin makes it again at the
    // next ADD, and that pod is reachable across nodes.
    c.tb.host(0).run(&["ip", "link", "del", "cni0"]).unwrap();
    let a2 = nodes[0].add_pod().unwrap();
    poll_until(Duration::from_secs(15), "new pod behind a re-made cni0 reachable", || b.ping(a2.ip))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diagnose(c.tb.host(0))));
    a2.ping(b.ip).unwrap();
    // DEL releases the address.
    nodes[0].del_pod(&a2).unwrap();
    assert!(nodes[0].allocated().unwrap().iter().all(|(ip, _)| *ip != a2.ip));
}
