//! `cargo xtask <command>`: set up a machine, build, and test overlay-agent.
mod bench;
mod build;
mod demo;
mod setup;
mod test;
mod util;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build and test overlay-agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build and the tests need on Debian 12 (root):
    /// apt packages, rust-src for nightly, bpf-linker for the nightly's LLVM,
    /// bpffs. Checks first; quick when all is there.
    Setup,
    /// Build the BPF object (nightly, bpfel-unknown-none, release with BTF).
    BuildEbpf,
    /// Build the BPF object, then the agent binary that embeds it.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, build-ebpf, clippy with warnings denied, then the whole test
    /// suite as root (`cargo test --workspace --no-fail-fast`); arguments
    /// after `--` go to `cargo test`, e.g.
    /// `cargo xtask test -- -p overlay-tests -- --nocapture`.
    Test {
        /// Stop the suite after this many minutes (0: no limit).
        #[arg(long, default_value_t = 30)]
        timeout_minutes: u64,
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// See it work: 3 nodes in network namespaces on a real etcd, pods
    /// pinging and talking across nodes, leases, maps and counters shown,
    /// everything removed at the end (options: --nodes N, --keep, --release,
    /// --no-color).
    #[command(disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Measure the data path against host-gw and flannel's kernel VXLAN,
    /// and the control plane at scale (results under target/bench/).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Cmd) -> Result<()> {
    let root = util::workspace_root();
    match command {
        Cmd::Setup => setup::run_setup(),
        Cmd::BuildEbpf => build::build_ebpf(&root).map(drop),
        Cmd::Build { release } => build::build_agent(&root, release).map(drop),
        Cmd::Test {
            timeout_minutes,
            cargo_args,
        } => {
            let timeout = (timeout_minutes > 0).then(|| Duration::from_secs(timeout_minutes * 60));
            test::run_tests(
                &root,
                &test::TestOptions {
                    timeout,
                    cargo_args,
                },
            )
        }
        Cmd::Demo { args } => demo::run(&root, &args),
        Cmd::Bench { args } => bench::run(&root, &args),
    }
}
