//! `cargo xtask demo`: setup, build the agent, then run the demo program
//! (`overlay-demo`, tests/src/bin/overlay-demo) with it: a real etcd, three
//! nodes in network namespaces with two pods each, one agent per node, and
//! what there is to see. The demo removes everything it made when it ends,
//! fails, or gets Ctrl-C.
//!
//! The demo is a binary of the harness crate, not part of xtask: xtask must
//! compile on a fresh machine before protoc or bpf-linker exist, so it
//! depends on nothing that needs them, and only builds and runs the demo.
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Context, Result};

use crate::util::{cargo, effective_uid, host_target_dir, is_root, run as run_cmd, show, step};

const USAGE: &str = "\
usage: cargo xtask demo [--release] [--docker] [--keep] [--nodes N] [--no-color]
       cargo xtask demo -- --help

Sets the machine up (as `cargo xtask setup`), builds the agent and the demo,
then starts a real etcd on loopback, N nodes (network namespaces on one
underlay, default 3) with two pods each behind cni0, and one overlay-agent
per node, and shows: the leases in etcd, each node's subnet file, pings and
TCP transfers between pods on different nodes, one node's SUBNETS map
(bpftool) and `overlay-agent inspect`, and the packet counters per node.
Everything is removed at the end, on error and on Ctrl-C.

  --release      build and run the release agent (default: debug, as the tests)
  --docker       the seeds' Docker walkthrough instead: per node the agent,
                 `overlay-agent docker-opts -c`, a real dockerd started with
                 $DOCKER_OPTS, busybox containers pinging and talking TCP
                 across nodes (default 2 nodes)
  --keep         leave the cluster running until Enter or Ctrl-C, and print
                 how to look around (nsenter, pins, inspect, etcdctl)
  --nodes N      2 to 8 nodes (default 3)
  --no-color     no colours (they are only used on a terminal anyway)

Needs root.";

/// `--release` and what goes to the demo, or None for help. The demo checks
/// its arguments again; this is so that a typo fails before the build.
fn parse_args(args: &[String]) -> Result<Option<(bool, Vec<String>)>> {
    let mut release = false;
    let mut forwarded = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--release" => release = true,
            "--keep" | "--no-color" | "--docker" => forwarded.push(arg.clone()),
            "--nodes" | "-n" => {
                let value = it.next().context("--nodes needs a value")?;
                check_nodes(value)?;
                forwarded.extend([arg.clone(), value.clone()]);
            }
            other => match other.strip_prefix("--nodes=") {
                Some(value) => {
                    check_nodes(value)?;
                    forwarded.push(arg.clone());
                }
                None => bail!("unknown argument {other:?}\n\n{USAGE}"),
            },
        }
    }
    Ok(Some((release, forwarded)))
}

fn check_nodes(value: &str) -> Result<()> {
    match value.parse::<usize>() {
        Ok(n) if (2..=8).contains(&n) => Ok(()),
        _ => bail!("--nodes takes a number from 2 to 8 (got {value:?})"),
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let Some((release, forwarded)) = parse_args(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    if !is_root() {
        bail!(
            "`cargo xtask demo` must run as root (uid is {}): it creates network namespaces, \
             loads BPF programs and pins them on bpffs",
            effective_uid()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "unknown".into())
        );
    }
    crate::setup::run_setup()?;
    let agent = crate::build::build_agent(root, release)?;

    let profile = if release { "release" } else { "debug" };
    step(&format!("demo: the demo program ({profile})"));
    let mut build = cargo();
    build
        .current_dir(root)
        .env("OVERLAY_SKIP_EBPF_BUILD", "1")
        .args(["build", "-p", "overlay-tests", "--bin", "overlay-demo"]);
    if release {
        build.arg("--release");
    }
    run_cmd(&mut build)?;
    let demo = host_target_dir(root).join(profile).join("overlay-demo");

    let mut cmd = Command::new(&demo);
    cmd.arg("--agent").arg(&agent).args(forwarded);
    step("demo");
    println!("    $ {}", show(&cmd));
    run_forwarding_signals(cmd)
}

/// The demo's pid while it runs, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

// libc, which std links anyway; xtask keeps its dependencies to clap and
// anyhow. glibc's signal() installs a handler with BSD semantics
// (SA_RESTART, not reset after the first signal).
extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Passes the signal on to the demo, which cleans up and exits; xtask then
/// exits with its status. (On a terminal's Ctrl-C the demo gets SIGINT from
/// the terminal too; it takes the second one calmly.)
extern "C" fn forward(sig: i32) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        unsafe {
            kill(pid, sig);
        }
    }
}

fn run_forwarding_signals(mut cmd: Command) -> Result<()> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", cmd.get_program().to_string_lossy()))?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let previous: Vec<(i32, usize)> = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .map(|sig| {
            (sig, unsafe {
                signal(sig, forward as extern "C" fn(i32) as usize)
            })
        })
        .collect();
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    for (sig, handler) in previous {
        unsafe {
            signal(sig, handler);
        }
    }
    let status = status.context("waiting for the demo")?;
    match status.code() {
        Some(0) => Ok(()),
        // 128 + signal: stopped by Ctrl-C or SIGTERM, after cleaning up;
        // it said so already. Exit the same way, without another message.
        Some(code) if code > 128 => std::process::exit(code),
        Some(code) => bail!("the demo failed (exit status {code}); what went wrong is above"),
        None => {
            bail!("the demo was killed ({status}); a later demo or test run removes what it left")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(bool, Vec<String>)>> {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn arguments_are_checked_before_building() {
        assert_eq!(parse("").unwrap(), Some((false, vec![])));
        let (release, fwd) = parse("--release --keep --nodes 4 --no-color")
            .unwrap()
            .unwrap();
        assert!(release);
        assert_eq!(fwd, ["--keep", "--nodes", "4", "--no-color"]);
        assert_eq!(parse("--docker --keep").unwrap().unwrap().1, ["--docker", "--keep"]);
        assert_eq!(parse("--nodes=2").unwrap().unwrap().1, ["--nodes=2"]);
        assert_eq!(parse("--help").unwrap(), None);
        assert!(parse("--nodes 1").is_err());
        assert!(parse("--nodes=x").is_err());
        assert!(parse("--nodes").is_err());
        assert!(parse("--frobnicate").is_err());
    }
}
