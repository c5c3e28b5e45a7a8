//! The benchmark behind `cargo xtask bench` (binary `overlay-bench`).
//!
//! * [`datapath`]: the same two-node netns topology in four modes (host-gw
//!   routes, kernel flannel.1 VXLAN, the agent's BPF VXLAN, the agent with
//!   DirectRouting) and the measurements run on each: TCP throughput with
//!   iperf3, 64-byte UDP packets per second, UDP request/response latency,
//!   CPU time per gigabit from /proc/stat.
//! * [`control`]: the agent against a real etcd holding N leases: time to
//!   all of them in the BPF maps, change -> map latency, etcd requests per
//!   lease, RSS.
//! * [`report`]: the table, the JSON and the PNG chart.
//! * [`stats`]: medians, ranges, percentiles.

pub mod control;
pub mod datapath;
pub mod report;
pub mod sockets;
pub mod stats;

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT/SIGTERM (see [`install_interrupt_handler`]): the benchmark
/// stops at the next check and unwinds, so every testbed, agent and etcd is
/// removed by its `Drop`.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn install_interrupt_handler() {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// An error once interrupted.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// How many processes named `name` run now (what `pgrep -c name` says).
pub fn count_processes(name: &str) -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    procs
        .flatten()
        .filter(|p| p.file_name().to_str().is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())))
        .filter(|p| std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .count()
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
