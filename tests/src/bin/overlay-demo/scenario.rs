//! The demo's steps, and the teardown that runs whatever happened.
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use overlay_tests::agent::{Agent, AgentOptions};
use overlay_tests::docker::{processes_mentioning, Dockerd};
use overlay_tests::etcd::Etcd;
use overlay_tests::netns::{ensure_bpffs, next, Netns, Pod, Testbed};
use overlay_tests::traffic::PingStats;
use serde_json::Value;

use crate::traffic;
use crate::ui::{self, block, bold, cmd, cyan, dim, green, info, red, yellow};
use crate::{signals, Options};

/// flanneld's default prefix: the demo uses flannel's own etcd layout.
pub const PREFIX: &str = "/coreos.com/network";
pub const NETWORK_CONFIG: &str = r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#;
pub const UNDERLAY: &str = "192.168.77.0/24";
const PODS_PER_NODE: usize = 2;
pub const STEPS: usize = 11;

/// How many steps the chosen demo has.
pub fn steps(opts: &Options) -> usize {
    if opts.docker {
        crate::docker_demo::STEPS
    } else {
        STEPS
    }
}
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the demo builds. Fields drop in declaration order: the agents
/// (killed, pins removed: programs detach, then their relays to etcd) first,
/// the namespaces (with every process left in them), and etcd last.
#[derive(Default)]
pub struct World {
    /// `--docker`: a dockerd per node, with its containers (stopped first).
    pub docker: Vec<Dockerd>,
    pub agents: Vec<Agent>,
    pods: Vec<Vec<Pod>>,
    pub tb: Option<Testbed>,
    pub etcd: Option<Etcd>,
}

pub fn node(i: usize) -> String {
    format!("node{i}")
}

fn pod_name(i: usize, j: usize) -> String {
    format!("node{i}/pod{j}")
}

pub fn run(w: &mut World, opts: &Options) -> Result<String> {
    let n = opts.nodes;
    ui::line(&format!(
        "{} {n} nodes in network namespaces, {PODS_PER_NODE} pods each, a real etcd, and the real agent binary",
        bold("overlay-agent demo:")
    ));
    ui::line(&dim(&format!("agent: {}", opts.agent.display())));
    ensure_bpffs()?;

    // 1. etcd
    ui::step(1, STEPS, "Starting etcd on loopback (temporary data directory)");
    let t = Instant::now();
    w.etcd = Some(Etcd::start()?);
    let etcd: &Etcd = w.etcd.as_ref().expect("just started");
    let version = Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.replace("etcd Version: ", "")))
        .unwrap_or_default();
    info(&format!(
        "etcd {version} at {} (pid {}), ready in {}",
        cyan(&etcd.endpoint()),
        etcd.pid().unwrap_or(0),
        ui::secs(t.elapsed())
    ));
    info(&dim(&format!("data in {}", etcd.dir().display())));
    signals::check()?;

    // 2. network config
    ui::step(2, STEPS, "Writing the network config, as for flanneld");
    cmd(&format!("etcdctl put {PREFIX}/config '{NETWORK_CONFIG}'"));
    etcd.put(&format!("{PREFIX}/config"), NETWORK_CONFIG)?;
    signals::check()?;

    // 3. nodes
    ui::step(3, STEPS, &format!("Creating {n} nodes: network namespaces on one underlay"));
    let t = Instant::now();
    let tb = w.tb.insert(Testbed::with_underlay(0, UNDERLAY, 1500)?);
    for _ in 0..n {
        signals::check()?;
        tb.add_host()?;
    }
    let tb: &Testbed = w.tb.as_ref().expect("just made");
    info(&format!("underlay {UNDERLAY}, MTU 1500: bridge br0 in namespace {}", tb.underlay().name()));
    for (i, h) in tb.hosts().iter().enumerate() {
        let branch = if i + 1 == n { "└─" } else { "├─" };
        info(&format!("  {branch} {}  eth0 {:<15}  namespace {}", bold(&node(i)), h.ip().to_string(), h.name()));
    }
    info(&dim(&format!("everything is named ov{}-*; created in {}", tb.id(), ui::secs(t.elapsed()))));

    // 4. agents
    ui::step(4, STEPS, "Starting one overlay-agent per node");
    start_agents(&mut w.agents, tb, etcd, n)?;
    let t = Instant::now();
    let mut ready = vec![None; n];
    while ready.iter().any(Option::is_none) {
        signals::check()?;
        for (i, agent) in w.agents.iter().enumerate() {
            if ready[i].is_some() {
                continue;
            }
            let log = agent.log_text();
            if log.lines().any(|l| l.ends_with("] ready") || l.ends_with(" ready")) {
                ready[i] = Some(t.elapsed());
                let (net, len, _) = agent.lease()?;
                info(&format!(
                    "{}  ready after {}, leased {}",
                    bold(&node(i)),
                    ui::secs(t.elapsed()),
                    green(&format!("{net}/{len}"))
                ));
            } else if !agent.is_running() {
                bail!("the agent on {} exited before it was ready; its log:\n{log}", node(i));
            } else if t.elapsed() > READY_TIMEOUT {
                bail!("the agent on {} is not ready after {READY_TIMEOUT:?}; its log:\n{log}", node(i));
            }
        }
        signals::nap(Duration::from_millis(25))?;
    }

    // 5. pods
    ui::step(5, STEPS, &format!("Adding {PODS_PER_NODE} pods per node behind cni0 (the bridge each agent set up)"));
    for i in 0..n {
        signals::check()?;
        let agent = &w.agents[i];
        let (_, len, gw) = agent.lease()?;
        let mtu = agent.flannel_mtu()?;
        let mut pods = Vec::new();
        for j in 0..PODS_PER_NODE {
            let ip = next(gw, 1 + j as u32);
            pods.push(tb.host(i).add_pod("cni0", &format!("{ip}/{len}"), gw, mtu)?);
        }
        let list: Vec<String> = pods.iter().enumerate().map(|(j, p)| format!("pod{j} {}", green(&p.ip().to_string()))).collect();
        info(&format!("{}  cni0 {gw}/{len}, MTU {mtu}:  {}", bold(&node(i)), list.join("   ")));
        w.pods.push(pods);
    }
    info(&dim(&format!("a pod is a namespace with eth0 on a veth into cni0, e.g. {}", w.pods[0][0].name())));

    // 6. leases
    ui::step(6, STEPS, "The leases in etcd (flannel's keys and values)");
    cmd(&format!("etcdctl get --prefix {PREFIX}/"));
    show_leases(etcd, tb)?;
    signals::check()?;

    // 7. subnet files
    ui::step(7, STEPS, "Each node's subnet file (what the flannel CNI plugin reads)");
    for (i, agent) in w.agents.iter().enumerate() {
        info(&format!("{}  {}", bold(&node(i)), dim(&agent.subnet_file.display().to_string())));
        let text = fs::read_to_string(&agent.subnet_file)?;
        block(&text, 10, false);
    }

    // 8. pings
    ui::step(8, STEPS, "Pings between pods on different nodes");
    let pings = ping_round(w, n)?;

    // 9. TCP
    ui::step(9, STEPS, "TCP between pods on different nodes (1 s each, every byte checked on arrival)");
    let mut rates = Vec::new();
    for (a, b) in transfer_pairs(n) {
        signals::check()?;
        let (from, to) = (&w.pods[a.0][a.1], &w.pods[b.0][b.1]);
        ui::part(&format!(
            "      {} {} → {} {}  ",
            pod_name(a.0, a.1),
            dim(&from.ip().to_string()),
            pod_name(b.0, b.1),
            dim(&to.ip().to_string())
        ));
        let x = traffic::tcp_transfer(from, to, to.ip(), Duration::from_secs(1))?;
        ui::line(&format!(
            "{} in {}  = {}  {}",
            ui::bytes(x.bytes),
            ui::secs(x.elapsed),
            bold(&format!("{:.2} Gbit/s", x.gbit_per_s())),
            green("intact")
        ));
        rates.push(x.gbit_per_s());
    }
    signals::check()?;

    // 10. node0's data path
    ui::step(10, STEPS, &format!("{}'s data path: the pinned SUBNETS map, and overlay-agent inspect", node(0)));
    let agent0 = &w.agents[0];
    let subnets = agent0.pin_dir().join("SUBNETS");
    cmd(&format!("bpftool map dump pinned {}", subnets.display()));
    let out = Command::new("bpftool").args(["map", "dump", "pinned"]).arg(&subnets).output().context("running bpftool")?;
    if out.status.success() {
        block(&join_closing_brackets(&String::from_utf8_lossy(&out.stdout)), 10, false);
        for l in decode_subnets(&subnets, tb) {
            info(&dim(&l));
        }
    } else {
        info(&yellow(&format!("bpftool failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let vxlan = tb.host(0).run(&["ip", "-d", "link", "show", "type", "vxlan"])?;
    cmd("ip -d link show type vxlan");
    if vxlan.trim().is_empty() {
        info(&dim("(nothing: no flannel.1, no VXLAN device at all; the BPF programs do the tunnelling)"));
    } else {
        block(&vxlan, 10, false);
    }
    signals::check()?;
    ui::line("");
    cmd(&format!("overlay-agent inspect --bpf-pin-dir={}", agent0.pin_root.display()));
    let inspect = inspect(&opts.agent, tb.host(0), &agent0.pin_root, false)?;
    block(&inspect, 10, false);
    signals::check()?;

    // 11. counters
    ui::step(11, STEPS, "Packet counters per node (every packet a BPF program sees counts under one reason)");
    let counters = show_counters(w, opts, n)?;

    let keep_note = if opts.keep { keep_running(w, opts)? } else { String::new() };

    let lost: u64 = pings.iter().map(PingStats::lost).sum();
    let avgs: Vec<f64> = pings.iter().filter_map(|p| p.rtt_ms.map(|r| r.1)).collect();
    let avg_rtt = avgs.iter().sum::<f64>() / avgs.len().max(1) as f64;
    let avg_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    Ok(format!(
        "{n} nodes with {} pods on etcd: {n} leases, {n} subnet files, {} pings across nodes \
         (avg RTT {avg_rtt:.3} ms, {lost} lost), {} TCP transfers (avg {avg_rate:.2} Gbit/s, intact), \
         node0's SUBNETS map and inspect, counters ({counters}){keep_note}",
        n * PODS_PER_NODE,
        pings.len(),
        rates.len(),
    ))
}

/// bpftool prints a short array's closing bracket on a line of its own:
/// put it back after the numbers.
fn join_closing_brackets(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines() {
        match lines.last_mut() {
            Some(prev) if l.trim_start().starts_with(']') && !prev.trim_end().ends_with('}') => prev.push_str(l.trim()),
            _ => lines.push(l.to_string()),
        }
    }
    lines.join("\n")
}

/// One line per SUBNETS entry, in words (from `bpftool -j`'s BTF-typed
/// "formatted" field).
fn decode_subnets(pin: &Path, tb: &Testbed) -> Vec<String> {
    let Ok(out) = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(pin).output() else { return vec![] };
    let Ok(entries) = serde_json::from_slice::<Vec<Value>>(&out.stdout) else { return vec![] };
    let bytes = |v: Option<&Value>| -> Vec<u8> {
        v.and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.as_u64().map(|b| b as u8)).collect()).unwrap_or_default()
    };
    let mut lines = Vec::new();
    for e in &entries {
        let Some(f) = e.get("formatted") else { continue };
        let net = bytes(f.pointer("/key/data"));
        let len = f.pointer("/key/prefix_len").and_then(Value::as_u64).unwrap_or(0);
        let ip = bytes(f.pointer("/value/public_ip"));
        let mac = bytes(f.pointer("/value/vtep_mac"));
        let (Ok(net), Ok(ip)) = (<[u8; 4]>::try_from(net), <[u8; 4]>::try_from(ip)) else { continue };
        let ip = Ipv4Addr::from(ip);
        let who = tb.hosts().iter().position(|h| h.ip() == ip).map(|i| format!(" ({})", node(i))).unwrap_or_default();
        let mode = match f.pointer("/value/mode").and_then(Value::as_u64) {
            Some(1) => "vxlan".to_string(),
            Some(2) => "direct".to_string(),
            m => format!("mode {m:?}"),
        };
        let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        lines.push(format!("= {}/{len} lives on {ip}{who}, VtepMAC {}, {mode}", Ipv4Addr::from(net), mac.join(":")));
    }
    lines
}

pub fn show_leases(etcd: &Etcd, tb: &Testbed) -> Result<()> {
    let out = etcd.etcdctl(&["get", "--prefix", "-w", "json", "--", &format!("{PREFIX}/")])?;
    let v: Value = serde_json::from_str(&out).context("parsing etcdctl's JSON")?;
    let b64 = |s: &str| -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    for kv in v.get("kvs").and_then(Value::as_array).into_iter().flatten() {
        let key = b64(kv.get("key").and_then(Value::as_str).unwrap_or(""));
        let value = b64(kv.get("value").and_then(Value::as_str).unwrap_or(""));
        let lease = kv.get("lease").and_then(Value::as_i64).unwrap_or(0);
        let mut note = String::new();
        if let Ok(parsed) = serde_json::from_str::<Value>(&value) {
            if let Some(ip) = parsed.get("PublicIP").and_then(Value::as_str) {
                if let Some(i) = tb.hosts().iter().position(|h| h.ip().to_string() == ip) {
                    note.push_str(&node(i));
                }
            }
        }
        if lease != 0 {
            let ttl = etcd.etcdctl(&["lease", "timetolive", &format!("{lease:x}")]).unwrap_or_default();
            // "lease 694d... granted with TTL(86400s), remaining(86399s)"
            let grab = |what: &str| ttl.split(what).nth(1).and_then(|s| s.split(')').next()).map(str::to_string);
            if let (Some(granted), Some(left)) = (grab("TTL("), grab("remaining(")) {
                if !note.is_empty() {
                    note.push_str(", ");
                }
                let granted = match granted.trim_end_matches('s').parse::<u64>() {
                    Ok(s) if s % 3600 == 0 => format!("{} h", s / 3600),
                    _ => granted,
                };
                note.push_str(&format!("etcd lease with TTL {granted}, {} left", left.replace('s', " s")));
            }
        }
        let note = if note.is_empty() { String::new() } else { format!("   {}", dim(&format!("({note})"))) };
        info(&format!("{}{note}", bold(&key)));
        info(&format!("    {value}"));
    }
    Ok(())
}

/// Pairs of (node, pod) on different nodes, around the ring both ways.
fn ping_pairs(n: usize) -> Vec<((usize, usize), (usize, usize))> {
    let mut pairs = Vec::new();
    for i in 0..n {
        pairs.push(((i, 0), ((i + 1) % n, 1)));
    }
    for i in 0..n {
        pairs.push(((i, 1), ((i + n - 1) % n, 0)));
    }
    pairs
}

fn transfer_pairs(n: usize) -> Vec<((usize, usize), (usize, usize))> {
    vec![((0, 0), (1, 1)), ((n - 1, 1), (0, 0))]
}

fn ping_round(w: &World, n: usize) -> Result<Vec<PingStats>> {
    // Who pings whom: pods around the ring both ways, then node0 itself to
    // a pod on the last node (the host's own path: cluster route, from_host).
    let mut rows: Vec<(String, Netns, String, Ipv4Addr)> = Vec::new();
    for ((a, i), (b, j)) in ping_pairs(n) {
        let (from, to) = (&w.pods[a][i], &w.pods[b][j]);
        rows.push((
            format!("{} {}", pod_name(a, i), from.ip()),
            from.ns().clone(),
            format!("{} {}", pod_name(b, j), to.ip()),
            to.ip(),
        ));
    }
    let tb = w.tb.as_ref().ok_or_else(|| anyhow!("no testbed"))?;
    let last = &w.pods[n - 1][1];
    rows.push((
        format!("{} itself {}", node(0), tb.host(0).ip()),
        tb.host(0).ns().clone(),
        format!("{} {}", pod_name(n - 1, 1), last.ip()),
        last.ip(),
    ));

    // The first packet of a flow can race the last lease reaching a node,
    // and ARP: make sure every path answers before measuring.
    ui::part(&format!("      {}", dim("checking every path answers ... ")));
    let t = Instant::now();
    for (_, from, _, dst) in &rows {
        traffic::wait_reachable(from, *dst, Duration::from_secs(10))?;
    }
    ui::line(&dim(&format!("yes ({})", ui::secs(t.elapsed()))));
    cmd("ping -q -c 10 -i 0.02 <to>   (in the sender's namespace)");

    let mut stats = Vec::new();
    let mut table_rows = Vec::new();
    for (from_name, from, to_name, dst) in &rows {
        signals::check()?;
        let s = traffic::ping(from, *dst, 10, "0.02")?;
        let rtt = s.rtt_ms.map(|(lo, avg, hi)| format!("{lo:.3} / {avg:.3} / {hi:.3} ms")).unwrap_or_else(|| "-".into());
        table_rows.push(vec![from_name.clone(), "→".into(), to_name.clone(), format!("{}/{}", s.received, s.transmitted), rtt]);
        stats.push(s);
    }
    ui::table(&["FROM", "", "TO", "ANSWERED", "RTT min / avg / max"], &table_rows, &[false, false, false, true, true], |r, c, cell| {
        match c {
            3 if stats[r].received == stats[r].transmitted => green(cell),
            3 => red(cell),
            4 => bold(cell),
            _ => cell.to_string(),
        }
    });
    Ok(stats)
}

/// `overlay-agent inspect` for the node whose pins live under `pin_root`,
/// run inside the node's namespace.
fn inspect(agent_bin: &Path, host: &Netns, pin_root: &Path, json: bool) -> Result<String> {
    let mut c = host.command(agent_bin.to_str().context("agent path is not UTF-8")?);
    c.arg("inspect").arg(format!("--bpf-pin-dir={}", pin_root.display()));
    if json {
        c.arg("--json");
    }
    let out = c.stdin(std::process::Stdio::null()).output().context("running overlay-agent inspect")?;
    if !out.status.success() {
        bail!("overlay-agent inspect failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The per-node table; returns a short note for the summary.
pub fn show_counters(w: &World, opts: &Options, n: usize) -> Result<String> {
    let tb = w.tb.as_ref().ok_or_else(|| anyhow!("no testbed"))?;
    const COLUMNS: [&str; 5] = ["encapsulated", "decap_to_pod", "decap_to_host", "passed_to_kernel", "passed_not_ours"];
    let mut rows = Vec::new();
    let mut drop_details = Vec::new();
    let mut total_drops = 0u64;
    let mut total_encap = 0u64;
    for i in 0..n {
        signals::check()?;
        let text = inspect(&opts.agent, tb.host(i), &w.agents[i].pin_root, true)?;
        let v: Value = serde_json::from_str(&text).context("parsing inspect --json")?;
        let counters = v.get("counters").and_then(Value::as_object).ok_or_else(|| anyhow!("no counters in inspect --json"))?;
        let packets = |name: &str| counters.get(name).and_then(|c| c.get("packets")).and_then(Value::as_u64).unwrap_or(0);
        let mut row = vec![node(i)];
        row.extend(COLUMNS.iter().map(|c| ui::thousands(packets(c))));
        let mut drops = 0;
        for (name, c) in counters {
            let p = c.get("packets").and_then(Value::as_u64).unwrap_or(0);
            if name.starts_with("drop_") && p > 0 {
                drops += p;
                drop_details.push(format!("{}: {name} {p}", node(i)));
            }
        }
        total_drops += drops;
        total_encap += packets("encapsulated");
        row.push(ui::thousands(drops));
        rows.push(row);
    }
    let mut header = vec!["NODE"];
    header.extend(COLUMNS);
    header.push("drops");
    ui::table(&header, &rows, &[false, true, true, true, true, true, true], |_, c, cell| match c {
        0 => bold(cell),
        6 if cell != "0" => red(cell),
        6 => green(cell),
        _ => cell.to_string(),
    });
    for d in &drop_details {
        info(&yellow(d));
    }
    for (name, what) in [
        ("encapsulated", "wrapped in VXLAN and sent to another node (from_pods, from_host)"),
        ("decap_to_pod", "unwrapped by from_uplink and put straight into the pod (bpf_redirect_peer)"),
        ("decap_to_host", "unwrapped, for the node itself"),
        ("passed_*", "left to the kernel: ARP, traffic that is not the overlay's"),
        ("drops", "every drop_* reason together: unknown senders, spoofed sources, bad VNI, ..."),
    ] {
        info(&dim(&format!("{name:<15} {what}")));
    }
    Ok(format!("{} packets encapsulated, {total_drops} dropped", ui::thousands(total_encap)))
}

/// `--keep`: print how to look around, then wait for Enter or a signal.
pub fn keep_running(w: &World, opts: &Options) -> Result<String> {
    let tb = w.tb.as_ref().ok_or_else(|| anyhow!("no testbed"))?;
    let etcd = w.etcd.as_ref().ok_or_else(|| anyhow!("no etcd"))?;
    let (p00, p11) = (&w.pods[0][0], &w.pods[1][1]);
    let agent0 = &w.agents[0];
    ui::line("");
    ui::line(&bold("The cluster keeps running. In another shell (as root):"));
    let show = |what: &str, c: String| {
        info(&dim(what));
        info(&format!("  {}", cyan(&c)));
    };
    show(
        &format!("{} pings {} across the overlay:", pod_name(0, 0), pod_name(1, 1)),
        format!("nsenter --net=/var/run/netns/{} ping {}", p00.name(), p11.ip()),
    );
    show(
        "watch the VXLAN packets on the underlay (port 8472):",
        format!("nsenter --net=/var/run/netns/{} tcpdump -ni {} udp port 8472", tb.underlay().name(), tb.underlay_port(0)),
    );
    show(
        &format!("{}'s routes and bridge (there is no flannel.1):", node(0)),
        format!("nsenter --net=/var/run/netns/{} sh -c 'ip route; ip -br link'", tb.host(0).name()),
    );
    show(
        &format!("{}'s data path as the kernel holds it:", node(0)),
        format!("{} inspect --bpf-pin-dir={}", opts.agent.display(), agent0.pin_root.display()),
    );
    show("its pinned maps:", format!("ls {}; bpftool map dump pinned {}/SUBNETS", agent0.pin_dir().display(), agent0.pin_dir().display()));
    show("the leases:", format!("ETCDCTL_API=3 etcdctl --endpoints={} get --prefix {PREFIX}/", etcd.endpoint()));
    show(&format!("{}'s agent log:", node(0)), format!("tail -f {}", agent0.log.display()));
    info(&dim(&format!("all namespaces: ip netns list | grep ov{}-", tb.id())));
    ui::line("");

    wait_for_enter(w)
}

/// `--keep`'s wait: until Enter or a signal, failing if an agent dies.
pub fn wait_for_enter(w: &World) -> Result<String> {
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false);
        let _ = tx.send(got);
    });
    ui::line(&bold("Press Enter (or Ctrl-C) to remove it all."));
    let started = Instant::now();
    loop {
        if let Some(sig) = signals::received() {
            return Ok(format!(", kept running {} until {}", ui::secs(started.elapsed()), signals::name(sig)));
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(true) => return Ok(format!(", kept running {}", ui::secs(started.elapsed()))),
            Ok(false) => {
                info(&yellow(&format!(
                    "stdin is closed: waiting for Ctrl-C or `kill {}` instead",
                    std::process::id()
                )));
            }
            Err(_) => {}
        }
        // Fail loudly if an agent dies while the user looks around.
        for (i, a) in w.agents.iter().enumerate() {
            if !a.is_running() {
                bail!("the agent on {} exited; its log:\n{}", node(i), a.log_text());
            }
        }
    }
}

/// Drops everything in order, checks nothing is left, and says so; false
/// if something is left behind.
pub fn teardown(w: World) -> bool {
    let t = Instant::now();
    let World { docker, agents, pods, tb, etcd } = w;
    if tb.is_none() && etcd.is_none() {
        return true;
    }
    ui::line("");
    ui::part(&dim("Cleaning up ... "));
    let n_agents = agents.len();
    let pin_roots: Vec<PathBuf> = agents.iter().map(|a| a.pin_root.clone()).collect();
    let ns_prefix = tb.as_ref().map(|t| format!("ov{}-", t.id()));
    let tb_dir = tb.as_ref().map(|t| t.dir().to_path_buf());
    let etcd_dir = etcd.as_ref().map(|e| e.dir().to_path_buf());
    let etcd_pid = etcd.as_ref().and_then(|e| e.pid());
    let namespaces = ns_prefix.as_deref().map(netns_with_prefix).unwrap_or_default().len();
    let n_docker = docker.len();
    let docker_dirs: Vec<PathBuf> = docker.iter().map(|d| d.dir().to_path_buf()).collect();

    // dockerd before the agents and namespaces: its Drop removes the
    // containers, stops it, and unmounts and deletes its state.
    drop(docker);
    drop(agents);
    drop(pods);
    drop(tb);
    drop(etcd);

    let mut left = Vec::new();
    if let Some(p) = &ns_prefix {
        let ns = netns_with_prefix(p);
        if !ns.is_empty() {
            left.push(format!("namespaces {}", ns.join(" ")));
        }
    }
    for p in pin_roots.iter().filter(|p| p.exists()) {
        left.push(format!("pins {}", p.display()));
    }
    for d in [&tb_dir, &etcd_dir].into_iter().flatten().chain(&docker_dirs).filter(|d| d.exists()) {
        left.push(format!("folder {}", d.display()));
    }
    for d in &docker_dirs {
        if !processes_mentioning(&d.to_string_lossy()).is_empty() {
            left.push(format!("processes of the dockerd in {}", d.display()));
        }
    }
    if let (Some(pid), Some(dir)) = (etcd_pid, &etcd_dir) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
            left.push(format!("etcd (pid {pid})"));
        }
    }
    let dockers = if n_docker > 0 { format!("{n_docker} dockerd with their containers, ") } else { String::new() };
    let what = format!(
        "removed {dockers}{n_agents} agents with their pins, {namespaces} namespaces, {}the temporary files in {}",
        if etcd_pid.is_some() { "etcd, " } else { "" },
        ui::secs(t.elapsed())
    );
    if left.is_empty() {
        ui::line(&format!("{what}: {}", green("nothing left behind")));
        true
    } else {
        ui::line(&format!("{what}, {}", red(&format!("but left behind: {}", left.join(", ")))));
        false
    }
}

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/var/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| n.starts_with(prefix));
    v.sort();
    v
}

/// One agent per node, each with its own relay to etcd; shows the first
/// one's command line (the others are alike).
pub fn start_agents(agents: &mut Vec<Agent>, tb: &Testbed, etcd: &Etcd, n: usize) -> Result<()> {
    for i in 0..n {
        signals::check()?;
        let host = tb.host(i);
        let agent = Agent::start_forwarded(
            host,
            AgentOptions { etcd_endpoints: &etcd.endpoint(), prefix: PREFIX, dir: tb.dir(), extra: vec![] },
        )?;
        if i == 0 {
            cmd(&format!(
                "overlay-agent --etcd-endpoints={} --etcd-prefix={PREFIX} --iface=eth0 --subnet-file={} --bpf-pin-dir={}",
                agent.etcd_endpoints(),
                agent.subnet_file.display(),
                agent.pin_root.display()
            ));
            info(&dim(&format!(
                "(in {}'s namespace; the others alike. etcd is reached through a relay from the node's loopback to the root namespace's)",
                node(0)
            )));
        }
        agents.push(agent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ping_and_transfer_crosses_nodes() {
        for n in 2..=8 {
            for ((a, i), (b, j)) in ping_pairs(n).into_iter().chain(transfer_pairs(n)) {
                assert_ne!(a, b, "n={n}");
                assert!(a < n && b < n && i < PODS_PER_NODE && j < PODS_PER_NODE);
            }
        }
        assert_eq!(ping_pairs(3).len(), 6);
    }
}
