//! `--docker`: the seeds' walkthrough (shared/seeds 002, 003) with real
//! Docker on every node: etcd config, one overlay-agent per node,
//! `overlay-agent docker-opts -c` (mk-docker-opts.sh), `dockerd
//! $DOCKER_OPTS`, then busybox containers on different nodes pinging and
//! talking TCP. Nothing makes a bridge but dockerd: docker0 gets
//! FLANNEL_SUBNET's address from `--bip`, and the agent finds it by that
//! address. The teardown (scenario::teardown) removes the containers and
//! the daemons first.
use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use overlay_tests::docker::{opts_from_env_file, Dockerd, IMAGE};
use overlay_tests::etcd::Etcd;
use overlay_tests::netns::{ensure_bpffs, Testbed};

use crate::scenario::{self, node, World, NETWORK_CONFIG, PREFIX, READY_TIMEOUT, UNDERLAY};
use crate::ui::{self, block, bold, cmd, cyan, dim, green, info, red};
use crate::{signals, Options};

pub const STEPS: usize = 10;
const PORT: u16 = 7000;

pub fn run(w: &mut World, opts: &Options) -> Result<String> {
    let n = opts.nodes;
    ui::line(&format!(
        "{} {n} nodes in network namespaces, a real dockerd on each started from `overlay-agent docker-opts`, \
         busybox containers, a real etcd, and the real agent binary",
        bold("overlay-agent Docker demo:")
    ));
    ui::line(&dim(&format!("agent: {}", opts.agent.display())));
    ensure_bpffs()?;

    // 1. etcd
    ui::step(1, STEPS, "Starting etcd on loopback (temporary data directory)");
    let t = Instant::now();
    w.etcd = Some(Etcd::start()?);
    let etcd: &Etcd = w.etcd.as_ref().expect("just started");
    info(&format!("etcd at {} (pid {}), ready in {}", cyan(&etcd.endpoint()), etcd.pid().unwrap_or(0), ui::secs(t.elapsed())));
    info(&dim(&format!("data in {}", etcd.dir().display())));
    signals::check()?;

    // 2. network config
    ui::step(2, STEPS, "Writing the network config, as the seeds do for flanneld");
    cmd(&format!("etcdctl put {PREFIX}/config '{NETWORK_CONFIG}'"));
    etcd.put(&format!("{PREFIX}/config"), NETWORK_CONFIG)?;
    signals::check()?;

    // 3. nodes
    ui::step(3, STEPS, &format!("Creating {n} nodes: network namespaces on one underlay"));
    let tb = w.tb.insert(Testbed::with_underlay(0, UNDERLAY, 1500)?);
    for _ in 0..n {
        signals::check()?;
        tb.add_host()?;
    }
    let tb: &Testbed = w.tb.as_ref().expect("just made");
    for (i, h) in tb.hosts().iter().enumerate() {
        info(&format!("{}  eth0 {:<15}  namespace {}", bold(&node(i)), h.ip().to_string(), h.name()));
    }
    info(&dim(&format!("everything is named ov{}-*", tb.id())));

    // 4. agents
    ui::step(4, STEPS, "Starting one overlay-agent per node (no bridge yet: docker makes it)");
    scenario::start_agents(&mut w.agents, tb, etcd, n)?;
    let t = Instant::now();
    for (i, agent) in w.agents.iter().enumerate() {
        while agent.ready_count() == 0 {
            signals::nap(Duration::from_millis(25))?;
            if !agent.is_running() {
                bail!("the agent on {} exited before it was ready; its log:\n{}", node(i), agent.log_text());
            }
            if t.elapsed() > READY_TIMEOUT {
                bail!("the agent on {} is not ready after {READY_TIMEOUT:?}; its log:\n{}", node(i), agent.log_text());
            }
        }
        let (net, len, _) = agent.lease()?;
        info(&format!("{}  ready, leased {}", bold(&node(i)), green(&format!("{net}/{len}"))));
    }
    cmd(&format!("etcdctl get --prefix {PREFIX}/subnets/"));
    scenario::show_leases(etcd, tb)?;

    // 5. docker-opts
    ui::step(5, STEPS, "subnet.env, and overlay-agent docker-opts -c (what mk-docker-opts.sh makes of it)");
    let mut docker_opts = Vec::new();
    for (i, agent) in w.agents.iter().enumerate() {
        signals::check()?;
        let out = tb.dir().join(format!("{}-docker_opts.env", node(i)));
        info(&format!("{}  {}", bold(&node(i)), dim(&agent.subnet_file.display().to_string())));
        block(&fs::read_to_string(&agent.subnet_file)?, 10, false);
        cmd(&format!("overlay-agent docker-opts -f {} -d {} -c", agent.subnet_file.display(), out.display()));
        let mut c = tb.host(i).command(opts.agent.to_str().context("agent path is not UTF-8")?);
        c.arg("docker-opts").arg("-f").arg(&agent.subnet_file).arg("-d").arg(&out).arg("-c");
        let res = c.stdin(std::process::Stdio::null()).output().context("running overlay-agent docker-opts")?;
        if !res.status.success() {
            bail!("overlay-agent docker-opts failed ({}): {}", res.status, String::from_utf8_lossy(&res.stderr).trim());
        }
        block(&fs::read_to_string(&out)?, 10, false);
        docker_opts.push(opts_from_env_file(&out, "DOCKER_OPTS")?);
    }
    info(&dim("(a systemd unit does the same with EnvironmentFile=/run/docker_opts.env and ExecStart=/usr/bin/dockerd $DOCKER_OPTS)"));

    // 6. dockerd
    ui::step(6, STEPS, "Starting dockerd $DOCKER_OPTS on every node (its own state, socket and containerd)");
    for (i, o) in docker_opts.iter().enumerate() {
        signals::check()?;
        let t = Instant::now();
        let d = Dockerd::start(tb.host(i), o)?;
        cmd(&format!("dockerd {}", o.join(" ")));
        info(&dim(&format!("state in {}, API at {}, up in {}", d.dir().display(), d.host_uri(), ui::secs(t.elapsed()))));
        let addr = tb.host(i).run(&["ip", "-4", "-br", "addr", "show", "dev", "docker0"])?;
        info(&format!("{}  docker0 {}", bold(&node(i)), green(addr.split_whitespace().nth(2).unwrap_or("-"))));
        w.docker.push(d);
    }
    info(&dim(&format!("a busybox image `{IMAGE}` was imported into each (nothing is pulled)")));
    cmd("ip route   (on node0: docker0 for its own subnet, the agent's route for the cluster)");
    block(&tb.host(0).run(&["ip", "-4", "route"])?, 10, false);

    // 7. containers
    ui::step(7, STEPS, "Two busybox containers per node: a client, and a TCP server on port 7000");
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for (i, d) in w.docker.iter_mut().enumerate() {
        signals::check()?;
        d.run_container("client", None)?;
        let script = format!("while true; do echo hello from web on {} | nc -l -p {PORT}; done", node(i));
        d.run_container_with("web", &[], &["sh", "-c", &script])?;
        let (c, s) = (d.container_ip("client", None)?, d.container_ip("web", None)?);
        if i == 0 {
            cmd(&format!("docker run -d --init --name client {IMAGE} sleep 600"));
            cmd(&format!("docker run -d --init --name web {IMAGE} sh -c '{script}'"));
        }
        info(&format!("{}  client {}   web {}", bold(&node(i)), green(&c.to_string()), green(&s.to_string())));
        clients.push(c);
        servers.push(s);
    }

    // 8. pings
    ui::step(8, STEPS, "Pings between containers on different nodes (docker exec client ping -c 5 ...)");
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b))).collect();
    let mut lost = 0;
    for &(a, b) in &pairs {
        signals::check()?;
        let d = &w.docker[a];
        wait_answered(d, clients[b])?;
        let out = d.exec_output("client", &["ping", "-c", "5", "-i", "0.2", "-W", "2", &clients[b].to_string()])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (sent, got) = ping_summary(&text).ok_or_else(|| anyhow!("no ping summary in:\n{text}"))?;
        lost += sent - got;
        let rtt = text.lines().find_map(|l| l.split_once("min/avg/max = ").map(|x| x.1.to_string())).unwrap_or_default();
        let answered = format!("{got}/{sent}");
        info(&format!(
            "{}/client {} → {}/client {}   {}   rtt min/avg/max {}",
            node(a),
            clients[a],
            node(b),
            clients[b],
            if got == sent { green(&answered) } else { red(&answered) },
            bold(&rtt)
        ));
    }

    // 9. TCP
    ui::step(9, STEPS, "TCP between containers on different nodes (docker exec client nc <web> 7000)");
    for &(a, b) in &pairs {
        signals::check()?;
        let d = &w.docker[a];
        let got = d.exec("client", &["sh", "-c", &format!("nc -w 3 {} {PORT} </dev/null", servers[b])])?;
        let expect = format!("hello from web on {}", node(b));
        if got.trim() != expect {
            bail!("{}/client → {}/web {}:{PORT} got {:?}, not {expect:?}", node(a), node(b), servers[b], got.trim());
        }
        info(&format!("{}/client → {}/web {}:{PORT}   {}", node(a), node(b), servers[b], green(&format!("\"{}\"", got.trim()))));
    }

    // 10. counters
    ui::step(10, STEPS, "Packet counters per node: the containers' traffic went through the BPF programs");
    let counters = scenario::show_counters(w, opts, n)?;

    let keep_note = if opts.keep { keep_running(w, opts)? } else { String::new() };
    Ok(format!(
        "{n} nodes, {n} dockerd started from overlay-agent docker-opts, {} containers, {} pings across nodes ({lost} lost), \
         {} TCP exchanges, counters ({counters}){keep_note}",
        2 * n,
        5 * pairs.len(),
        pairs.len()
    ))
}

/// "5 packets transmitted, 5 packets received" (busybox ping).
fn ping_summary(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains(" packets transmitted, "))?;
    let mut words = line.split_whitespace();
    let sent = words.next()?.parse().ok()?;
    let got = line.split(", ").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some((sent, got))
}

/// The first packet can race the peer's lease reaching the node, and ARP:
/// wait until one ping is answered (up to 15 s) before measuring.
fn wait_answered(d: &Dockerd, to: Ipv4Addr) -> Result<()> {
    let t = Instant::now();
    loop {
        signals::check()?;
        if d.ping("client", to).is_ok() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(15) {
            let routes = d.netns().run(&["ip", "-4", "route"]).unwrap_or_default();
            bail!("client on {} cannot reach {to} after 15 s; the node's routes:\n{routes}", d.netns().name());
        }
    }
}

/// `--keep`: how to look around, then wait for Enter or a signal.
fn keep_running(w: &World, opts: &Options) -> Result<String> {
    let tb = w.tb.as_ref().ok_or_else(|| anyhow!("no testbed"))?;
    let d0 = &w.docker[0];
    ui::line("");
    ui::line(&bold("The nodes keep running. In another shell (as root):"));
    let show = |what: &str, c: String| {
        info(&dim(what));
        info(&format!("  {}", cyan(&c)));
    };
    let other = w.docker[1].container_ip("client", None).map(|ip| ip.to_string()).unwrap_or_default();
    show(
        &format!("{}'s client pings {}'s across the overlay:", node(0), node(1)),
        format!("docker -H {} exec client ping {other}", d0.host_uri()),
    );
    show(&format!("{}'s containers:", node(0)), format!("docker -H {} ps", d0.host_uri()));
    show(
        &format!("{}'s bridge and routes:", node(0)),
        format!("nsenter --net=/var/run/netns/{} sh -c 'ip -br addr; ip route'", tb.host(0).name()),
    );
    show(
        &format!("{}'s data path:", node(0)),
        format!("{} inspect --bpf-pin-dir={}", opts.agent.display(), w.agents[0].pin_root.display()),
    );
    show(&format!("{}'s dockerd log:", node(0)), format!("tail -f {}", d0.log_path().display()));
    ui::line("");
    scenario::wait_for_enter(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_ping_summary() {
        let text = "PING 10.42.1.2 (10.42.1.2): 56 data bytes\n\n--- 10.42.1.2 ping statistics ---\n\
                    5 packets transmitted, 4 packets received, 20% packet loss\nround-trip min/avg/max = 0.1/0.2/0.3 ms\n";
        assert_eq!(ping_summary(text), Some((5, 4)));
        assert_eq!(ping_summary("nothing"), None);
    }
}
