//! The command line.
//!
//! `overlay-agent [flags]` runs the daemon and accepts flanneld's command line
//! verbatim: the same flag names and defaults, Go's flag syntax (`-flag=v`,
//! `--flag=v`, `-flag v`, bare `--bool-flag` meaning true, `--bool=false`),
//! and every flag also read from `FLANNELD_<NAME>` (upper case, `-` → `_`)
//! when it is not on the command line.
//!
//! Subcommands: `cleanup`, `inspect`, `docker-opts` (the latter takes
//! mk-docker-opts.sh's getopts flags `-f -d -i -c -m -k`, left untouched by
//! the Go-syntax rewriting).
//!
//! [`args`] says what the flags are (clap argument structs); [`go_flags`]
//! turns flanneld's syntax and environment into clap's input; this module
//! puts the two together: [`parse_from_env`] rewrites, lets clap parse, and
//! checks what clap cannot.

mod args;
mod go_flags;

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use args::*;
pub use go_flags::{env_name, ENV_PREFIX};
use go_flags::{explain_env_error, prepare, NO_ENV};

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub command: Command,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
pub enum Command {
    /// No subcommand: run the daemon (flanneld's command line).
    Run(RunArgs),
    Cleanup(CleanupArgs),
    Inspect(InspectArgs),
    DockerOpts(DockerOptsArgs),
}

#[derive(Parser, Debug)]
#[command(
    name = "overlay-agent",
    version,
    about = "flannel-compatible overlay network agent (eBPF VXLAN data path)",
    long_about = "flannel-compatible overlay network agent with an eBPF VXLAN data path.\n\n\
        Without a subcommand it runs the daemon and takes flanneld's command line: \
        the same flags and defaults, Go flag syntax (-flag=value, --flag value, \
        bare --bool-flag = true, --bool-flag=false).",
    after_help = "Every flag is also read from the environment variable FLANNELD_<NAME> \
        (upper case, '-' replaced by '_', e.g. FLANNELD_ETCD_ENDPOINTS, FLANNELD_IP_MASQ); \
        a flag given on the command line wins over the environment.",
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    max_term_width = 100
)]
struct RawCli {
    #[command(subcommand)]
    sub: Option<RawSub>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
#[command(args_override_self = true)]
enum RawSub {
    /// Remove what the daemon set up on this node (data path, pins, masquerade rules; optionally the etcd lease)
    Cleanup(CleanupArgs),
    /// Show the data path state (peers, routes, counters) from the pinned maps
    Inspect(InspectArgs),
    /// Generate Docker daemon options from the subnet file (what mk-docker-opts.sh does)
    #[command(name = "docker-opts")]
    DockerOpts(DockerOptsArgs),
}

/// The clap command with every env-capable flag's help annotated with its
/// FLANNELD_* variable.
pub fn command() -> clap::Command {
    let annotate = |a: clap::Arg| {
        let Some(long) = a.get_long().map(str::to_owned) else {
            return a;
        };
        if NO_ENV.contains(&long.as_str()) {
            return a;
        }
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        a.help(format!("{help} [env: {}]", env_name(&long)))
    };
    let mut cmd = RawCli::command().mut_args(annotate);
    for sub in ["cleanup", "inspect"] {
        cmd = cmd.mut_subcommand(sub, |s| s.mut_args(annotate));
    }
    cmd
}

/// Parse a full argument list (argv[0] first), reading FLANNELD_* from the
/// process environment.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_from_env(args, |k| std::env::var(k).ok())
}

/// Like [`parse_from`], with the environment looked up through `env`
/// (tests use this to exercise the precedence logic without touching the
/// process environment).
pub fn parse_from_env<I, T, F>(args: I, env: F) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
    F: Fn(&str) -> Option<String>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = command();
    cmd.build();
    let prepared = prepare(&cmd, args, &env).map_err(|e| e.format(&mut cmd))?;
    let matches = match cmd.try_get_matches_from_mut(prepared.args) {
        Ok(m) => m,
        Err(e) => return Err(explain_env_error(e, &prepared.from_env, &mut cmd)),
    };
    let raw = RawCli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    let command = match raw.sub {
        None => {
            let mut run = raw.run;
            finish_etcd(&mut run.etcd, &mut cmd)?;
            if let Some((flag, why)) = run.compat.refused() {
                let origin = match prepared.from_env.get(flag) {
                    Some((k, _)) => format!(" (set through {k})"),
                    None => String::new(),
                };
                return Err(clap::Error::raw(
                    ErrorKind::ArgumentConflict,
                    format!("--{flag} is not supported{origin}: {why}"),
                )
                .format(&mut cmd));
            }
            Command::Run(run)
        }
        Some(RawSub::Cleanup(mut c)) => {
            finish_etcd(&mut c.etcd, &mut cmd)?;
            Command::Cleanup(c)
        }
        Some(RawSub::Inspect(i)) => Command::Inspect(i),
        Some(RawSub::DockerOpts(d)) => Command::DockerOpts(d),
    };
    Ok(Cli { command })
}

/// Parse the process's command line; on error (or --help / --version) print
/// clap's message and exit. `--print-config` prints the resolved settings as
/// JSON and exits 0.
pub fn parse() -> Cli {
    let cli = parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if let Command::Run(run) = &cli.command {
        if run.print_config {
            print!("{}", run.print_config_text());
            std::process::exit(0);
        }
    }
    cli
}

fn finish_etcd(etcd: &mut EtcdArgs, cmd: &mut clap::Command) -> Result<(), clap::Error> {
    etcd.endpoints.retain(|e| !e.is_empty());
    if etcd.endpoints.is_empty() {
        return Err(clap::Error::raw(
            ErrorKind::ValueValidation,
            "--etcd-endpoints: no etcd endpoint given",
        )
        .format(cmd));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }
}
