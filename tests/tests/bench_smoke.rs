//! `overlay-bench` (what `cargo xtask bench` runs) in its quickest mode, on
//! the default NIC-like cable, the agent and both flannel.1 variants (with
//! and without outer UDP checksum) and a tiny control plane run: it must
//! finish and write a JSON with a positive number for every measurement,
//! the cable's offloads and each mode's outer UDP checksum, and the goals'
//! verdicts. Speed is not asserted. Needs root and ethtool.
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn quick_bench_writes_json_with_numbers() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark needs root (network namespaces, bpffs): run as root");
    let started = Instant::now();
    let (json, stdout) = run_bench(&[
        "--quick", "--modes", "overlay,flannel,flannel-nocsum", "--tcp-secs", "1", "--udp-secs", "0.3", "--round-trips",
        "300", "--leases", "20", "--changes", "10", "--change-interval-ms", "2",
    ]);
    assert!(started.elapsed() < Duration::from_secs(90), "took {:?}", started.elapsed());
    // The default underlay, recorded in the JSON and printed in the header,
    // with the offloads read back from both cable ends.
    assert_eq!(json["underlay"], "nic", "{json:#}");
    assert!(stdout.contains("underlay nic (cable ends: tso off, gso off, gro on)"), "{stdout}");
    for node in ["node0 eth0", "node1 eth0"] {
        let o = &json["underlay_offloads"][node];
        assert_eq!(o["tcp-segmentation-offload"], "off", "{node}: {o:#}");
        assert_eq!(o["generic-segmentation-offload"], "off", "{node}: {o:#}");
        assert_eq!(o["generic-receive-offload"], "on", "{node}: {o:#}");
    }
    // The outer UDP checksum of each encapsulating mode, read back.
    let csum = &json["datapath"]["outer_udp_checksum"];
    assert_eq!(csum["flannel"], true, "{csum:#}");
    assert_eq!(csum["flannel-nocsum"], false, "{csum:#}");
    assert_eq!(csum["overlay"], false, "{csum:#}");
    let header = stdout.lines().find(|l| l.starts_with("## Data path")).unwrap_or_default();
    for note in ["outer UDP checksum: ", "flannel on", "flannel-nocsum 0 (off)", "overlay 0 (off)"] {
        assert!(header.contains(note), "{note:?} not in the table header {header:?}");
    }
    // Issue 14's goals, each with a verdict.
    assert!(json["goal_set"].as_str().unwrap_or("").contains("nic underlay"), "{json:#}");
    let goals: Vec<&str> = json["goals"].as_array().unwrap().iter().filter_map(|g| g["goal"].as_str()).collect();
    for goal in [
        "TCP 1 stream: overlay/flannel >= 1.3",
        "TCP 8 streams: overlay/flannel >= 1.3",
        "UDP 64 B pps per sender core: overlay/flannel >= 1.6",
        "req/resp p50, spinning sockets: overlay/flannel <= 0.7",
        "kernel CPU per Gbit, TCP 1 stream: overlay/flannel <= 0.8",
    ] {
        assert!(goals.contains(&goal), "{goal} not in {goals:?}");
    }
    let overlay = &json["datapath"]["summary"][0];
    assert_eq!(overlay["mode"], "overlay", "{json:#}");
    for key in [
        "tcp1_gbps",
        "tcp8_gbps",
        "udp64_kpps",
        "udp64_kpps_per_cpu",
        "rr_p50_us",
        "rr_p99_us",
        "rr_spin_p50_us",
        "rr_spin_p99_us",
        "tcp1_cpu_ms_per_gbit",
    ] {
        let v = overlay["metrics"][key]["median"].as_f64().unwrap_or(0.0);
        assert!(v > 0.0, "{key} = {v} in {overlay:#}");
    }
    // The loopback floor, for both ways of waiting.
    let floor = &json["datapath"]["floor"];
    for key in ["udp64_kpps_per_cpu", "rr_p50_us", "rr_p99_us", "rr_spin_p50_us", "rr_spin_p99_us"] {
        let v = floor[key]["median"].as_f64().unwrap_or(0.0);
        assert!(v > 0.0, "floor {key} = {v} in {floor:#}");
    }
    let control = &json["control"][0];
    assert_eq!(control["leases"], 20);
    for key in ["all_in_maps_s", "ready_s", "change_to_map_p50_ms", "change_to_map_p99_ms", "rss_mb", "start_requests_per_lease"] {
        let v = control[key].as_f64().unwrap_or(0.0);
        assert!(v > 0.0, "{key} = {v} in {control:#}");
    }
}

/// `--control-only` at a small scale: no data path, and the control plane
/// result has the removal of half (every removed peer gone from the maps)
/// with /readyz asked throughout and always answering 200, the agent's own
/// subnet recorded and left out of the new leases, and issue 17's goals
/// with verdicts. Speed is not asserted.
#[test]
fn control_only_records_removal_and_readyz() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark needs root (network namespaces, bpffs): run as root");
    let (json, _) = run_bench(&["--control-only", "--leases", "200", "--changes", "20", "--change-interval-ms", "2"]);
    assert!(json.get("datapath").is_none(), "--control-only ran the data path: {json:#}");
    let c = &json["control"][0];
    assert_eq!(c["leases"], 200, "{c:#}");
    assert_eq!(c["change_kind"], "new leases", "{c:#}");
    assert!(c["own_subnet"].as_str().is_some_and(|s| s.starts_with("10.0.")), "{c:#}");
    assert_eq!(c["removed"], 100, "{c:#}");
    assert_eq!(c["removed_in_time"], 100, "{c:#}");
    assert!(c["remove_half_s"].as_f64().unwrap_or(0.0) > 0.0, "{c:#}");
    assert!(c["readyz_polls"].as_u64().unwrap_or(0) > 0, "{c:#}");
    assert_eq!(c["readyz_failures"], 0, "{c:#}");
    for key in ["all_in_maps_s", "change_to_map_p99_ms", "rss_mb", "readyz_max_ms"] {
        assert!(c[key].as_f64().unwrap_or(0.0) > 0.0, "{key} in {c:#}");
    }
    let goals: Vec<&str> = json["goals"].as_array().unwrap().iter().filter_map(|g| g["goal"].as_str()).collect();
    for goal in [
        "200 leases in the maps < 2 s after start",
        "agent RSS < 64 MB with 200 peers",
        "removing 100 of 200 peers < 1 s",
        "/readyz answered 200 throughout the removal",
        "change -> map p99 < 20 ms (worst of the runs)",
    ] {
        assert!(goals.contains(&goal), "{goal} not in {goals:?}");
    }
}

/// The IPv6 set (issue 15): IPv6 pods over an IPv6 underlay on the
/// NIC-like cable, the agent dual stack against kernel flannel-v6.1 and v6
/// host-gw. The traffic runs between the pods' IPv6 addresses, both VXLAN
/// modes carry the outer UDP checksum IPv6 needs (read back for
/// flannel-v6.1), every measurement has a positive number and the ratios
/// are of the v6 modes. Speed is not asserted.
#[test]
fn ipv6_modes_measure_v6_pods_against_flannel_v6_and_v6_host_gw() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark needs root (network namespaces, bpffs): run as root");
    let (json, stdout) = run_bench(&[
        "--quick", "--no-control", "--modes", "overlay6,flannel6,host-gw6", "--tcp-secs", "1", "--udp-secs", "0.3",
        "--round-trips", "300",
    ]);
    // Each topology's line names its pods' IPv6 addresses and pod MTU:
    // uplink 1500 - 70 with VXLAN over IPv6.
    for (mode, mtu) in [("overlay6", 1430), ("flannel6", 1430), ("host-gw6", 1500)] {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(&format!("{mode} "))).unwrap_or_default();
        assert!(line.contains("fd42:") && line.contains(&format!("(pod MTU {mtu})")), "{mode}: {line:?}\n{stdout}");
    }
    let csum = &json["datapath"]["outer_udp_checksum"];
    assert_eq!(csum["flannel6"], true, "{csum:#}");
    assert_eq!(csum["overlay6"], true, "{csum:#}");
    assert!(csum.get("host-gw6").is_none(), "{csum:#}");
    for m in json["datapath"]["summary"].as_array().unwrap() {
        for key in ["tcp1_gbps", "tcp8_gbps", "udp64_kpps_per_cpu", "rr_p50_us", "rr_spin_p50_us", "tcp1_cpu_ms_per_gbit"] {
            let v = m["metrics"][key]["median"].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{} {key} = {v}", m["mode"]);
        }
    }
    let ratios = json["datapath"]["ratios"].as_object().unwrap();
    let pairs: Vec<&String> = ratios.keys().collect();
    assert_eq!(pairs, ["overlay6/flannel6", "overlay6/host-gw6"], "{ratios:#?}");
}

/// Runs overlay-bench against the agent with `args` and a scratch --out:
/// its bench.json and stdout. Fails the test when the bench fails.
fn run_bench(args: &[&str]) -> (serde_json::Value, String) {
    let out = std::env::temp_dir().join(format!("overlay-bench-smoke-{}", overlay_tests::random_hex(4)));
    let run = Command::new(env!("CARGO_BIN_EXE_overlay-bench"))
        .arg("--agent")
        .arg(overlay_tests::agent::agent_binary())
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running overlay-bench");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "overlay-bench failed ({}):\n{stdout}\n{stderr}", run.status);
    let json = serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    (json, stdout)
}
