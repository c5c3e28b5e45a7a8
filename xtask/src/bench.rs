//! `cargo xtask bench`: setup, a release build of the agent, then the
//! benchmark binary (`overlay-bench` in the tests crate, release) against
//! it. The binary does the measuring (see tests/src/bench/ and
//! BENCHMARKS.md); xtask itself depends on nothing that needs protoc or
//! bpf-linker, so `cargo xtask setup` still builds on a fresh machine.
//!
//! Arguments are handed to `overlay-bench` as they are, e.g.
//! `cargo xtask bench --quick`, `cargo xtask bench --modes overlay,flannel`,
//! `cargo xtask bench --underlay cable` (the plain veth cable instead of
//! the default NIC-like one, `--underlay nic`: no TSO/GSO on its ends, GRO
//! on receive; setup installs the ethtool it needs),
//! `cargo xtask bench --underlay bridge` (the nodes on a Linux bridge),
//! `cargo xtask bench --modes host-gw,flannel,flannel-nocsum,overlay`,
//! `cargo xtask bench --no-control`, `cargo xtask bench --help`.
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, effective_uid, human_duration, is_root, step};

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        // Help needs neither root nor the agent.
        let mut cmd = bench_command(root, None, args);
        return run_cmd(&mut cmd);
    }
    if !is_root() {
        bail!(
            "`cargo xtask bench` must run as root (uid is {}): it creates network namespaces, \
             loads BPF programs and runs agents",
            effective_uid().map(|u| u.to_string()).unwrap_or_else(|| "unknown".into())
        );
    }
    let started = Instant::now();
    crate::setup::run_setup()?;
    let agent = crate::build::build_agent(root, true)?;
    step("bench: the benchmark binary (release), then the measurements");
    let mut cmd = bench_command(root, Some(&agent), args);
    run_cmd(&mut cmd)?;
    println!("==> bench done in {}", human_duration(started.elapsed()));
    Ok(())
}

fn bench_command(root: &Path, agent: Option<&Path>, args: &[String]) -> std::process::Command {
    let mut cmd = cargo();
    cmd.current_dir(root)
        // build_agent built the BPF object already; the agent library the
        // bench links embeds that one.
        .env("OVERLAY_SKIP_EBPF_BUILD", "1")
        .args(["run", "--release", "-p", "overlay-tests", "--bin", "overlay-bench", "--"]);
    if let Some(agent) = agent {
        cmd.arg("--agent").arg(agent);
    }
    cmd.args(args);
    cmd
}

fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    crate::util::run(cmd).context("the benchmark failed (its output is above)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_bench_binary_in_release_with_the_agent() {
        let cmd = bench_command(Path::new("/r"), Some(Path::new("/r/target/release/overlay-agent")), &["--quick".into()]);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "run",
                "--release",
                "-p",
                "overlay-tests",
                "--bin",
                "overlay-bench",
                "--",
                "--agent",
                "/r/target/release/overlay-agent",
                "--quick"
            ]
        );
        assert!(cmd.get_envs().any(|(k, v)| k == "OVERLAY_SKIP_EBPF_BUILD" && v.is_some()));
    }

    #[test]
    fn hands_the_underlay_choice_on() {
        let cmd = bench_command(Path::new("/r"), None, &["--underlay".into(), "bridge".into(), "--quick".into()]);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.ends_with(&["--".into(), "--underlay".into(), "bridge".into(), "--quick".into()]), "{args:?}");
    }
}
