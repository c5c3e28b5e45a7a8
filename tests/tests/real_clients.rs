//! The harness for the real clients of subnet.env, on its own (no agent):
//! a real dockerd per node namespace (tests/src/docker.rs) and the real CNI
//! plugins invoked as a runtime does (tests/src/cni.rs). What later tests
//! rely on is checked here: dockerd takes `--bip`/`--mtu` from a
//! docker_opts.env, containers talk, a user network's `br-<id>` is found,
//! dockerd restarts; CNI ADD gives pods addresses from the lease with the
//! right MTU and routes, DEL releases them, the bridge plugin re-creates
//! cni0. After every test nothing of it is left: no dockerd, containerd or
//! shim of the test, no mount, no namespace, no directory.
//!
//! Needs root and the Debian packages docker.io, busybox-static and
//! containernetworking-plugins (`cargo xtask setup`).
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use overlay_agent::subnet_env::SubnetEnv;
use overlay_tests::{
    cni::CniNode,
    docker::{mounts_under, opts_from_env_file, processes_mentioning, Dockerd},
    netns::{Netns, Testbed},
};

/// What a test must leave behind: nothing. `dirs` are harness directories
/// (a dockerd's, a CNI node's), `tb_id` the dropped testbed's id.
fn assert_nothing_left(tb_id: &str, dirs: &[PathBuf]) {
    for dir in dirs {
        let d = dir.to_string_lossy();
        let procs: Vec<String> = processes_mentioning(&d)
            .iter()
            .map(|p| String::from_utf8_lossy(&fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default()).replace('\0', " "))
            .collect();
        assert!(procs.is_empty(), "processes of {d} still running: {procs:#?}");
        assert_eq!(mounts_under(dir), Vec::<PathBuf>::new(), "mounts left under {d}");
        assert!(!dir.exists(), "{d} still exists");
    }
    let prefix = format!("ov{tb_id}-");
    let left: Vec<String> = fs::read_dir("/var/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let left: Vec<&String> = left.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}

/// `ip -j addr show dev <dev>` in `ns`: (IPv4 addresses with prefix, MTU).
fn addrs_and_mtu(ns: &Netns, dev: &str) -> (Vec<String>, u64) {
    let out = ns.run(&["ip", "-j", "addr", "show", "dev", dev]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let link = &v[0];
    let addrs = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    (addrs, link["mtu"].as_u64().unwrap())
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX << (32 - len);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// mk-docker-opts.sh's output for flannel's own test vector (see
/// flannel-compat.md), written where the seeds put it.
fn write_docker_opts(dir: &Path) -> PathBuf {
    let path = dir.join("docker_opts.env");
    fs::write(
        &path,
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n",
    )
    .unwrap();
    path
}

#[test]
fn dockerd_takes_docker_opts_containers_talk_and_it_restarts() {
    let tb = Testbed::new(1).unwrap();
    let tb_id = tb.id().to_string();
    let host = tb.host(0);
    let opts = opts_from_env_file(&write_docker_opts(tb.dir()), "DOCKER_OPTS").unwrap();
    assert_eq!(opts, ["--bip=10.1.74.1/24", "--ip-masq=true", "--mtu=1472"]);

    let mut d = Dockerd::start(host, &opts).unwrap();
    let dir = d.dir().to_path_buf();
    assert_eq!(d.docker(&["info", "--format", "{{.Driver}}"]).unwrap().trim(), "overlay2", "storage driver");
    let (addrs, _) = addrs_and_mtu(host, "docker0");
    assert_eq!(addrs, ["10.1.74.1/24"], "docker0 gets --bip");
    // The daemon works in the node namespace only.
    let root_addrs = std::process::Command::new("ip").args(["-4", "-o", "addr"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&root_addrs.stdout).contains("10.1.74.1/"), "dockerd touched the root namespace");
    // --ip-masq=true: docker's MASQUERADE rule, in the node's own iptables.
    let nat = host.run(&["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]).unwrap();
    assert!(nat.contains("-A POSTROUTING -s 10.1.74.0/24 ! -o docker0 -j MASQUERADE"), "node nat table:\n{nat}");

    d.run_container("c1", None).unwrap();
    d.run_container("c2", None).unwrap();
    let ip1 = d.container_ip("c1", None).unwrap();
    let ip2 = d.container_ip("c2", None).unwrap();
    assert!(in_subnet(ip1, Ipv4Addr::new(10, 1, 74, 0), 24) && in_subnet(ip2, Ipv4Addr::new(10, 1, 74, 0), 24), "{ip1} {ip2}");
    let eth0 = d.exec("c1", &["cat", "/sys/class/net/eth0/mtu"]).unwrap();
    assert_eq!(eth0.trim(), "1472", "containers get --mtu");
    d.ping("c1", ip2).unwrap();
    d.ping("c2", ip1).unwrap();
    // The node reaches its containers through docker0.
    host.ping(ip1).unwrap();

    let before = d.pid().unwrap();
    d.restart().unwrap();
    assert_ne!(d.pid().unwrap(), before);
    assert_eq!(d.starts(), 2);
    let (addrs, _) = addrs_and_mtu(host, "docker0");
    assert_eq!(addrs, ["10.1.74.1/24"], "docker0 after the restart");
    d.docker(&["start", "c1", "c2"]).unwrap();
    let ip1 = d.container_ip("c1", None).unwrap();
    let ip2 = d.container_ip("c2", None).unwrap();
    d.ping("c1", ip2).unwrap();
    d.ping("c2", ip1).unwrap();

    drop(d);
    drop(tb);
    assert_nothing_left(&tb_id, &[dir]);
}

#[test]
fn docker_user_network_bridge_is_found() {
    let tb = Testbed::new(1).unwrap();
    let tb_id = tb.id().to_string();
    let host = tb.host(0);
    let mut d = Dockerd::start(host, &[]).unwrap();
    let dir = d.dir().to_path_buf();

    // Seed 000: `docker network create --subnet $FLANNEL_SUBNET flannel`.
    let net = d.create_network("flannel", "10.1.80.0/24", &[]).unwrap();
    assert_eq!(net.bridge, format!("br-{}", &net.id[..12]));
    assert!(net.bridge.len() <= 15, "an interface name");
    d.run_container("ca", Some("flannel")).unwrap();
    d.run_container("cb", Some("flannel")).unwrap();
    let (addrs, _) = addrs_and_mtu(host, &net.bridge);
    assert_eq!(addrs, ["10.1.80.1/24"], "{} has the network's gateway", net.bridge);
    // The seed then sets the bridge's MTU by hand.
    host.run(&["ip", "link", "set", &net.bridge, "mtu", "1450"]).unwrap();
    assert_eq!(addrs_and_mtu(host, &net.bridge).1, 1450);
    let a = d.container_ip("ca", Some("flannel")).unwrap();
    let b = d.container_ip("cb", Some("flannel")).unwrap();
    assert!(in_subnet(a, Ipv4Addr::new(10, 1, 80, 0), 24) && in_subnet(b, Ipv4Addr::new(10, 1, 80, 0), 24), "{a} {b}");
    d.ping("ca", b).unwrap();
    d.ping("cb", a).unwrap();
    // TCP too: busybox nc in one container, a client in the other.
    d.run_container_with("srv", &["--network", "flannel"], &["sh", "-c", "echo hello-from-srv | nc -l -p 7000"]).unwrap();
    let srv = d.container_ip("srv", Some("flannel")).unwrap();
    let got = overlay_tests::poll_until(std::time::Duration::from_secs(10), "nc server up", || {
        let out = d.exec("ca", &["sh", "-c", &format!("nc -w 2 {srv} 7000 </dev/null")])?;
        anyhow::ensure!(!out.trim().is_empty(), "empty reply");
        Ok(out)
    })
    .unwrap();
    assert_eq!(got.trim(), "hello-from-srv");
    // Found again by name (what a test does after a dockerd restart).
    assert_eq!(d.network("flannel").unwrap().bridge, net.bridge);

    drop(d);
    drop(tb);
    assert_nothing_left(&tb_id, &[dir]);
}

#[test]
fn dockerd_that_cannot_start_fails_with_its_log() {
    let tb = Testbed::new(1).unwrap();
    let tb_id = tb.id().to_string();
    let err = Dockerd::start(tb.host(0), &["--bip=not-an-address".to_string()]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("exited") && msg.contains("log tail"), "{msg}");
    assert!(msg.contains("not-an-address"), "the log names the problem: {msg}");
    drop(tb);
    assert_nothing_left(&tb_id, &[]);
}

/// A subnet.env as the agent writes it, in the testbed's directory.
fn write_subnet_env(dir: &Path, name: &str, lease: &str, ipmasq: bool) -> PathBuf {
    let path = dir.join(name);
    SubnetEnv::from_lease("10.1.0.0/16".parse().unwrap(), lease.parse().unwrap(), 1450, ipmasq).write_atomic(&path).unwrap();
    path
}

#[test]
fn cni_add_gives_pods_of_the_lease_and_del_releases() {
    let tb = Testbed::new(1).unwrap();
    let tb_id = tb.id().to_string();
    let host = tb.host(0);
    let env = write_subnet_env(tb.dir(), "subnet.env", "10.1.5.0/24", true);
    let mut node = CniNode::new(host, &env).unwrap();
    let node_dir = node.data_dir().parent().unwrap().to_path_buf();
    let conf = node.conf().unwrap();
    assert_eq!(conf["ipam"]["ranges"][0][0]["subnet"], "10.1.5.0/24", "FLANNEL_SUBNET as a network");
    assert_eq!(conf["ipam"]["routes"][0]["dst"], "10.1.0.0/16");
    assert_eq!(conf["mtu"], 1450);
    assert_eq!(conf["ipMasq"], false, "FLANNEL_IPMASQ=true: the agent masquerades, not the plugin");

    let p1 = node.add_pod().unwrap();
    let p2 = node.add_pod().unwrap();
    let gw = Ipv4Addr::new(10, 1, 5, 1);
    for p in [&p1, &p2] {
        assert!(in_subnet(p.ip, Ipv4Addr::new(10, 1, 5, 0), 24) && p.ip != gw, "{}", p.ip);
        assert_eq!((p.prefix_len, p.gateway), (24, gw));
        // (`ip`, not /sys/class/net: nsenter --net keeps the root's sysfs.)
        let link = p.run(&["ip", "-o", "link", "show", "eth0"]).unwrap();
        assert!(link.contains(" mtu 1450 "), "pod MTU is FLANNEL_MTU: {link}");
        let routes = p.run(&["ip", "-4", "route"]).unwrap();
        assert!(routes.contains("default via 10.1.5.1 dev eth0"), "routes of {}:\n{routes}", p.name);
        assert!(routes.contains("10.1.0.0/16 via 10.1.5.1 dev eth0"), "routes of {}:\n{routes}", p.name);
        let lo = p.run(&["ip", "-o", "link", "show", "lo"]).unwrap();
        assert!(lo.contains("UP"), "loopback plugin: {lo}");
    }
    assert_ne!(p1.ip, p2.ip);
    let (addrs, mtu) = addrs_and_mtu(host, "cni0");
    assert_eq!((addrs, mtu), (vec!["10.1.5.1/24".to_string()], 1450), "cni0 made by the bridge plugin");
    let nat = host.run(&["iptables", "-w", "-t", "nat", "-S"]).unwrap();
    assert!(!nat.contains("CNI-"), "ipMasq false: no CNI masquerade chain:\n{nat}");
    p1.ping(p2.ip).unwrap();
    p2.ping(p1.ip).unwrap();
    p1.ping(gw).unwrap();
    host.ping(p2.ip).unwrap();

    let allocated = node.allocated().unwrap();
    assert_eq!(allocated, {
        let mut v = vec![(p1.ip, p1.container_id.clone()), (p2.ip, p2.container_id.clone())];
        v.sort();
        v
    });
    node.del_pod(&p1).unwrap();
    assert_eq!(node.allocated().unwrap(), vec![(p2.ip, p2.container_id.clone())], "DEL releases the address");
    assert!(!p1.path().exists(), "pod namespace removed");
    // The bridge port of p1 is gone: only p2's veth is left on cni0.
    let ports = host.run(&["ip", "-o", "link", "show", "master", "cni0"]).unwrap();
    assert_eq!(ports.lines().count(), 1, "{ports}");
    // DEL twice is fine (runtimes retry).
    node.invoke("bridge", "DEL", &p1.container_id, &p1.path(), "eth0", &p1.conf).unwrap();

    drop(node);
    drop(tb);
    assert_nothing_left(&tb_id, &[node_dir]);
}

#[test]
fn cni_bridge_plugin_remakes_a_deleted_cni0_and_nodes_keep_their_own_allocations() {
    let tb = Testbed::new(2).unwrap();
    let tb_id = tb.id().to_string();
    let env0 = write_subnet_env(tb.dir(), "h0-subnet.env", "10.1.5.0/24", false);
    let env1 = write_subnet_env(tb.dir(), "h1-subnet.env", "10.1.6.0/24", false);
    let mut n0 = CniNode::new(tb.host(0), &env0).unwrap();
    let mut n1 = CniNode::new(tb.host(1), &env1).unwrap();
    let dirs = [n0.data_dir().parent().unwrap().to_path_buf(), n1.data_dir().parent().unwrap().to_path_buf()];
    assert_eq!(n0.conf().unwrap()["ipMasq"], true, "FLANNEL_IPMASQ=false: the plugin masquerades");

    let a = n0.add_pod().unwrap();
    let b = n1.add_pod().unwrap();
    assert!(in_subnet(a.ip, Ipv4Addr::new(10, 1, 5, 0), 24), "{}", a.ip);
    assert!(in_subnet(b.ip, Ipv4Addr::new(10, 1, 6, 0), 24), "{}", b.ip);
    assert_eq!(n0.allocated().unwrap().len(), 1);
    assert_eq!(n1.allocated().unwrap().len(), 1);
    let nat = tb.host(0).run(&["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]).unwrap();
    assert!(nat.contains("CNI-"), "ipMasq true: the bridge plugin's masquerade chain:\n{nat}");

    tb.host(0).run(&["ip", "link", "del", "cni0"]).unwrap();
    let c = n0.add_pod().unwrap();
    let (addrs, mtu) = addrs_and_mtu(tb.host(0), "cni0");
    assert_eq!((addrs, mtu), (vec!["10.1.5.1/24".to_string()], 1450), "cni0 made again by the bridge plugin");
    c.ping(c.gateway).unwrap();
    assert_eq!(n0.allocated().unwrap().len(), 2);
    n0.del_pod(&c).unwrap();
    n0.del_pod(&a).unwrap();
    assert!(n0.allocated().unwrap().is_empty());

    drop(n0);
    drop(n1);
    drop(tb);
    assert_nothing_left(&tb_id, &dirs);
}
