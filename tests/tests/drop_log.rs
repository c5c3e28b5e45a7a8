//! `--bpf-log-drops` (issue 16, aya-log as the design asks): with it, every
//! packet a BPF program drops becomes a line in the agent's log naming the
//! program, the reason and the packet; without it the logging code is not
//! in the loaded programs at all (the verifier removed it), so it costs
//! nothing per packet. Needs root and bpftool.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::Duration;

use overlay_tests::{
    cluster::{Cluster, VXLAN_CONFIG},
    packet::vxlan,
};
use overlay_common::program_names;

fn bpftool(args: &[&str]) -> String {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("bpftool is needed for this test (cargo xtask setup installs it): {e}"));
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The helper calls in the loaded (verified, translated) program behind the
/// pinned link `link`, as `bpftool prog dump xlated` shows them.
fn helper_calls(link: &Path) -> String {
    let info: serde_json::Value = serde_json::from_str(&bpftool(&["link", "show", "pinned", link.to_str().unwrap(), "-j"])).unwrap();
    let id = info["prog_id"].as_u64().unwrap_or_else(|| panic!("no prog_id for {}: {info}", link.display()));
    let dump = bpftool(&["prog", "dump", "xlated", "id", &id.to_string()]);
    dump.lines().filter(|l| l.contains("call ")).collect::<Vec<_>>().join("\n")
}

#[test]
fn drops_are_logged_only_when_asked_and_cost_nothing_otherwise() {
    // Agent 0 logs drops, agent 1 does not; host 2 is a stranger.
    let c = Cluster::build(2, 0, 1, VXLAN_CONFIG).agent_flags_for(0, &["--bpf-log-drops"]).start();

    // Off: no program agent 1 attached reaches aya-log's ring buffer (the
    // uplink's, the tunnel device's, the pod bridge's and pod veths'); on:
    // the uplink's does.
    let links = c.agents[1].pins().links();
    assert!(links.len() >= 4, "agent 1's links: {links:?}");
    for link in &links {
        let calls = helper_calls(link);
        assert!(!calls.contains("ringbuf"), "{} without --bpf-log-drops still has logging code:\n{calls}", link.display());
    }
    let uplink = c.agents[0].pins().link(program_names::FROM_UPLINK, c.tb.host(0).uplink());
    let calls = helper_calls(&uplink);
    assert!(calls.contains("ringbuf"), "from_uplink with --bpf-log-drops has no logging code:\n{calls}");

    // A stranger's VXLAN to both nodes: dropped and counted by both, a
    // line in agent 0's log only.
    let stranger = c.tb.host(2);
    let frame = vxlan(1, &[0u8; 60]);
    let sport = stranger
        .in_ns(|| -> std::io::Result<u16> {
            let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            for i in 0..2 {
                s.send_to(&frame, SocketAddrV4::new(c.tb.host(i).ip(), 8472))?;
            }
            Ok(s.local_addr()?.port())
        })
        .unwrap();
    let expected = format!("from_uplink drop_unknown_sender: {}:{sport} -> {}:8472 proto 17", stranger.ip(), c.tb.host(0).ip());
    c.agents[0].wait_log(&expected, Duration::from_secs(5)).unwrap();
    overlay_tests::poll_until(Duration::from_secs(5), "agent 1 counted the stranger", || {
        let n = c.counters(1)["drop_unknown_sender"];
        anyhow::ensure!(n >= 1, "drop_unknown_sender {n}");
        Ok(())
    })
    .unwrap();
    let quiet = c.agents[1].log_text();
    assert!(!quiet.contains("drop_unknown_sender"), "agent 1 logged a drop without --bpf-log-drops:\n{quiet}");
}
