//! The agent under faults at run time, with the real agent: a lease that
//! moved while its subnet file cannot be written (a full /run), a network
//! config changed in etcd under a running agent, and a health server
//! flooded with idle connections past the agent's file descriptor limit,
//! and a main loop that is stuck.
//! Each checks what /readyz and /metrics tell a kubelet or an operator.
//! Needs root.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use overlay_tests::{
    agent::{http_get, Agent, AgentOptions},
    cluster::{PREFIX, VXLAN_CONFIG},
    etcd::Etcd,
    flannel::VxlanLease,
    netns::{ensure_bpffs, Host, Testbed},
    poll_until,
};

const HEALTHZ_PORT: u16 = 10266;
/// A kubelet probe's timeout, generously.
const PROBE: Duration = Duration::from_secs(3);

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output().unwrap();
        assert!(out.status.success(), "mount tmpfs at {}: {}", at.display(), String::from_utf8_lossy(&out.stderr));
        Tmpfs(at.to_path_buf())
    }

    /// Fills it up with `filler`; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            if let Err(e) = f.write_all(&block).and_then(|_| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling {}: {e}", self.0.display());
                return path;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Node {
    // Dropped in this order: the agent before its testbed.
    agent: Agent,
    etcd: Etcd,
    tb: Testbed,
}

impl Node {
    fn host(&self) -> &Host {
        self.tb.host(0)
    }
}

/// One agent with its health server on 127.0.0.1:HEALTHZ_PORT in its host.
fn start_node(extra: &[String]) -> Node {
    ensure_bpffs().unwrap();
    let tb = Testbed::new(1).unwrap();
    let etcd = Etcd::start().unwrap();
    etcd.put(&format!("{PREFIX}/config"), VXLAN_CONFIG).unwrap();
    let mut flags = vec!["--healthz-ip=127.0.0.1".to_string(), format!("--healthz-port={HEALTHZ_PORT}")];
    flags.extend(extra.iter().cloned());
    let agent = Agent::start_forwarded(
        tb.host(0),
        AgentOptions { etcd_endpoints: &etcd.endpoint(), prefix: PREFIX, dir: tb.dir(), extra: flags },
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    Node { agent, etcd, tb }
}

fn get(node: &Node, path: &str) -> (u16, String) {
    http_get(node.host(), HEALTHZ_PORT, path, PROBE).unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// Waits until GET `path` answers `status` with a body containing every
/// one of `needles`; returns the body.
fn wait_answer(node: &Node, path: &str, status: u16, needles: &[&str]) -> String {
    poll_until(Duration::from_secs(30), &format!("GET {path} -> {status} with {needles:?}"), || {
        let (s, body) = http_get(node.host(), HEALTHZ_PORT, path, PROBE)?;
        if s == status && needles.iter().all(|n| body.contains(n)) {
            Ok(body)
        } else {
            anyhow::bail!("{s}: {body}")
        }
    })
    .unwrap()
}

/// Our lease moves (someone overwrote its key) while /run is full: the
/// subnet file cannot be written. flanneld logs that once and goes on
/// serving the old subnet file and reporting ready. The agent must say so
/// on /readyz and /metrics, keep the iptables rules following the new lease
/// (and keep re-asserting them), and write the file once there is room.
#[test]
fn a_moved_lease_that_cannot_be_applied_is_retried_and_not_ready_until_it_is() {
    let scratch = tempfile::tempdir().unwrap();
    let run = Tmpfs::mount(&scratch.path().join("run"), "64k");
    let env_file = run.0.join("subnet.env");
    let mut node = start_node(&[
        format!("--subnet-file={}", env_file.display()),
        "--ip-masq".into(),
        "--iptables-resync=1".into(),
    ]);
    node.agent.subnet_file = env_file.clone();
    assert_eq!(get(&node, "/readyz").0, 200);
    let (old, len, _) = node.agent.lease().unwrap();
    let old_key = format!("{PREFIX}/subnets/{old}-{len}");

    let filler = run.fill();
    // Someone else's lease now holds our key: the agent takes another one.
    let intruder = VxlanLease { subnet: old, prefix_len: len, public_ip: "192.168.77.200".parse().unwrap(), vtep_mac: [0x0e, 0, 0, 0, 0xee, 1] };
    node.etcd.put(&old_key, &intruder.etcd_value(1)).unwrap();
    let moved = node.agent.wait_log("our lease moved from", Duration::from_secs(30)).unwrap();
    let new = moved.split(" to ").nth(1).unwrap().trim().to_string();
    assert_ne!(new, format!("{old}/{len}"), "{moved}");

    let body = wait_answer(&node, "/readyz", 503, &["own_lease_apply_failing", &new, "No space left on device"]);
    assert!(body.contains(&env_file.display().to_string()), "/readyz names the file: {body}");
    assert_eq!(node.agent.lease().unwrap().0, old, "the old file is still there (nothing written)");
    let metrics = get(&node, "/metrics").1;
    assert!(metrics.contains("\noverlay_condition{condition=\"own_lease_apply_failing\"} 1\n"), "{metrics}");
    assert!(metrics.contains("\noverlay_ready 0\n"), "{metrics}");

    // The masquerade rules follow the new lease although the file could not
    // be written, and the resync keeps repairing them.
    let new_net = new.clone();
    let nat = || node.host().run(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]).unwrap_or_default();
    poll_until(Duration::from_secs(10), "FLANNEL-POSTRTG for the new lease", || {
        let rules = nat();
        rules.contains(&new_net).then_some(()).ok_or_else(|| anyhow::anyhow!("{rules}"))
    })
    .unwrap();
    node.host().run(&["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]).unwrap();
    poll_until(Duration::from_secs(10), "the resync to restore FLANNEL-POSTRTG", || {
        let rules = nat();
        rules.contains(&new_net).then_some(()).ok_or_else(|| anyhow::anyhow!("{rules}"))
    })
    .unwrap();
    // Retried, with backoff, not just once.
    poll_until(Duration::from_secs(15), "a second attempt", || {
        let n = node.agent.log_text().matches(&format!("applying our lease {new} failed")).count();
        (n >= 2).then_some(()).ok_or_else(|| anyhow::anyhow!("{n} attempts"))
    })
    .unwrap();

    // Room again: the next attempt writes the file and the agent is ready.
    fs::remove_file(&filler).unwrap();
    wait_answer(&node, "/readyz", 200, &["ready"]);
    let (written, written_len, _) = node.agent.lease().unwrap();
    assert_eq!(format!("{written}/{written_len}"), new, "{}", fs::read_to_string(&env_file).unwrap());
    let metrics = get(&node, "/metrics").1;
    assert!(metrics.contains("\noverlay_condition{condition=\"own_lease_apply_failing\"} 0\n"), "{metrics}");
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("overlay_lease_apply_failures_total "))
        .and_then(|v| v.parse().ok())
        .expect("overlay_lease_apply_failures_total");
    assert!(failures >= 2, "{metrics}");
    drop(node);
}

/// The network config is changed in etcd under a running agent. flanneld
/// reads it once and ignores the change silently; the agent keeps its
/// config too (re-numbering under running pods is not safe) but logs an
/// error naming old and new and is not ready until it is restarted or the
/// change is undone.
#[test]
fn a_network_config_changed_at_run_time_is_reported_until_undone() {
    let node = start_node(&[]);
    assert_eq!(get(&node, "/readyz").0, 200);
    let key = format!("{PREFIX}/config");
    // The same config written differently is no change.
    node.etcd.put(&key, r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}"#).unwrap();
    node.etcd.put(&key, r#"{"Network":"10.43.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    let body = wait_answer(&node, "/readyz", 503, &["network_config_changed", "Network 10.42.0.0/16 -> 10.43.0.0/16"]);
    let errors = node.agent.log_lines_at("ERROR");
    assert!(
        errors.iter().any(|l| l.contains("10.42.0.0/16 -> 10.43.0.0/16") && l.contains("restart")),
        "an error naming old and new: {errors:?} (readyz: {body})"
    );
    let metrics = get(&node, "/metrics").1;
    assert!(metrics.contains("\noverlay_condition{condition=\"network_config_changed\"} 1\n"), "{metrics}");
    // The agent goes on with its config: its subnet file is unchanged.
    assert!(fs::read_to_string(&node.agent.subnet_file).unwrap().contains("FLANNEL_NETWORK=10.42.0.0/16"));

    node.etcd.put(&key, VXLAN_CONFIG).unwrap();
    wait_answer(&node, "/readyz", 200, &["ready"]);
    let metrics = get(&node, "/metrics").1;
    assert!(metrics.contains("\noverlay_condition{condition=\"network_config_changed\"} 0\n"), "{metrics}");
}

/// The DaemonSet binds the health server to the node's address, which pods
/// reach. Far more idle connections than the agent has file descriptors
/// (its limit lowered to 256 with prlimit) must neither keep the probe out
/// nor make the accept loop spin.
#[test]
fn idle_connections_past_the_fd_limit_neither_block_readyz_nor_spin() {
    let node = start_node(&[]);
    let pid = node.agent.pid().unwrap();
    let out = Command::new("prlimit").args([format!("--pid={pid}"), "--nofile=256:256".into()]).output().unwrap();
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    let cpu_before = node.agent.cpu_time().unwrap();
    let started = Instant::now();
    let idle = node.host().in_ns(|| {
        (0..600)
            .map(|i| {
                std::net::TcpStream::connect(("127.0.0.1", HEALTHZ_PORT)).unwrap_or_else(|e| panic!("connection {i}: {e}"))
            })
            .collect::<Vec<_>>()
    });
    for _ in 0..3 {
        let (status, body) = http_get(node.host(), HEALTHZ_PORT, "/readyz", PROBE)
            .unwrap_or_else(|e| panic!("/readyz with {} idle connections open: {e:#}", idle.len()));
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(3));
    let cpu = node.agent.cpu_time().unwrap() - cpu_before;
    let wall = started.elapsed();
    // A spinning accept loop burns a whole core for the whole time.
    assert!(cpu < wall / 3, "the agent used {cpu:?} of CPU in {wall:?} while the connections were open");
    drop(idle);
    assert!(node.agent.is_running());
}

/// Stops one thread of the agent with ptrace (PTRACE_SEIZE +
/// PTRACE_INTERRUPT); the rest of the process runs on. Let go when dropped
/// (and by the kernel if the test thread, the tracer, ends first). All calls
/// must come from the thread that made it.
struct StoppedThread(libc::pid_t);

impl StoppedThread {
    fn stop(tid: libc::pid_t) -> StoppedThread {
        unsafe {
            assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0), 0, "PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error());
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0, "PTRACE_INTERRUPT {tid}: {}", std::io::Error::last_os_error());
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "waitpid {tid}: {}", std::io::Error::last_os_error());
        }
        StoppedThread(tid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0);
        }
    }
}

/// The main loop (which follows etcd and the pods) runs on the agent's main
/// thread (`block_on`), the health server on the runtime's workers. With
/// the main thread stopped, as if stuck in a syscall, /readyz must stop
/// saying ready once the loop has not turned for 30 s, and say ready again
/// when it turns.
#[test]
fn a_stuck_main_loop_makes_readyz_fail() {
    let node = start_node(&[]);
    assert_eq!(get(&node, "/readyz").0, 200);
    let pid = node.agent.pid().unwrap() as libc::pid_t;
    let stopped = StoppedThread::stop(pid);
    // Still served meanwhile, by the workers.
    assert_eq!(get(&node, "/healthz").0, 200);
    let body = poll_until(Duration::from_secs(60), "/readyz to notice the stuck main loop", || {
        let (s, body) = http_get(node.host(), HEALTHZ_PORT, "/readyz", PROBE)?;
        (s == 503).then_some(body.clone()).ok_or_else(|| anyhow::anyhow!("{s}: {body}"))
    })
    .unwrap();
    assert!(body.contains("main loop"), "{body}");
    let metrics = get(&node, "/metrics").1;
    assert!(metrics.contains("\noverlay_condition{condition=\"main_loop_stalled\"} 1\n"), "{metrics}");
    drop(stopped);
    wait_answer(&node, "/readyz", 200, &["ready"]);
}
