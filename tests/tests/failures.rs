//! Things going wrong on a running cluster, with real agents on a real etcd:
//! the agent killed and restarted under traffic, etcd gone for 30 s, an etcd
//! member dying, a node rebooting, 20 nodes starting at once. Each test
//! checks what a user would: pod traffic, leases, the maps, the logs.
//! Needs root.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use ipnet::Ipv4Net;
use overlay_tests::{
    agent::{Agent, AgentOptions},
    etcd::EtcdCluster,
    flannel::VxlanLease,
    netns::{ensure_bpffs, Testbed},
    poll_until,
};
use overlay_tests::{cluster::*, netns::next, traffic::*};
use serde_json::Value;

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// The pinned attachments `overlay-agent inspect --json` reports:
/// pin name -> (link id, program id).
fn attachments(inspect: &Value) -> BTreeMap<String, (u64, u64)> {
    inspect["programs"]
        .as_array()
        .expect("programs in inspect output")
        .iter()
        .map(|p| {
            let pin = p["pin"].as_str().unwrap().to_string();
            let link = p["link_id"].as_u64().unwrap_or_else(|| panic!("{pin} not attached: {p}"));
            let prog = p["program_id"].as_u64().unwrap_or_else(|| panic!("{pin} not attached: {p}"));
            (pin, (link, prog))
        })
        .collect()
}

/// The attachments once they stop changing (the agent attaches to pod veths
/// on its 1 s endpoint sync).
fn settled_attachments(agent: &Agent) -> BTreeMap<String, (u64, u64)> {
    let start = Instant::now();
    let mut last = attachments(&agent.inspect().unwrap());
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(2500) {
        assert!(start.elapsed() < Duration::from_secs(20), "attachments keep changing: {last:?}");
        std::thread::sleep(Duration::from_millis(250));
        let now = attachments(&agent.inspect().unwrap());
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// `bpftool link show id N` as JSON.
fn bpftool_link(id: u64) -> Value {
    let out = Command::new("bpftool").args(["-j", "link", "show", "id", &id.to_string()]).output().unwrap();
    assert!(out.status.success(), "bpftool link show id {id}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A vxlan lease nobody runs, for checking that leases propagate.
fn phantom_lease(third_octet: u8) -> VxlanLease {
    VxlanLease {
        subnet: Ipv4Addr::new(10, 42, third_octet, 0),
        prefix_len: 24,
        public_ip: Ipv4Addr::new(192, 168, 77, 200 + third_octet % 50),
        vtep_mac: [0x0e, 0, 0, 0, 0xee, third_octet],
    }
}

fn net(l: &VxlanLease) -> Ipv4Net {
    Ipv4Net::new(l.subnet, l.prefix_len).unwrap()
}

#[test]
fn sigkilled_agent_restarts_without_losing_a_packet_and_adopts_its_links() {
    let mut c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let (a, b) = (c.pods[0][0].clone(), c.pods[1][0].clone());
    wait_ping(&a, b.ip());
    wait_ping(&b, a.ip());
    let before = settled_attachments(&c.agents[0]);
    let veth = format!("from_pods@{}", a.host_veth());
    let to_pod = format!("to_pods@{}", a.host_veth());
    for hook in ["from_pods@cni0", "from_host@overlay0", "from_tunnel@overlay0", "from_uplink@eth0", &veth, &to_pod] {
        assert!(before.contains_key(hook), "{hook} not attached: {before:?}");
    }

    // 100 packets a second each way for 5 s; the agent dies after 1 s.
    let count = 500;
    let there = PingRun::start(c.tb.dir(), &a, b.ip(), 0.01, count);
    let back = PingRun::start(c.tb.dir(), &b, a.ip(), 0.01, count);
    std::thread::sleep(Duration::from_secs(1));
    c.agents[0].kill();
    assert!(!c.agents[0].is_running());
    // While it is down the pinned data path keeps forwarding.
    let down = attachments(&c.agents[0].inspect().unwrap());
    assert_eq!(down, before, "the attachments outlive the agent");
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Instant::now();
    c.agents[0].restart(c.tb.host(0)).unwrap();
    c.agents[0].wait_ready_n(2, Duration::from_secs(30)).unwrap();
    eprintln!("restarted agent ready after {}", secs(restarted.elapsed()));
    assert!(there.is_running() && back.is_running(), "the restart must happen while the pings run: make them longer");
    let there = there.wait(Duration::from_secs(30));
    let back = back.wait(Duration::from_secs(30));
    for (what, s) in [("pod 0 -> pod 1", &there), ("pod 1 -> pod 0", &back)] {
        assert_eq!(s.transmitted, count as u64, "{what}");
        assert_eq!(
            s.lost(),
            0,
            "{what} lost packets across the agent restart:\n{}",
            s.text.lines().last().unwrap_or("")
        );
    }

    // The new agent adopted the pinned links: same links, new programs.
    let log = c.agents[0].log_text();
    let second_start = log.rfind("data path ready in").expect("data path log line");
    let line = log[second_start..].lines().next().unwrap();
    assert!(line.contains("attached: [])"), "nothing attached anew: {line}");
    for hook in [
        "from_pods on cni0 tc ingress",
        "from_host on overlay0 tc egress",
        "from_tunnel on overlay0 tc ingress",
        "from_uplink on eth0 tc ingress",
        &format!("to_pods on {} tc egress", a.host_veth()),
    ] {
        let adopted = &line[line.find("adopted: [").unwrap()..];
        assert!(adopted.contains(hook), "{hook} not adopted: {line}");
    }
    let after = settled_attachments(&c.agents[0]);
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    // The programs the killed agent had loaded: none may still run.
    let old_progs: HashSet<u64> = before.values().map(|(_, p)| *p).collect();
    let mut problems = Vec::new();
    for (pin, (link, prog)) in &after {
        let (old_link, old_prog) = before[pin];
        if *link != old_link {
            problems.push(format!("{pin}: link {old_link} was replaced by link {link} (re-created, not updated)"));
        }
        if *prog == old_prog || old_progs.contains(prog) {
            problems.push(format!("{pin}: link {link} still runs program {prog} of the killed agent"));
        }
        // The kernel agrees: bpftool sees the link running that program, and
        // the device's TCX hook has it attached.
        let l = bpftool_link(*link);
        assert_eq!(l["prog_id"].as_u64(), Some(*prog), "{pin}: {l}");
        let (program, iface) = pin.split_once('@').unwrap();
        let hook = if matches!(program, "from_host" | "to_pods") { TcAttachType::Egress } else { TcAttachType::Ingress };
        let attached: Vec<u64> = c
            .tb
            .host(0)
            .in_ns(|| {
                SchedClassifier::query_tcx(iface, hook).map(|(_, progs)| progs.iter().map(|p| p.id() as u64).collect())
            })
            .unwrap_or_else(|e| panic!("querying TCX on {iface}: {e}"));
        assert!(attached.contains(prog), "{pin}: program {prog} not on {iface}'s TCX hook ({attached:?})");
    }
    assert!(problems.is_empty(), "after the restart:\n{}\nbefore {before:?}\nafter {after:?}", problems.join("\n"));
    // And traffic still works in every direction.
    tcp_roundtrip(&a, &b, 1 << 20);
    tcp_roundtrip(&b, &a, 1 << 20);
}

#[test]
fn etcd_down_for_30_s_leaves_pod_traffic_alone_and_costs_no_cpu() {
    let mut c = Cluster::start_with(2, 0, 1, VXLAN_CONFIG);
    let (a, b) = (c.pods[0][0].clone(), c.pods[1][0].clone());
    wait_ping(&a, b.ip());
    wait_ping(&b, a.ip());

    // 50 packets a second each way for 40 s: across the whole outage and
    // the return of etcd.
    let count = 2000;
    let there = PingRun::start(c.tb.dir(), &a, b.ip(), 0.02, count);
    let back = PingRun::start(c.tb.dir(), &b, a.ip(), 0.02, count);
    std::thread::sleep(Duration::from_secs(1));

    let cpu_before: Vec<Duration> = (0..2).map(|i| c.agents[i].cpu_time().unwrap()).collect();
    let outage = Instant::now();
    c.etcd.stop();
    // A new node boots while etcd is down: it waits, then registers.
    std::thread::sleep(Duration::from_secs(2));
    let new = c.add_agent(2);
    std::thread::sleep(Duration::from_secs(1));
    let new_cpu_before = c.agents[new].cpu_time().unwrap();
    let new_since = Instant::now();
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));

    let wall = outage.elapsed();
    let mut report = format!("etcd down for {}\n", secs(wall));
    let mut fractions = Vec::new();
    for (i, before) in cpu_before.iter().enumerate() {
        let used = c.agents[i].cpu_time().expect("agent still running") - *before;
        report +=
            &format!("  agent {i}: {} CPU ({:.2} %)\n", secs(used), 100.0 * used.as_secs_f64() / wall.as_secs_f64());
        fractions.push((i, used.as_secs_f64() / wall.as_secs_f64()));
    }
    let new_wall = new_since.elapsed();
    let used = c.agents[new].cpu_time().expect("the new agent waits for etcd") - new_cpu_before;
    report += &format!(
        "  new agent (waiting to register): {} CPU over {} ({:.2} %)\n",
        secs(used),
        secs(new_wall),
        100.0 * used.as_secs_f64() / new_wall.as_secs_f64()
    );
    fractions.push((new, used.as_secs_f64() / new_wall.as_secs_f64()));
    assert!(c.agents[new].ready_count() == 0, "the new agent cannot be ready without etcd");

    c.etcd.restart().unwrap();
    let returned = Instant::now();
    let phantom = phantom_lease(200);
    c.etcd.put(&phantom.etcd_key(PREFIX), &phantom.etcd_value(1)).unwrap();
    let mut learnt = [None, None];
    while learnt.iter().any(Option::is_none) && returned.elapsed() < Duration::from_secs(15) {
        for (i, t) in learnt.iter_mut().enumerate() {
            if t.is_none() && c.peers(i).iter().any(|p| p.subnet == net(&phantom)) {
                *t = Some(returned.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    c.agents[new].wait_ready(Duration::from_secs(30)).unwrap();
    let new_ready = returned.elapsed();
    let new_subnet = c.subnet(new);
    let new_known = poll_until(Duration::from_secs(15), "the new node's lease in both maps", || {
        for i in 0..2 {
            anyhow::ensure!(c.peers(i).iter().any(|p| p.subnet == new_subnet), "agent {i} lacks {new_subnet}");
        }
        Ok(returned.elapsed())
    })
    .unwrap();
    report += &format!(
        "etcd back: a lease put then reached the agents after {learnt:?}; the node that booted during the \
         outage was ready after {} and in both maps after {}",
        secs(new_ready),
        secs(new_known)
    );
    eprintln!("{report}");

    for (i, f) in fractions {
        assert!(f < 0.05, "agent {i} used {:.1} % of a CPU while etcd was down\n{report}", f * 100.0);
    }
    for (i, t) in learnt.iter().enumerate() {
        let t = t.unwrap_or_else(|| panic!("agent {i} never learnt the lease put after the outage\n{report}"));
        assert!(t < Duration::from_secs(5), "agent {i} learnt the new lease {} after etcd returned\n{report}", secs(t));
    }
    assert!(
        new_known < Duration::from_secs(10),
        "the node that booted during the outage registered too late\n{report}"
    );

    assert!(there.is_running() && back.is_running(), "the pings must outlast the outage: make them longer");
    let pod = c.add_agent_pod(new, 2);
    wait_ping(&a, pod.ip());
    wait_ping(&pod, b.ip());

    let there = there.wait(Duration::from_secs(60));
    let back = back.wait(Duration::from_secs(60));
    for (what, s) in [("pod 0 -> pod 1", &there), ("pod 1 -> pod 0", &back)] {
        assert_eq!(s.transmitted, count as u64);
        assert_eq!(s.lost(), 0, "{what} lost packets while etcd was away: {}", s.text.lines().last().unwrap_or(""));
    }
    for i in 0..2 {
        assert!(c.agents[i].is_running(), "agent {i} exited during the outage");
        assert!(c.agents[i].log_lines_at("ERROR").is_empty(), "{:?}", c.agents[i].log_lines_at("ERROR"));
    }
}

/// `etcdctl put` through one endpoint only.
fn put_via(endpoint: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--command-timeout=3s", "put", "--", key, value])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    anyhow::ensure!(out.status.success(), "etcdctl put via {endpoint}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn agents_survive_the_loss_of_any_etcd_member() {
    ensure_bpffs().unwrap();
    // Declaration order is the reverse of drop order: agents go first.
    let tb = Testbed::new(3).unwrap();
    let mut etcd = EtcdCluster::start(3).unwrap();
    etcd.etcdctl(&["put", "--", &format!("{PREFIX}/config"), VXLAN_CONFIG]).unwrap();
    let endpoints = etcd.endpoints().join(",");
    let mut agents: Vec<Agent> = Vec::new();
    let start_agent = |h: usize| -> Agent {
        Agent::start_forwarded(
            tb.host(h),
            AgentOptions { etcd_endpoints: &endpoints, prefix: PREFIX, dir: tb.dir(), extra: vec![] },
        )
        .unwrap()
    };
    for h in 0..2 {
        let agent = start_agent(h);
        agents.push(agent);
    }
    for a in &agents {
        a.wait_ready(Duration::from_secs(30)).unwrap();
    }
    let pod = |h: usize, a: &Agent| {
        let (_, len, gw) = a.lease().unwrap();
        tb.host(h).add_pod("cni0", &format!("{}/{len}", next(gw, 1)), gw, 1450).unwrap()
    };
    let pods: Vec<_> = (0..2).map(|h| pod(h, &agents[h])).collect();
    wait_ping(&pods[0], pods[1].ip());
    wait_ping(&pods[1], pods[0].ip());
    let traffic = PingRun::start(tb.dir(), &pods[0], pods[1].ip(), 0.02, 300);

    // Each member dies in turn (so whichever one an agent's watch is on
    // dies at some point), with a lease put through a surviving member
    // meanwhile; the dead member then comes back.
    let mut late_pod = None;
    for victim in 0..3 {
        etcd.stop_member(victim);
        let killed = Instant::now();
        let phantom = phantom_lease(201 + victim as u8);
        let via = (victim + 1) % 3;
        // A put that reaches etcd while the survivors elect a new leader is
        // dropped (etcd answers "request timed out" after 7 s): retry with a
        // short timeout.
        let mut attempts = 0;
        while let Err(e) = put_via(&etcd.endpoints()[via], &phantom.etcd_key(PREFIX), &phantom.etcd_value(1)) {
            attempts += 1;
            assert!(attempts < 10, "{e}");
        }
        let put_done = Instant::now();
        let learnt = poll_until(
            Duration::from_secs(20),
            &format!("the lease put through member {via} in every agent's map"),
            || {
                for (i, a) in agents.iter().enumerate() {
                    let maps = overlay_agent::datapath::DatapathMaps::open_pinned(&a.pins())?;
                    anyhow::ensure!(maps.peers()?.iter().any(|p| p.subnet == net(&phantom)), "agent {i} lacks it");
                }
                Ok(killed.elapsed())
            },
        )
        .unwrap();
        eprintln!(
            "member {victim} killed; a lease put through member {via} (accepted {} after the kill, {attempts} \
             retries) was in every agent's map {} after the kill",
            secs(put_done - killed),
            secs(learnt)
        );
        assert!(learnt < Duration::from_secs(10), "too slow: {}", secs(learnt));

        if victim == 0 {
            // A node that starts now, with the dead member first in its list, joins too.
            let agent = start_agent(2);
            agents.push(agent);
            agents[2].wait_ready(Duration::from_secs(30)).unwrap();
            let p = pod(2, &agents[2]);
            wait_ping(&pods[0], p.ip());
            wait_ping(&p, pods[1].ip());
            assert!(traffic.is_running(), "the ping must outlast the member's death and the join: make it longer");
            late_pod = Some(p);
        }
        etcd.start_member(victim).unwrap();
    }
    let s = traffic.wait(Duration::from_secs(30));
    assert_eq!(s.lost(), 0, "pod traffic lost packets: {}", s.text.lines().last().unwrap_or(""));
    let late_pod = late_pod.unwrap();
    wait_ping(&late_pod, pods[0].ip());
    wait_ping(&pods[1], late_pod.ip());
    for (i, a) in agents.iter().enumerate() {
        assert!(a.is_running(), "agent {i} exited");
        assert!(a.log_lines_at("ERROR").is_empty(), "agent {i}: {:?}", a.log_lines_at("ERROR"));
    }
    drop(agents);
}

#[test]
fn a_rebooted_node_gets_its_subnet_and_vtep_mac_back() {
    let mut c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let (a, b) = (c.pods[0][0].clone(), c.pods[1][0].clone());
    wait_ping(&a, b.ip());
    wait_ping(&b, a.ip());
    let subnet = c.subnet(0);
    let mac = c.vtep_mac(0);
    let key = format!("{PREFIX}/subnets/{}-{}", subnet.network(), subnet.prefix_len());
    let value = c.etcd.get(&key).unwrap().expect("our lease");

    // Reboot: the process dies, and with it everything in memory, tmpfs and
    // bpffs: cni0, the pins (so the programs), the subnet file, iptables.
    // The etcd lease survives.
    let host = c.tb.host(0);
    c.agents[0].kill();
    host.run(&["ip", "link", "del", "cni0"]).unwrap();
    std::fs::remove_dir_all(&c.agents[0].pin_root).unwrap();
    std::fs::remove_file(&c.agents[0].subnet_file).unwrap();
    host.sh("iptables -t nat -F && iptables -t nat -X && iptables -F && iptables -X").unwrap();
    // The pod is gone too (its namespace stays with the testbed, unplugged).
    host.run(&["ip", "link", "del", a.host_veth()]).unwrap();

    c.agents[0].restart(host).unwrap();
    c.agents[0].wait_ready_n(2, Duration::from_secs(30)).unwrap();
    assert_eq!(c.subnet(0), subnet, "the same subnet after the reboot");
    assert_eq!(c.vtep_mac(0), mac, "the same VtepMAC after the reboot");
    assert_eq!(c.etcd.get(&key).unwrap().as_deref(), Some(value.as_str()), "the lease is unchanged");
    let log = c.agents[0].log_text();
    let line = log[log.rfind("data path ready in").unwrap()..].lines().next().unwrap();
    assert!(line.contains("adopted: [],"), "nothing pinned to adopt after a reboot: {line}");
    // The other node never had to change anything.
    let peer = c.peers(1).into_iter().find(|p| p.subnet == subnet).expect("node 1 still knows us");
    assert_eq!(peer.vtep_mac, mac);

    // The pod is started again (same address, fresh namespace), as after a
    // real reboot.
    let a = c.add_agent_pod(0, 2);
    wait_ping(&a, b.ip());
    wait_ping(&b, a.ip());
    tcp_roundtrip(&a, &b, 1 << 20);
    udp_echo_quick(&b, &a, 10);
}

#[test]
fn twenty_agents_starting_at_once_get_distinct_subnets() {
    let n = 20;
    let started = Instant::now();
    let c = Cluster::start_custom(n, 0, 0, VXLAN_CONFIG, Duration::from_secs(180), |_| {});
    eprintln!("{n} agents ready (and a pod each) after {}", secs(started.elapsed()));

    let subnets: Vec<Ipv4Net> = (0..n).map(|i| c.subnet(i)).collect();
    let distinct: HashSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), n, "subnets {subnets:?}");
    for (i, s) in subnets.iter().enumerate() {
        for t in &subnets[i + 1..] {
            assert!(!s.contains(t) && !t.contains(s), "{s} and {t} overlap");
        }
    }
    // etcd holds exactly those leases, each with its node's PublicIP.
    let leases = c.etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap();
    assert_eq!(leases.len(), n, "{leases:?}");
    for (i, s) in subnets.iter().enumerate() {
        let key = format!("{PREFIX}/subnets/{}-{}", s.network(), s.prefix_len());
        let (_, value) = leases.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("no {key}"));
        let v: Value = serde_json::from_str(value).unwrap();
        assert_eq!(v["PublicIP"].as_str(), Some(c.tb.host(i).ip().to_string().as_str()), "{key}: {value}");
    }
    // Every agent converges on the 19 others.
    let converged = Instant::now();
    for i in 0..n {
        poll_until(Duration::from_secs(60), &format!("agent {i} knowing every other node"), || {
            let got: HashSet<Ipv4Net> = c.peers(i).iter().map(|p| p.subnet).collect();
            let want: HashSet<Ipv4Net> = subnets.iter().copied().filter(|s| *s != subnets[i]).collect();
            anyhow::ensure!(got == want, "agent {i}: {} of {} peers", got.len(), want.len());
            Ok(())
        })
        .unwrap();
    }
    eprintln!("all maps complete {} after the last agent was ready", secs(converged.elapsed()));
    // No errors or warnings anywhere.
    for (i, a) in c.agents.iter().enumerate() {
        assert!(a.is_running(), "agent {i} exited");
        let bad: Vec<String> = a.log_lines_at("ERROR").into_iter().chain(a.log_lines_at("WARN")).collect();
        assert!(bad.is_empty(), "agent {i} logged:\n{}", bad.join("\n"));
    }
    // Node 0's pod reaches every other node's pod.
    let pods: Vec<_> = c.pods.iter().map(|p| p[0].clone()).collect();
    for p in &pods[1..] {
        wait_ping(&pods[0], p.ip());
    }
    wait_ping(&pods[n - 1], pods[0].ip());
}
