//! `cargo xtask demo`'s program (`overlay-demo`) runs to the end against the
//! real agent, shows what it promises, and leaves nothing behind: not when
//! it completes, and not when it gets Ctrl-C halfway. The same for
//! `--docker` (real dockerd and containers). Needs root.
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use overlay_tests::agent::agent_binary;

const DEMO: &str = env!("CARGO_BIN_EXE_overlay-demo");

fn demo() -> Command {
    let mut cmd = Command::new(DEMO);
    cmd.arg("--agent").arg(agent_binary()).stdin(Stdio::null());
    cmd.env_remove("NO_COLOR");
    cmd
}

/// The testbed id in "everything is named ov<id>-*".
fn testbed_prefix(out: &str) -> String {
    let rest = out.split("everything is named ").nth(1).unwrap_or_else(|| panic!("no testbed name in:\n{out}"));
    let prefix = rest.split('*').next().unwrap().to_string();
    assert!(prefix.starts_with("ov") && prefix.ends_with('-'), "{prefix:?}");
    prefix
}

/// The etcd data folder in "data in <dir>".
fn etcd_dir(out: &str) -> String {
    let rest = out.split("data in ").nth(1).unwrap_or_else(|| panic!("no etcd folder in:\n{out}"));
    rest.lines().next().unwrap().trim().to_string()
}

/// Nothing named after the demo's testbed or etcd is left: namespaces,
/// pins, processes, folders.
fn assert_nothing_left(out: &str) {
    let prefix = testbed_prefix(out);
    let etcd = etcd_dir(out);
    let namespaces: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = namespaces.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(ours.is_empty(), "namespaces left: {ours:?}");
    let pins: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = pins.iter().filter(|p| p.starts_with(&prefix)).collect();
    assert!(ours.is_empty(), "pins left in /sys/fs/bpf: {ours:?}");
    assert!(!Path::new(&etcd).exists(), "etcd folder {etcd} left");
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains(&etcd), "process left: {cmdline}");
        assert!(!cmdline.contains(&format!("/sys/fs/bpf/{prefix}")), "process left: {cmdline}");
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn demo_runs_to_the_end_and_cleans_up() {
    let out = demo().args(["--nodes", "2"]).output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "the demo failed ({}):\n{all}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains('\x1b'), "colours on a pipe:\n{stdout}");
    for expected in [
        "[1/11] Starting etcd",
        "/coreos.com/network/config",
        "/coreos.com/network/subnets/10.42.",
        "\"BackendType\":\"vxlan\"",
        "FLANNEL_NETWORK=10.42.0.0/16",
        "FLANNEL_SUBNET=10.42.",
        "10/10",
        "RTT min / avg / max",
        "Gbit/s",
        "intact",
        "bpftool map dump pinned /sys/fs/bpf/",
        "\"prefix_len\": 24",
        "overlay-agent inspect --bpf-pin-dir=",
        "remote subnets (1)",
        "encapsulated",
        "decap_to_pod",
        "nothing left behind",
        "Done in ",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from the output:\n{all}");
    }
    // The counters table: a row per node with at least one encapsulated packet.
    for node in ["node0", "node1"] {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(node) && l.trim_end().ends_with(" 0") && l.split_whitespace().count() == 7)
            .unwrap_or_else(|| panic!("no counter row without drops for {node}:\n{stdout}"));
        let encapsulated: u64 = row.split_whitespace().nth(1).unwrap().replace(',', "").parse().unwrap();
        assert!(encapsulated > 0, "{row}");
    }
    assert!(!stdout.contains(" 0/10"), "lost pings:\n{stdout}");
    assert_nothing_left(&stdout);
}

/// Runs the demo with `args`, reads its output until `marker` appears
/// (within `limit`), then sends SIGINT as Ctrl-C would; returns the exit
/// status, all of stdout and stderr.
fn interrupt_at(args: &[&str], marker: &str, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = demo().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    while !String::from_utf8_lossy(&seen).contains(marker) {
        assert!(started.elapsed() < limit, "{marker} never came:\n{}", String::from_utf8_lossy(&seen));
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the demo ended early:\n{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    stdout.read_to_end(&mut seen).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    (status, String::from_utf8_lossy(&seen).into_owned(), stderr)
}

#[test]
fn ctrl_c_halfway_removes_everything() {
    // Ctrl-C once the agents are up (step 5 begins).
    let (status, out, stderr) = interrupt_at(&["--nodes", "2"], "[5/11]", Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "exit status after SIGINT:\n{out}\n{stderr}");
    assert!(stderr.contains("SIGINT (Ctrl-C) received"), "{stderr}");
    assert!(out.contains("Stopped by SIGINT"), "{out}");
    assert!(out.contains("nothing left behind"), "{out}");
    assert_nothing_left(&out);
}

/// The dockerd state folders in "state in <dir>, API at".
fn docker_dirs(out: &str) -> Vec<String> {
    out.split("state in ").skip(1).map(|rest| rest.split(", API at").next().unwrap().trim().to_string()).collect()
}

#[test]
fn docker_demo_runs_to_the_end_and_cleans_up() {
    let out = demo().arg("--docker").output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "the Docker demo failed ({}):\n{all}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "[1/10] Starting etcd",
        "/coreos.com/network/subnets/10.42.",
        "FLANNEL_SUBNET=10.42.",
        "overlay-agent docker-opts -f ",
        "DOCKER_OPTS=\" --bip=10.42.",
        "dockerd --bip=10.42.",
        "docker0 10.42.",
        "node0/client 10.42.",
        "5/5",
        "\"hello from web on node1\"",
        "\"hello from web on node0\"",
        "encapsulated",
        "nothing left behind",
        "Done in ",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from the output:\n{all}");
    }
    assert!(stdout.contains("(0 lost)"), "lost pings:\n{stdout}");
    let dirs = docker_dirs(&stdout);
    assert_eq!(dirs.len(), 2, "{stdout}");
    assert_nothing_left(&stdout);
    for d in dirs {
        assert!(!Path::new(&d).exists(), "dockerd folder {d} left");
        assert!(overlay_tests::docker::processes_mentioning(&d).is_empty(), "processes of {d} left");
    }
}

#[test]
fn docker_demo_ctrl_c_with_containers_running_removes_everything() {
    // Ctrl-C once both dockerd run and the containers are being made (step
    // 7 begins).
    let (status, out, stderr) = interrupt_at(&["--docker"], "[7/10]", Duration::from_secs(240));
    assert_eq!(status.code(), Some(130), "exit status after SIGINT:\n{out}\n{stderr}");
    assert!(out.contains("Stopped by SIGINT"), "{out}");
    assert!(out.contains("nothing left behind"), "{out}");
    let dirs = docker_dirs(&out);
    assert_eq!(dirs.len(), 2, "{out}");
    assert_nothing_left(&out);
    for d in dirs {
        assert!(!Path::new(&d).exists(), "dockerd folder {d} left");
        assert!(overlay_tests::docker::processes_mentioning(&d).is_empty(), "processes of {d} left");
    }
}
