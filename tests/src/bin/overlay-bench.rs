//! `overlay-bench`: what `cargo xtask bench` runs (as root). Data path: the
//! same two-node netns topology in each mode (host-gw, flannel.1, the agent,
//! the agent with DirectRouting; flannel.1 without outer UDP checksum on
//! request) on a NIC-like cable, a plain veth cable or a bridge underlay,
//! measurements interleaved across modes and repeated; control plane: the
//! agent against a real etcd with N leases.
//! Writes target/bench/bench.json and target/bench/bench.png.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

use overlay_tests::bench::{
    check_interrupted, control,
    datapath::{Mode, TcpResult, Topology, Underlay},
    report::{self, ModeSummary},
    sockets::{FloodResult, PingPongResult, Wait},
    stats::Summary,
};
use overlay_tests::etcd::Etcd;

#[derive(Parser, Debug)]
#[command(name = "overlay-bench", about = "Data path and control plane benchmark (root)")]
struct Args {
    /// The overlay-agent binary to run (a release build).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// One repetition, short runs, 100-lease control plane: a smoke run.
    #[arg(long)]
    quick: bool,
    /// The control plane only (the same as --no-datapath).
    #[arg(long, conflicts_with = "no_control")]
    control_only: bool,
    /// Data path modes, comma separated: host-gw, flannel, overlay, overlay-dr,
    /// and, not in the default set, flannel-nocsum (flannel.1 with
    /// `noudpcsum`, outer UDP checksum 0 like ours), overlay-xdp (overlay
    /// with `--xdp-decap`, native XDP) and overlay-xdp-generic; and the
    /// IPv6 set (IPv6 pods over an IPv6 underlay): host-gw6, flannel6
    /// (kernel flannel-v6.1), overlay6 (the agent, dual stack).
    #[arg(long, value_delimiter = ',', default_value = "host-gw,flannel,overlay,overlay-dr")]
    modes: Vec<String>,
    /// How the two nodes' eth0 are connected: `nic`, one veth pair made
    /// NIC-like (`ethtool -K <end> tso off gso off gro on` on both ends:
    /// MTU-sized frames on the wire, GRO on receive; needs ethtool);
    /// `cable`, the same veth pair as veth is (64 KB GSO super-packets cross
    /// it whole, which flatters encapsulation); `bridge`, veths on a Linux
    /// bridge in an underlay namespace (a switch whose forwarding runs on
    /// the sending node's CPU: the topology of the runs before the cable).
    #[arg(long, default_value = "nic", value_parser = ["nic", "cable", "bridge"])]
    underlay: String,
    /// Repetitions of every data path measurement.
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per iperf3 TCP run.
    #[arg(long)]
    tcp_secs: Option<u32>,
    /// Seconds per UDP flood.
    #[arg(long)]
    udp_secs: Option<f64>,
    /// Request/response round trips per latency run.
    #[arg(long)]
    round_trips: Option<usize>,
    /// Peer lease counts for the control plane runs, comma separated, at
    /// most 65534 (the full 10.0.0.0/8 of /24s next to the agent's own;
    /// default 1000,10000,65534).
    #[arg(long, value_delimiter = ',')]
    leases: Option<Vec<usize>>,
    /// New leases in the change -> map stream.
    #[arg(long)]
    changes: Option<usize>,
    /// Milliseconds between two changes of the stream.
    #[arg(long, default_value_t = 5.0)]
    change_interval_ms: f64,
    /// Skip the data path part.
    #[arg(long, alias = "no-data-path")]
    no_datapath: bool,
    /// Skip the control plane part.
    #[arg(long)]
    no_control: bool,
    /// Before each data path measurement, wait up to this many seconds for
    /// no compiler (rustc, rust-lld, cc) to be running on the machine: the
    /// paths differ by microseconds per packet, and a concurrent build
    /// takes a whole core (default: 30, 0 with --quick).
    #[arg(long)]
    wait_quiet: Option<f64>,
    /// Experiment: set gso_max_size/gso_ipv4_max_size of the pods' eth0 in
    /// the agent modes (e.g. 65486 = 64 KiB - 50, so an encapsulated
    /// super-packet still fits the uplink's 64 KiB GSO limit).
    #[arg(long, hide = true)]
    pod_gso_max_size: Option<u32>,
    /// Where bench.json and bench.png go (default: <workspace>/target/bench).
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Plan {
    modes: Vec<Mode>,
    underlay: Underlay,
    reps: usize,
    tcp_secs: u32,
    udp_secs: f64,
    round_trips: usize,
    leases: Vec<usize>,
    changes: usize,
    wait_quiet: Duration,
    pod_gso_max_size: Option<u32>,
}

impl Plan {
    fn from(args: &Args) -> Result<Plan> {
        let modes = args.modes.iter().map(|m| Mode::parse(m.trim())).collect::<Result<Vec<_>>>()?;
        let q = args.quick;
        Ok(Plan {
            modes,
            underlay: Underlay::parse(&args.underlay)?,
            reps: args.reps.unwrap_or(if q { 1 } else { 3 }).max(1),
            tcp_secs: args.tcp_secs.unwrap_or(if q { 1 } else { 5 }).max(1),
            udp_secs: args.udp_secs.unwrap_or(if q { 0.5 } else { 3.0 }),
            round_trips: args.round_trips.unwrap_or(if q { 1000 } else { 20_000 }),
            leases: args.leases.clone().unwrap_or(if q { vec![100] } else { vec![1000, 10_000, control::FULL_NETWORK_PEERS] }),
            changes: args.changes.unwrap_or(if q { 50 } else { 1000 }),
            pod_gso_max_size: args.pod_gso_max_size,
            wait_quiet: Duration::from_secs_f64(args.wait_quiet.unwrap_or(if q { 0.0 } else { 30.0 }).max(0.0)),
        })
    }
}

#[derive(Default)]
struct Samples {
    tcp1: Vec<TcpResult>,
    tcp8: Vec<TcpResult>,
    udp: Vec<FloodResult>,
    /// Request/response, blocking sockets.
    rr: Vec<PingPongResult>,
    /// Request/response, spinning sockets.
    rr_spin: Vec<PingPongResult>,
}

impl Samples {
    fn rr(&mut self, wait: Wait) -> &mut Vec<PingPongResult> {
        match wait {
            Wait::Blocking => &mut self.rr,
            Wait::Spinning => &mut self.rr_spin,
        }
    }
}

fn main() {
    env_logger_init();
    overlay_tests::bench::install_interrupt_handler();
    let mut args = Args::parse();
    args.no_datapath |= args.control_only;
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("\noverlay-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn env_logger_init() {
    // The harness logs nothing we need; keep stderr for our own messages.
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn machine_info() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(f64::NAN);
    let iperf = std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "iperf3": iperf,
    })
}

/// Background load at a moment: compilers running and the load average.
#[derive(Default)]
struct Background {
    rustc: Vec<usize>,
    load: Vec<f64>,
    waited_s: f64,
    not_quiet: usize,
}

fn compilers() -> usize {
    ["rustc", "rust-lld", "cc", "cc1", "ld"].iter().map(|n| overlay_tests::bench::count_processes(n)).sum()
}

impl Background {
    fn sample(&mut self) {
        self.rustc.push(overlay_tests::bench::count_processes("rustc"));
        self.load.push(overlay_tests::bench::loadavg());
    }

    /// Waits (bounded by `max`) until no compiler runs, then samples.
    fn wait_quiet_and_sample(&mut self, max: Duration) -> Result<()> {
        let t = Instant::now();
        while compilers() > 0 && t.elapsed() < max {
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(250));
        }
        if !max.is_zero() {
            self.waited_s += t.elapsed().as_secs_f64();
            if compilers() > 0 {
                self.not_quiet += 1;
            }
        }
        self.sample();
        Ok(())
    }

    fn json(&self) -> serde_json::Value {
        let rustc: Vec<f64> = self.rustc.iter().map(|&x| x as f64).collect();
        json!({
            "rustc_processes": Summary::of(&rustc),
            "loadavg_1min": Summary::of(&self.load),
            "waited_for_quiet_s": self.waited_s,
            "measurements_started_with_a_compiler_running": self.not_quiet,
        })
    }

    fn describe(&self) -> String {
        if self.rustc.is_empty() {
            return "not sampled".into();
        }
        let busy = self.rustc.iter().filter(|&&c| c > 0).count();
        let max = self.rustc.iter().max().copied().unwrap_or(0);
        let load = Summary::of(&self.load);
        format!(
            "rustc running at the start of {busy} of {} measurements (at most {max} at once); waited {:.0} s in all for \
             compilers to finish ({} measurement(s) started with one still running); 1-min load average {:.2} ({:.2}–{:.2})",
            self.rustc.len(),
            self.waited_s,
            self.not_quiet,
            load.median,
            load.min,
            load.max
        )
    }
}

fn run(args: &Args) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("overlay-bench needs root (network namespaces, BPF)");
    }
    if let Some(agent) = &args.agent {
        let agent = agent.canonicalize().with_context(|| format!("--agent {}", agent.display()))?;
        // Read by the harness's Agent; set before any thread starts.
        std::env::set_var("OVERLAY_AGENT_BIN", &agent);
    }
    let plan = Plan::from(args)?;
    if !args.no_datapath && !plan.modes.is_empty() {
        plan.underlay.check_tools()?;
    }
    let out_dir = args.out.clone().unwrap_or_else(|| workspace_root().join("target").join("bench"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let json_path = out_dir.join("bench.json");
    let png_path = out_dir.join("bench.png");
    let started = Instant::now();
    let started_at = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let git = std::process::Command::new("git")
        .args(["-C", &workspace_root().to_string_lossy(), "rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let agent_bin = std::env::var("OVERLAY_AGENT_BIN").unwrap_or_else(|_| "(harness default)".into());

    println!(
        "overlay-bench: {} | underlay {} | agent {agent_bin} | commit {git}",
        if args.quick { "quick run" } else { "full run" },
        plan.underlay.label()
    );
    let needs_etcd = (!args.no_datapath && plan.modes.iter().any(|m| m.is_agent()))
        || !args.no_control;
    let etcd = if needs_etcd { Some(Etcd::start().context("starting etcd")?) } else { None };

    let mut background = Background::default();
    let mut report = json!({
        "started_at": started_at,
        "commit": git,
        "agent": agent_bin,
        "quick": args.quick,
        "machine": machine_info(),
        "underlay": plan.underlay.name(),
        "underlay_description": plan.underlay.describe(),
        "underlay_ethtool_k": plan.underlay.offloads().iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "plan": {
            "modes": plan.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "underlay": plan.underlay.name(),
            "repetitions": plan.reps,
            "tcp_seconds": plan.tcp_secs,
            "udp_seconds": plan.udp_secs,
            "udp_payload_bytes": 64,
            "round_trips": plan.round_trips,
            "warmup_round_trips": overlay_tests::bench::datapath::warmup_round_trips(plan.round_trips),
            "request_response_waits": Wait::ALL.iter().map(|w| w.name()).collect::<Vec<_>>(),
            "leases": plan.leases,
            "changes": plan.changes,
            "change_interval_ms": args.change_interval_ms,
            "wait_quiet_s": plan.wait_quiet.as_secs_f64(),
        },
    });

    let mut summaries: Vec<ModeSummary> = Vec::new();
    if !args.no_datapath && !plan.modes.is_empty() {
        summaries = datapath(&plan, etcd.as_ref(), &mut background, &mut report)?;
        println!(
            "\n## Data path (pod on node 0 -> pod on node 1, {} underlay; outer UDP checksum: {}; median (min–max) of {} repetition(s))\n",
            plan.underlay.label(),
            outer_csum_note(&report["datapath"]["outer_udp_checksum"]),
            plan.reps
        );
        println!("{}", report::datapath_table(&summaries));
        let ratios = report::ratio_table(&summaries);
        if !ratios.is_empty() {
            println!(
                "Ratios: of the medians, and (paired) the median and range of the ratios within each repetition:\n\n{ratios}"
            );
        }
        report["background"] = background.json();
        write_json(&json_path, &report)?;
        let subtitle = format!(
            "2 nodes, {} underlay (MTU 1500), pods behind cni0; {} rep(s), {} s TCP, {} s UDP, {} round trips | {} | {}",
            plan.underlay.label(),
            plan.reps,
            plan.tcp_secs,
            plan.udp_secs,
            plan.round_trips,
            report["machine"]["kernel"].as_str().unwrap_or(""),
            started_at
        );
        match report::chart(&png_path, "overlay-agent data path vs host-gw and flannel.1", &subtitle, &summaries) {
            Ok(()) => println!("chart: {}", png_path.display()),
            Err(e) => eprintln!("warning: no chart: {e:#}"),
        }
    }

    let mut control_results = Vec::new();
    if !args.no_control {
        let etcd = etcd.as_ref().expect("started");
        let opts = control::ControlOptions {
            changes: plan.changes,
            change_interval: Duration::from_secs_f64(args.change_interval_ms / 1e3),
        };
        println!("\n## Control plane (real etcd, one agent)\n");
        for &n in &plan.leases {
            check_interrupted()?;
            background.sample();
            print!("  {n} leases ... ");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let r = control::run(etcd, n, &opts).with_context(|| format!("control plane with {n} leases"))?;
            println!(
                "all in maps {:.3} s (ready {:.3} s), change->map p50 {:.1} ms p99 {:.1} ms, {:.4} requests/lease, RSS {:.1} MB",
                r.all_in_maps_s, r.ready_s, r.change_to_map_p50_ms, r.change_to_map_p99_ms, r.start_requests_per_lease, r.rss_mb
            );
            control_results.push(r);
            report["control"] = serde_json::to_value(&control_results)?;
            write_json(&json_path, &report)?;
        }
        println!("\n{}", control_table(&control_results));
    }

    let goals = goals(&summaries, &control_results, plan.underlay);
    if !goals.is_empty() {
        // Without the data path only the control plane goals (issue 17) apply.
        let set = if summaries.is_empty() { "issue 17, control plane at scale" } else { goal_set(plan.underlay) };
        println!("## Goals ({set})\n\n{}", goals_table(&goals));
        report["goal_set"] = json!(set);
        report["goals"] = serde_json::to_value(
            goals.iter().map(|g| json!({"goal": g.0, "measured": g.1, "met": g.2})).collect::<Vec<_>>(),
        )?;
    }
    report["background"] = background.json();
    report["duration_s"] = json!(started.elapsed().as_secs_f64());
    write_json(&json_path, &report)?;
    println!("background: {}", background.describe());
    println!("results: {}", json_path.display());
    drop(etcd);
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(v)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn datapath(plan: &Plan, etcd: Option<&Etcd>, background: &mut Background, report: &mut serde_json::Value) -> Result<Vec<ModeSummary>> {
    println!("\n## Building {} topologies ({} underlay: {})", plan.modes.len(), plan.underlay.name(), plan.underlay.describe());
    let mut topos: Vec<Topology> = Vec::new();
    for &mode in &plan.modes {
        check_interrupted()?;
        let t = Instant::now();
        let topo = Topology::build(mode, plan.underlay, etcd).with_context(|| format!("building the {} topology", mode.name()))?;
        if let (Some(size), true) = (plan.pod_gso_max_size, mode.is_agent()) {
            topo.set_pod_gso_max_size(size)?;
            println!("  {:<10} pods' eth0: gso_max_size {size} (experiment)", mode.name());
        }
        println!(
            "  {:<10} {} -> {} (pod MTU {}), ready in {:.1} s: {}",
            mode.name(),
            topo.client_ip,
            topo.server_ip,
            topo.pod_mtu,
            t.elapsed().as_secs_f64(),
            mode.describe()
        );
        topos.push(topo);
    }
    // What the cable's ends and each mode's encapsulation really are, read
    // back from the kernel (the topologies are alike: the first one's cable
    // stands for all).
    let mut outer_csum = serde_json::Map::new();
    for topo in &topos {
        if let Some(on) = topo.outer_udp_csum()? {
            outer_csum.insert(topo.mode.name().into(), json!(on));
        }
    }
    let offloads = match topos.first() {
        Some(t) => t.underlay_offloads()?,
        None => json!({}),
    };
    println!(
        "  cable ends (ethtool -k): {}; outer UDP checksum: {}",
        offloads_note(&offloads),
        outer_csum_note(&serde_json::Value::Object(outer_csum.clone()))
    );
    report["underlay_offloads"] = offloads;
    let mut samples: Vec<Samples> = plan.modes.iter().map(|_| Samples::default()).collect();
    // The floor: the same sockets and traffic within one pod over loopback
    // (no data path at all): what every mode pays on top of its path.
    let mut floor = Samples::default();
    let n = topos.len();
    for rep in 0..plan.reps {
        println!("\n## Repetition {}/{}", rep + 1, plan.reps);
        // Each test kind runs on every mode back to back (same background),
        // starting from a different mode each repetition.
        let order: Vec<usize> = (0..n).map(|k| (k + rep) % n).collect();
        for kind in ["tcp1", "tcp8", "udp", "rr", "rr_spin"] {
            for &i in &order {
                check_interrupted()?;
                background.wait_quiet_and_sample(plan.wait_quiet)?;
                let topo = &mut topos[i];
                let name = topo.mode.name();
                match kind {
                    "tcp1" => {
                        let r = topo.tcp(plan.tcp_secs, 1)?;
                        println!("  {name:<10} TCP x1  {:>6.2} Gbit/s  {:>5} retr  {:.0} CPU-ms/Gbit", r.gbps, r.retransmits, r.cpu_s_per_gbit * 1e3);
                        samples[i].tcp1.push(r);
                    }
                    "tcp8" => {
                        let r = topo.tcp(plan.tcp_secs, 8)?;
                        println!("  {name:<10} TCP x8  {:>6.2} Gbit/s  {:>5} retr  {:.0} CPU-ms/Gbit", r.gbps, r.retransmits, r.cpu_s_per_gbit * 1e3);
                        samples[i].tcp8.push(r);
                    }
                    "udp" => {
                        let r = topo.udp_pps(plan.udp_secs)?;
                        println!(
                            "  {name:<10} UDP 64B {:>7.1} kpps delivered ({:.1} kpps sent), {:.1} kpps per sender CPU-s ({:.2} µs/packet)",
                            r.delivered_pps / 1e3,
                            r.sent_pps / 1e3,
                            r.delivered_per_cpu_s / 1e3,
                            1e6 / r.delivered_per_cpu_s
                        );
                        samples[i].udp.push(r);
                    }
                    _ => {
                        let wait = if kind == "rr" { Wait::Blocking } else { Wait::Spinning };
                        let r = topo.latency(plan.round_trips, wait)?;
                        println!(
                            "  {name:<10} UDP RR {:<8} p50 {:>6.1} µs  p99 {:>6.1} µs  ({} lost)",
                            wait.name(),
                            r.p50_us,
                            r.p99_us,
                            r.lost
                        );
                        samples[i].rr(wait).push(r);
                    }
                }
            }
        }
        if let Some(topo) = topos.first() {
            check_interrupted()?;
            background.wait_quiet_and_sample(plan.wait_quiet)?;
            let u = topo.udp_pps_floor(plan.udp_secs)?;
            println!(
                "  {:<10} UDP 64B {:>7.1} kpps per sender CPU-s ({:.2} µs/packet)",
                "floor (lo)",
                u.delivered_per_cpu_s / 1e3,
                1e6 / u.delivered_per_cpu_s,
            );
            floor.udp.push(u);
            for wait in Wait::ALL {
                background.wait_quiet_and_sample(plan.wait_quiet)?;
                let r = topo.latency_floor(plan.round_trips, wait)?;
                println!("  {:<10} UDP RR {:<8} p50 {:>6.1} µs  p99 {:>6.1} µs", "floor (lo)", wait.name(), r.p50_us, r.p99_us);
                floor.rr(wait).push(r);
            }
        }
    }
    let mut summaries = Vec::new();
    let mut raw = serde_json::Map::new();
    for (topo, s) in topos.iter().zip(&samples) {
        let mut metrics = BTreeMap::new();
        let put = |m: &mut BTreeMap<String, Summary>, k: &str, v: Vec<f64>| {
            m.insert(k.to_string(), Summary::of(&v));
        };
        put(&mut metrics, "tcp1_gbps", s.tcp1.iter().map(|r| r.gbps).collect());
        put(&mut metrics, "tcp8_gbps", s.tcp8.iter().map(|r| r.gbps).collect());
        put(&mut metrics, "udp64_kpps", s.udp.iter().map(|r| r.delivered_pps / 1e3).collect());
        put(&mut metrics, "udp64_kpps_per_cpu", s.udp.iter().map(|r| r.delivered_per_cpu_s / 1e3).collect());
        put(&mut metrics, "rr_p50_us", s.rr.iter().map(|r| r.p50_us).collect());
        put(&mut metrics, "rr_p99_us", s.rr.iter().map(|r| r.p99_us).collect());
        put(&mut metrics, "rr_spin_p50_us", s.rr_spin.iter().map(|r| r.p50_us).collect());
        put(&mut metrics, "rr_spin_p99_us", s.rr_spin.iter().map(|r| r.p99_us).collect());
        put(&mut metrics, "tcp1_cpu_ms_per_gbit", s.tcp1.iter().map(|r| r.cpu_s_per_gbit * 1e3).collect());
        put(&mut metrics, "tcp8_cpu_ms_per_gbit", s.tcp8.iter().map(|r| r.cpu_s_per_gbit * 1e3).collect());
        put(&mut metrics, "tcp1_retransmits", s.tcp1.iter().map(|r| r.retransmits as f64).collect());
        put(&mut metrics, "tcp8_retransmits", s.tcp8.iter().map(|r| r.retransmits as f64).collect());
        summaries.push(ModeSummary { mode: topo.mode.name().into(), description: topo.mode.describe().into(), metrics });
        raw.insert(
            topo.mode.name().into(),
            json!({ "pod_mtu": topo.pod_mtu, "tcp1": s.tcp1, "tcp8": s.tcp8, "udp64": s.udp, "rr": s.rr, "rr_spin": s.rr_spin }),
        );
    }
    let of = |rs: &[PingPongResult], p: fn(&PingPongResult) -> f64| Summary::of(&rs.iter().map(p).collect::<Vec<_>>());
    let floor_udp = Summary::of(&floor.udp.iter().map(|r| r.delivered_per_cpu_s / 1e3).collect::<Vec<_>>());
    let floor_json = json!({
        "what": "the same UDP flood and request/response (blocking and spinning) within one pod over loopback: socket, syscall and (blocking) wake-up costs with no data path",
        "udp64_kpps_per_cpu": floor_udp,
        "rr_p50_us": of(&floor.rr, |r| r.p50_us),
        "rr_p99_us": of(&floor.rr, |r| r.p99_us),
        "rr_spin_p50_us": of(&floor.rr_spin, |r| r.p50_us),
        "rr_spin_p99_us": of(&floor.rr_spin, |r| r.p99_us),
        "samples": { "udp64": floor.udp, "rr": floor.rr, "rr_spin": floor.rr_spin },
    });
    println!(
        "\n  floor (same pod, loopback): UDP 64B {} kpps per sender CPU-s; UDP RR blocking p50 {} µs, p99 {} µs; \
         spinning p50 {} µs, p99 {} µs",
        report::cell(Some(&floor_udp)),
        report::cell(Some(&of(&floor.rr, |r| r.p50_us))),
        report::cell(Some(&of(&floor.rr, |r| r.p99_us))),
        report::cell(Some(&of(&floor.rr_spin, |r| r.p50_us))),
        report::cell(Some(&of(&floor.rr_spin, |r| r.p99_us))),
    );
    report["datapath"] = json!({
        "outer_udp_checksum": outer_csum,
        "outer_udp_checksum_source": "flannel modes: udp_csum of `ip -d -j link show flannel.1` on node 0 (flanneld sets no \
                                      IFLA_VXLAN_UDP_CSUM, so the kernel default applies: on); overlay: the BPF \
                                      encapsulation writes UDP checksum 0; flannel6: udp_zero_csum6_tx of flannel-v6.1; overlay6: IPv6 VXLAN through overlay0 with a checksummed tunnel key; host-gw, host-gw6 and overlay-dr do not encapsulate",
        "floor": floor_json,
        "summary": summaries,
        "samples": raw,
        "ratios": ratio_json(&summaries),
    });
    println!("\n  tearing the topologies down");
    drop(topos);
    Ok(summaries)
}

/// "flannel on, overlay 0 (off)" from `{"flannel": true, "overlay": false}`.
fn outer_csum_note(v: &serde_json::Value) -> String {
    let Some(m) = v.as_object().filter(|m| !m.is_empty()) else { return "no encapsulating mode".into() };
    m.iter()
        .map(|(mode, on)| format!("{mode} {}", if on.as_bool() == Some(true) { "on" } else { "0 (off)" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "node0 eth0: generic-receive-offload on, ..." from the read-back offloads.
fn offloads_note(v: &serde_json::Value) -> String {
    let Some(m) = v.as_object().filter(|m| !m.is_empty()) else { return "not read (no ethtool)".into() };
    m.iter()
        .map(|(dev, features)| {
            let f: Vec<String> = features
                .as_object()
                .map(|f| f.iter().map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?"))).collect())
                .unwrap_or_default();
            format!("{dev}: {}", f.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn ratio_json(s: &[ModeSummary]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (ours, base) in report::ratio_pairs() {
        let mut m = serde_json::Map::new();
        for metric in report::METRICS {
            if let Some(r) = report::ratio(s, ours, base, metric.key) {
                m.insert(metric.key.into(), json!(r));
            }
            if let Some(p) = report::paired_ratio(s, ours, base, metric.key) {
                m.insert(format!("{}_paired", metric.key), serde_json::to_value(p).unwrap_or_default());
            }
        }
        if !m.is_empty() {
            out.insert(format!("{ours}/{base}"), serde_json::Value::Object(m));
        }
    }
    serde_json::Value::Object(out)
}

fn control_table(rs: &[control::ControlResult]) -> String {
    let mut t = String::from(
        "| leases | start -> ready | start -> all in maps | change -> map p50 / p99 / max | ack -> map p50 / p99 | etcd requests at start (per lease) | requests per change | RSS (peak) | remove half | /readyz during removal: polls, p99 / max, failed |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rs {
        let reqs: Vec<String> = r.start_requests.iter().map(|(k, v)| format!("{k} {v}")).collect();
        t.push_str(&format!(
            "| {} | {:.3} s | {:.3} s | {:.1} / {:.1} / {:.1} ms ({}) | {:.1} / {:.1} ms | {} ({:.4}) | {:.3} | {:.1} MB ({:.1}) | {} | {}, {:.1} / {:.1} ms, {} |\n",
            r.leases,
            r.ready_s,
            r.all_in_maps_s,
            r.change_to_map_p50_ms,
            r.change_to_map_p99_ms,
            r.change_to_map_max_ms,
            r.change_kind,
            r.ack_to_map_p50_ms,
            r.ack_to_map_p99_ms,
            reqs.join(", "),
            r.start_requests_per_lease,
            r.change_requests_per_change,
            r.rss_mb,
            r.rss_peak_mb,
            removal(r),
            r.readyz_polls,
            r.readyz_p99_ms,
            r.readyz_max_ms,
            r.readyz_failures
        ));
    }
    t
}

/// "16383 in 0.120 s", or how many were gone when the bench stopped waiting.
fn removal(r: &control::ControlResult) -> String {
    if r.remove_half_s.is_finite() {
        format!("{} in {:.3} s", r.removed, r.remove_half_s)
    } else {
        format!("{} of {} after {} s (not done)", r.removed_in_time, r.removed, control::REMOVAL_CAP.as_secs())
    }
}

/// Which data path goals apply: issue 14's (real-NIC speed) on the NIC-like
/// cable, the earlier ones on the plain cable and the bridge (kept so that
/// those runs can be checked for no regression).
fn goal_set(underlay: Underlay) -> &'static str {
    match underlay {
        Underlay::Nic => "issue 14, real-NIC speed: data path goals for the nic underlay",
        Underlay::Cable | Underlay::Bridge => "the earlier data path goals (plain veth cable / bridge)",
    }
}

/// (goal, measured, met)
fn goals(s: &[ModeSummary], c: &[control::ControlResult], underlay: Underlay) -> Vec<(String, String, bool)> {
    let mut g = Vec::new();
    let mut ratio_goal = |what: &str, a: &str, b: &str, key: &str, target: f64, at_least: bool| {
        if let Some(r) = report::ratio(s, a, b, key) {
            let met = if at_least { r >= target } else { r <= target };
            g.push((format!("{what}: {a}/{b} {} {target}", if at_least { ">=" } else { "<=" }), format!("{r:.2}×"), met));
        }
    };
    match underlay {
        Underlay::Nic => {
            ratio_goal("TCP 1 stream", "overlay", "flannel", "tcp1_gbps", 1.3, true);
            ratio_goal("TCP 1 stream", "overlay", "host-gw", "tcp1_gbps", 0.9, true);
            ratio_goal("TCP 8 streams", "overlay", "flannel", "tcp8_gbps", 1.3, true);
            ratio_goal("UDP 64 B pps per sender core", "overlay", "flannel", "udp64_kpps_per_cpu", 1.6, true);
            // Both ways of waiting, each with its own verdict.
            ratio_goal("req/resp p50, blocking sockets", "overlay", "flannel", "rr_p50_us", 0.7, false);
            ratio_goal("req/resp p50, spinning sockets", "overlay", "flannel", "rr_spin_p50_us", 0.7, false);
            ratio_goal("kernel CPU per Gbit, TCP 1 stream", "overlay", "flannel", "tcp1_cpu_ms_per_gbit", 0.8, false);
        }
        Underlay::Cable | Underlay::Bridge => {
            ratio_goal("TCP 1 stream", "overlay", "flannel", "tcp1_gbps", 1.3, true);
            ratio_goal("TCP 1 stream", "overlay", "host-gw", "tcp1_gbps", 1.05, true);
            ratio_goal("UDP 64 B pps", "overlay", "flannel", "udp64_kpps", 2.2, true);
            ratio_goal("UDP 64 B pps per sender core (same goal, noise-robust)", "overlay", "flannel", "udp64_kpps_per_cpu", 2.2, true);
            // Both ways of waiting, each with its own verdict.
            ratio_goal("req/resp p50, blocking sockets", "overlay", "flannel", "rr_p50_us", 0.6, false);
            ratio_goal("req/resp p50, spinning sockets", "overlay", "flannel", "rr_spin_p50_us", 0.6, false);
        }
    }
    // Issue 17's control plane goals, judged on the largest run (the full
    // /8 by default) except the latency, judged on the worst run.
    if let Some(r) = c.iter().max_by_key(|r| r.leases) {
        let full = if r.leases == control::FULL_NETWORK_PEERS { " (the full /8)" } else { "" };
        g.push((format!("{} leases{full} in the maps < 2 s after start", r.leases), format!("{:.3} s", r.all_in_maps_s), r.all_in_maps_s < 2.0));
        g.push((format!("agent RSS < 64 MB with {} peers", r.leases), format!("{:.1} MB", r.rss_mb), r.rss_mb < 64.0));
        g.push((format!("removing {} of {} peers < 1 s", r.removed, r.leases), removal(r), r.remove_half_s < 1.0));
        g.push((
            "/readyz answered 200 throughout the removal".into(),
            format!("{} of {} failed, slowest {:.1} ms", r.readyz_failures, r.readyz_polls, r.readyz_max_ms),
            r.readyz_failures == 0 && r.readyz_polls > 0,
        ));
    }
    if let Some(worst) = c.iter().map(|r| r.change_to_map_p99_ms).filter(|v| v.is_finite()).reduce(f64::max) {
        g.push(("change -> map p99 < 20 ms (worst of the runs)".into(), format!("{worst:.1} ms"), worst < 20.0));
    }
    g
}

fn goals_table(g: &[(String, String, bool)]) -> String {
    let mut t = String::from("| goal | measured | |\n|---|---|---|\n");
    for (goal, measured, met) in g {
        t.push_str(&format!("| {goal} | {measured} | {} |\n", if *met { "met" } else { "MISSED" }));
    }
    t
}
