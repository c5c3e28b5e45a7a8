//! `overlay-demo`: what `cargo xtask demo` runs once the agent is built.
//!
//! A real etcd on loopback, N nodes as network namespaces on one underlay,
//! each running the real `overlay-agent` binary with two pods behind its
//! `cni0`; then it shows the leases, the subnet files, traffic between pods
//! on different nodes, one node's BPF maps and `inspect`, and the packet
//! counters. Everything is removed at the end, on error and on Ctrl-C
//! (SIGINT, SIGTERM, SIGHUP). Needs root.
//!
//! With `--docker` it walks through the seeds' Docker setup instead
//! (docker_demo.rs): the agents, `overlay-agent docker-opts`, a real dockerd
//! per node started with the result, and busybox containers on different
//! nodes pinging and talking TCP.
//!
//! ```text
//! overlay-demo --agent target/debug/overlay-agent [--docker] [--nodes N] [--keep] [--no-color]
//! ```

mod docker_demo;
mod scenario;
mod signals;
mod traffic;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: overlay-demo [--agent PATH] [--docker] [--nodes N] [--keep] [--no-color]

  --agent PATH   the overlay-agent binary to run on every node
                 (default: $OVERLAY_AGENT_BIN, else target/{debug,release}/overlay-agent)
  --docker       the seeds' Docker walkthrough: overlay-agent docker-opts, a real
                 dockerd per node with its output, busybox containers talking
  --nodes N      how many nodes (2 to 8, default 3, with --docker 2); each gets
                 two pods (with --docker: two containers)
  --keep         leave everything running until Enter or Ctrl-C, and print
                 how to look around (nsenter, pins, inspect, etcdctl)
  --no-color     no colours even on a terminal (NO_COLOR works too)

Needs root. Everything it creates is removed when it ends, also on error
and on Ctrl-C.";

pub struct Options {
    pub agent: PathBuf,
    pub nodes: usize,
    pub keep: bool,
    pub color: bool,
    pub docker: bool,
}

fn parse_args(args: &[String]) -> Result<Option<Options>> {
    let mut agent = None;
    let mut nodes = None;
    let mut docker = false;
    let mut keep = false;
    let mut color = true;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().cloned().with_context(|| format!("{name} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--agent" => agent = Some(PathBuf::from(value("--agent")?)),
            "--nodes" | "-n" => {
                let v = value("--nodes")?;
                let n: usize = v.parse().with_context(|| format!("--nodes {v:?} is not a number"))?;
                if !(2..=8).contains(&n) {
                    bail!("--nodes must be between 2 and 8 (got {n})");
                }
                nodes = Some(n);
            }
            "--docker" => docker = true,
            "--keep" => keep = true,
            "--no-color" => color = false,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let agent = match agent {
        Some(a) => a,
        None => default_agent()
            .context("no overlay-agent binary found: pass --agent PATH (`cargo xtask demo` builds one and does)")?,
    };
    let agent = std::fs::canonicalize(&agent).with_context(|| format!("the agent binary {}", agent.display()))?;
    // A dockerd per node is heavier than a few namespaces: 2 by default.
    let nodes = nodes.unwrap_or(if docker { 2 } else { 3 });
    Ok(Some(Options { agent, nodes, keep, color, docker }))
}

/// `$OVERLAY_AGENT_BIN`, else the workspace's target/{debug,release}/overlay-agent.
fn default_agent() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OVERLAY_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(|d| root.join(d)).unwrap_or_else(|| root.join("target"));
    ["debug", "release"].iter().map(|p| target.join(p).join("overlay-agent")).find(|p| p.exists())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("overlay-demo: {e:#}");
            return ExitCode::from(2);
        }
    };
    ui::init(opts.color);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "overlay-demo: must run as root (it creates network namespaces, loads BPF programs and pins them on bpffs)"
        );
        return ExitCode::FAILURE;
    }
    // Before any thread exists: every thread inherits the blocked signals.
    signals::install();
    // The harness starts agents from $OVERLAY_AGENT_BIN.
    std::env::set_var("OVERLAY_AGENT_BIN", &opts.agent);

    let started = Instant::now();
    let mut world = scenario::World::default();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if opts.docker {
            docker_demo::run(&mut world, &opts)
        } else {
            scenario::run(&mut world, &opts)
        }
    }));
    let step = ui::current_step();
    let clean = scenario::teardown(world);
    let code = match outcome {
        Ok(Ok(summary)) => {
            ui::line("");
            ui::line(&format!("{} {summary}", ui::green(&format!("Done in {}. Shown:", ui::secs(started.elapsed())))));
            0
        }
        Ok(Err(e)) => match signals::is_interrupt(&e) {
            Some(sig) => {
                ui::line(&format!(
                    "{} by {} during step {step} of {}, after {}",
                    ui::yellow("Stopped"),
                    signals::name(sig),
                    scenario::steps(&opts),
                    ui::secs(started.elapsed())
                ));
                128 + sig as u8
            }
            None => {
                ui::line(&format!("{} {e:#}", ui::red(&format!("The demo failed in step {step}:"))));
                1
            }
        },
        // The panic message is already on stderr.
        Err(_) => {
            ui::line(&ui::red(&format!("The demo panicked in step {step} (a bug in the demo)")));
            1
        }
    };
    ExitCode::from(if code == 0 && !clean { 1 } else { code })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn arguments_parse() {
        let o = parse_args(&args("--agent /bin/true --nodes 4 --keep --no-color")).unwrap().unwrap();
        assert_eq!((o.nodes, o.keep, o.color), (4, true, false));
        assert_eq!(o.agent, std::fs::canonicalize("/bin/true").unwrap());
        let o = parse_args(&args("--agent=/bin/true --nodes=2")).unwrap().unwrap();
        assert_eq!((o.nodes, o.keep, o.color, o.docker), (2, false, true, false));
        let o = parse_args(&args("--agent /bin/true --docker")).unwrap().unwrap();
        assert_eq!((o.nodes, o.docker), (2, true));
        let o = parse_args(&args("--agent /bin/true --docker --nodes 3")).unwrap().unwrap();
        assert_eq!((o.nodes, o.docker), (3, true));
        assert!(parse_args(&args("--help")).unwrap().is_none());
        assert!(parse_args(&args("--agent /bin/true --nodes 9")).is_err());
        assert!(parse_args(&args("--agent /bin/true --nodes")).is_err());
        assert!(parse_args(&args("--agent /bin/true --frobnicate")).is_err());
        assert!(parse_args(&args("--agent /nonexistent/agent")).is_err());
    }
}
