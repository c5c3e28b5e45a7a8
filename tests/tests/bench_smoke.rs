//! `overlay-bench` (what `cargo xtask bench` runs) in its quickest mode, on
//! one data path mode and a tiny control plane run: it must finish and
//! write a JSON with a positive number for every measurement. Speed is not
//! asserted. Needs root.
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn quick_bench_writes_json_with_numbers() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark needs root (network namespaces, bpffs): run as root");
    let out = std::env::temp_dir().join(format!("overlay-bench-smoke-{}", overlay_tests::random_hex(4)));
    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_overlay-bench"))
        .arg("--agent")
        .arg(overlay_tests::agent::agent_binary())
        .args(["--quick", "--modes", "overlay", "--tcp-secs", "1", "--udp-secs", "0.3", "--round-trips", "300"])
        .args(["--leases", "20", "--changes", "10", "--change-interval-ms", "2"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running overlay-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "overlay-bench failed ({}):\n{stdout}\n{stderr}", run.status);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    // The default underlay, recorded in the JSON and printed in the header.
    assert_eq!(json["underlay"], "cable", "{json:#}");
    assert!(stdout.contains("underlay cable"), "{stdout}");
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
