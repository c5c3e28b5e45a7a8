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
//! How it works: [`parse_from_env`] first rewrites the argument list into
//! clap's canonical `--name=value` form (Go syntax → clap syntax, a Go value
//! flag swallowing the next word as Go does), then appends `--name=value` for
//! every flag that is absent from the command line but set in the
//! environment (so the command line always wins), then lets clap parse.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

/// Prefix of the environment variables that stand in for flags.
pub const ENV_PREFIX: &str = "FLANNELD_";
/// flanneld's default `--etcd-endpoints`.
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";
/// flanneld's default `--etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// flanneld's default `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default `--bpf-pin-dir` (the data path appends `/v1`).
pub const DEFAULT_BPF_PIN_DIR: &str = crate::datapath::pins::DEFAULT_ROOT;
/// Default `--bridge`.
pub const DEFAULT_BRIDGE: &str = "cni0";

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

// ---------------------------------------------------------------------------
// Argument structs
// ---------------------------------------------------------------------------

/// etcd connection flags, shared by the daemon and `cleanup`.
#[derive(Args, Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdArgs {
    /// a comma-delimited list of etcd endpoints
    #[arg(
        long = "etcd-endpoints",
        value_name = "URLS",
        default_value = DEFAULT_ETCD_ENDPOINTS,
        value_delimiter = ',',
        action = clap::ArgAction::Set,
        value_parser = parse_endpoint,
        help_heading = "etcd"
    )]
    #[serde(rename = "etcd-endpoints")]
    pub endpoints: Vec<String>,

    /// etcd prefix
    #[arg(long = "etcd-prefix", value_name = "PREFIX", default_value = DEFAULT_ETCD_PREFIX, help_heading = "etcd")]
    #[serde(rename = "etcd-prefix")]
    pub prefix: String,

    /// SSL key file used to secure etcd communication (TLS client auth needs both key and cert)
    #[arg(long = "etcd-keyfile", value_name = "FILE", help_heading = "etcd")]
    #[serde(rename = "etcd-keyfile")]
    pub keyfile: Option<PathBuf>,

    /// SSL certification file used to secure etcd communication
    #[arg(long = "etcd-certfile", value_name = "FILE", help_heading = "etcd")]
    #[serde(rename = "etcd-certfile")]
    pub certfile: Option<PathBuf>,

    /// SSL Certificate Authority file used to secure etcd communication
    #[arg(long = "etcd-cafile", value_name = "FILE", help_heading = "etcd")]
    #[serde(rename = "etcd-cafile")]
    pub cafile: Option<PathBuf>,

    /// username for BasicAuth to etcd
    #[arg(long = "etcd-username", value_name = "USER", help_heading = "etcd")]
    #[serde(rename = "etcd-username")]
    pub username: Option<String>,

    /// password for BasicAuth to etcd
    #[arg(long = "etcd-password", value_name = "PASSWORD", help_heading = "etcd")]
    #[serde(rename = "etcd-password", serialize_with = "serialize_redacted")]
    pub password: Option<String>,
}

impl EtcdArgs {
    /// flanneld uses a TLS client certificate only when both key and cert are given.
    pub fn client_tls(&self) -> Option<(&PathBuf, &PathBuf)> {
        match (&self.keyfile, &self.certfile) {
            (Some(k), Some(c)) => Some((k, c)),
            _ => None,
        }
    }
}

/// The daemon's flags: every flanneld flag (same names, same defaults) plus our own.
#[derive(Args, Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub etcd: EtcdArgs,

    /// interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each option in order. Returns the first match found.
    #[arg(long, value_name = "IFACE", action = clap::ArgAction::Append, help_heading = "Interface selection")]
    pub iface: Vec<String>,

    /// regex expression to match the first interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each regex in order. Checked after --iface.
    #[arg(long = "iface-regex", value_name = "REGEX", action = clap::ArgAction::Append, help_heading = "Interface selection")]
    pub iface_regex: Vec<String>,

    /// detect the interface to use as the one the kernel routes the given IP through ('ip route get <ip>')
    #[arg(long = "iface-can-reach", value_name = "IP", value_parser = parse_ip, help_heading = "Interface selection")]
    pub iface_can_reach: Option<IpAddr>,

    /// IP accessible by other nodes for inter-host communication (default: the interface's address)
    #[arg(long = "public-ip", value_name = "IP", value_parser = parse_ipv4, help_heading = "Interface selection")]
    pub public_ip: Option<Ipv4Addr>,

    /// filename where env variables (subnet, MTU, ...) will be written to
    #[arg(long = "subnet-file", value_name = "PATH", default_value = DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,

    /// subnet lease renewal margin, in minutes, ranging from 1 to 1439
    #[arg(long = "subnet-lease-renew-margin", value_name = "MINUTES", default_value = "60", value_parser = parse_renew_margin)]
    pub subnet_lease_renew_margin: u32,

    /// setup IP masquerade rule for traffic destined outside of overlay network
    #[arg(long = "ip-masq", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "iptables")]
    pub ip_masq: bool,

    /// do not add --random-fully to the MASQUERADE rules
    #[arg(long = "ip-masq-fully-random-disable", alias = "ip-masq-random-fully-disable", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "iptables")]
    pub ip_masq_fully_random_disable: bool,

    /// resync period for iptables rules, in seconds
    #[arg(long = "iptables-resync", value_name = "SECONDS", default_value = "5", value_parser = parse_resync, help_heading = "iptables")]
    pub iptables_resync: u64,

    /// add default accept rules to FORWARD chain in iptables
    #[arg(long = "iptables-forward-rules", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "iptables")]
    pub iptables_forward_rules: bool,

    /// the IP address for healthz server to listen
    #[arg(long = "healthz-ip", value_name = "IP", default_value = "0.0.0.0", value_parser = parse_ip)]
    pub healthz_ip: IpAddr,

    /// the port for healthz server to listen (0 to disable); serves /healthz and /readyz
    #[arg(long = "healthz-port", value_name = "PORT", default_value = "0", value_parser = parse_port)]
    pub healthz_port: u16,

    /// log level verbosity (klog's -v; 0 = info, 1-3 = debug, 4+ = trace)
    #[arg(long = "v", value_name = "N", default_value = "0", value_parser = parse_verbosity)]
    #[serde(rename = "v")]
    pub verbosity: u32,

    /// bridge the pods are attached to
    #[arg(long, value_name = "NAME", default_value = DEFAULT_BRIDGE, value_parser = parse_nonempty, help_heading = "overlay-agent")]
    pub bridge: String,

    /// bpffs directory for pinned maps and programs (the data path uses <dir>/v1)
    #[arg(long = "bpf-pin-dir", value_name = "DIR", default_value = DEFAULT_BPF_PIN_DIR, help_heading = "overlay-agent")]
    pub bpf_pin_dir: PathBuf,

    /// drop foreign VXLAN packets early with an XDP program on the uplink (opt-in)
    #[arg(long = "xdp-guard", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "overlay-agent")]
    pub xdp_guard: bool,

    /// print the resolved settings as JSON and exit
    #[arg(long = "print-config", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "overlay-agent")]
    #[serde(skip)]
    pub print_config: bool,

    #[command(flatten)]
    #[serde(flatten)]
    pub compat: CompatArgs,
}

/// flanneld flags accepted so existing command lines keep working, but
/// without effect here (the agent is IPv4-only, uses etcd, logs with
/// env_logger). `--kube-subnet-mgr=true` is refused.
#[derive(Args, Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct CompatArgs {
    /// NOT SUPPORTED: this agent leases subnets from etcd; setting it true is an error
    #[arg(long = "kube-subnet-mgr", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "flanneld compatibility (accepted, no effect)")]
    #[serde(skip)]
    pub kube_subnet_mgr: bool,

    /// IPv6 address for inter-host communication (IPv6 is not supported; ignored)
    #[arg(long = "public-ipv6", value_name = "IP", value_parser = parse_ipv6, help_heading = "flanneld compatibility (accepted, no effect)")]
    pub public_ipv6: Option<Ipv6Addr>,

    /// klog per-module verbosity (ignored)
    #[arg(
        long = "vmodule",
        value_name = "SPEC",
        help_heading = "flanneld compatibility (accepted, no effect)"
    )]
    #[serde(skip)]
    pub vmodule: Option<String>,

    /// klog backtrace location (ignored)
    #[arg(
        long = "log_backtrace_at",
        value_name = "FILE:LINE",
        help_heading = "flanneld compatibility (accepted, no effect)"
    )]
    #[serde(skip)]
    pub log_backtrace_at: Option<String>,

    /// glog flag of old flanneld releases (ignored; logs go to stderr)
    #[arg(long = "logtostderr", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "flanneld compatibility (accepted, no effect)")]
    #[serde(skip)]
    pub logtostderr: Option<bool>,

    /// glog flag of old flanneld releases (ignored)
    #[arg(long = "alsologtostderr", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "flanneld compatibility (accepted, no effect)")]
    #[serde(skip)]
    pub alsologtostderr: Option<bool>,

    /// glog flag of old flanneld releases (ignored)
    #[arg(
        long = "log_dir",
        value_name = "DIR",
        help_heading = "flanneld compatibility (accepted, no effect)"
    )]
    #[serde(skip)]
    pub log_dir: Option<String>,

    /// glog flag of old flanneld releases (ignored)
    #[arg(
        long = "stderrthreshold",
        value_name = "LEVEL",
        help_heading = "flanneld compatibility (accepted, no effect)"
    )]
    #[serde(skip)]
    pub stderrthreshold: Option<String>,

    /// kube subnet manager setting (ignored without --kube-subnet-mgr)
    #[arg(
        long = "kube-api-url",
        value_name = "URL",
        help_heading = "flanneld compatibility (accepted, no effect)"
    )]
    #[serde(skip)]
    pub kube_api_url: Option<String>,

    /// kube subnet manager setting (ignored without --kube-subnet-mgr)
    #[arg(
        long = "kubeconfig-file",
        value_name = "FILE",
        help_heading = "flanneld compatibility (accepted, no effect)"
    )]
    #[serde(skip)]
    pub kubeconfig_file: Option<String>,

    /// kube subnet manager setting (ignored without --kube-subnet-mgr)
    #[arg(
        long = "kube-annotation-prefix",
        value_name = "PREFIX",
        help_heading = "flanneld compatibility (accepted, no effect)"
    )]
    #[serde(skip)]
    pub kube_annotation_prefix: Option<String>,

    /// kube subnet manager setting (ignored without --kube-subnet-mgr)
    #[arg(
        long = "net-config-path",
        value_name = "FILE",
        help_heading = "flanneld compatibility (accepted, no effect)"
    )]
    #[serde(skip)]
    pub net_config_path: Option<String>,

    /// kube subnet manager setting (ignored without --kube-subnet-mgr)
    #[arg(long = "set-node-network-unavailable", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "flanneld compatibility (accepted, no effect)")]
    #[serde(skip)]
    pub set_node_network_unavailable: Option<bool>,
}

/// `overlay-agent cleanup`: undo what the daemon set up on this node.
#[derive(Args, Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CleanupArgs {
    /// also delete this node's subnet lease from etcd (found through --subnet-file)
    #[arg(long = "release-lease", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set)]
    pub release_lease: bool,

    /// subnet file naming this node's lease
    #[arg(long = "subnet-file", value_name = "PATH", default_value = DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,

    /// bridge the pods are attached to
    #[arg(long, value_name = "NAME", default_value = DEFAULT_BRIDGE, value_parser = parse_nonempty)]
    pub bridge: String,

    /// bpffs directory for pinned maps and programs
    #[arg(long = "bpf-pin-dir", value_name = "DIR", default_value = DEFAULT_BPF_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,

    #[command(flatten)]
    #[serde(flatten)]
    pub etcd: EtcdArgs,
}

/// `overlay-agent inspect`: show the data path state.
#[derive(Args, Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct InspectArgs {
    /// print JSON instead of text
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set)]
    pub json: bool,

    /// bpffs directory for pinned maps and programs
    #[arg(long = "bpf-pin-dir", value_name = "DIR", default_value = DEFAULT_BPF_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
}

/// `overlay-agent docker-opts`: mk-docker-opts.sh (same getopts flags).
#[derive(Args, Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerOptsArgs {
    /// Path to flannel env file
    #[arg(short = 'f', value_name = "FLANNEL-ENV-FILE", default_value = DEFAULT_SUBNET_FILE)]
    pub env_file: PathBuf,

    /// Path to Docker env file to write to
    #[arg(
        short = 'd',
        value_name = "DOCKER-ENV-FILE",
        default_value = "/run/docker_opts.env"
    )]
    pub out_file: PathBuf,

    /// Output each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
    #[arg(short = 'i')]
    pub individual: bool,

    /// Output combined Docker options into DOCKER_OPTS var
    #[arg(short = 'c')]
    pub combined: bool,

    /// Do not output --ip-masq (useful for older Docker version)
    #[arg(short = 'm')]
    pub no_ip_masq: bool,

    /// Set the combined options key to this value
    #[arg(short = 'k', value_name = "COMBINED-KEY", default_value = "DOCKER_OPTS", value_parser = parse_shell_name)]
    pub key: String,
}

impl Default for RunArgs {
    /// flanneld's defaults (what an empty command line with no FLANNELD_* means).
    fn default() -> Self {
        match parse_from_env(["overlay-agent"], |_| None) {
            Ok(Cli {
                command: Command::Run(r),
            }) => r,
            other => unreachable!("empty command line must parse: {other:?}"),
        }
    }
}

impl RunArgs {
    /// The resolved settings as JSON (what `--print-config` prints). The etcd
    /// password is redacted; compatibility flags without effect are left out.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("RunArgs serializes")
    }

    /// Pretty JSON text of [`RunArgs::to_json`], newline terminated.
    pub fn print_config_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.to_json()).expect("json");
        s.push('\n');
        s
    }

    /// `log` level filter matching flanneld's `-v`.
    pub fn log_level(&self) -> log::LevelFilter {
        match self.verbosity {
            0 => log::LevelFilter::Info,
            1..=3 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }
}

fn serialize_redacted<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

// ---------------------------------------------------------------------------
// clap front
// ---------------------------------------------------------------------------

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

const SUBCOMMANDS: &[&str] = &["cleanup", "inspect", "docker-opts"];
/// Flags never read from the environment.
const NO_ENV: &[&str] = &["help", "version", "print-config"];

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

/// `FLANNELD_<NAME>` for a flag name.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
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
            if run.compat.kube_subnet_mgr {
                let origin = match prepared.from_env.get("kube-subnet-mgr") {
                    Some((k, _)) => format!(" (set through {k})"),
                    None => String::new(),
                };
                return Err(clap::Error::raw(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "--kube-subnet-mgr is not supported{origin}: this agent uses etcd \
                         for subnet leases; drop the flag and point --etcd-endpoints / \
                         --etcd-prefix at the cluster's etcd"
                    ),
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

/// Rewrite a clap error about a value that came from the environment so it
/// names the variable.
fn explain_env_error(
    e: clap::Error,
    from_env: &BTreeMap<String, (String, String)>,
    cmd: &mut clap::Command,
) -> clap::Error {
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return e;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let name = arg
        .trim_start_matches('-')
        .split([' ', '=', '['])
        .next()
        .unwrap_or("")
        .to_owned();
    let Some((key, value)) = from_env.get(&name) else {
        return e;
    };
    let reason = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "invalid value".to_owned());
    clap::Error::raw(
        e.kind(),
        format!("invalid value '{value}' in environment variable {key} (for --{name}): {reason}"),
    )
    .format(cmd)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagKind {
    /// takes no value (help, version)
    NoValue,
    /// Go bool: optional `=value`, never the next word
    Bool,
    /// takes a value: `=value` or the next word
    Value,
}

struct Prepared {
    args: Vec<OsString>,
    /// long name → (env var, value) for flags filled from the environment
    from_env: BTreeMap<String, (String, String)>,
}

/// Go flag syntax → clap canonical syntax, plus environment fallback.
fn prepare<F: Fn(&str) -> Option<String>>(
    cmd: &clap::Command,
    args: Vec<OsString>,
    env: &F,
) -> Result<Prepared, clap::Error> {
    let mut it = args.into_iter();
    let mut out: Vec<OsString> = Vec::new();
    if let Some(argv0) = it.next() {
        out.push(argv0);
    }
    let rest: Vec<OsString> = it.collect();

    // Which (sub)command's flags apply.
    let (ctx, start) = match rest.first().and_then(|a| a.to_str()) {
        Some(s) if SUBCOMMANDS.contains(&s) || s == "help" => (Some(s.to_owned()), 1),
        _ => (None, 0),
    };
    out.extend(rest[..start].iter().cloned());
    let ctx_cmd = match &ctx {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name) {
            Some(c) => c,
            None => cmd,
        },
    };
    // docker-opts keeps getopts syntax; help has no flags of interest.
    if matches!(ctx.as_deref(), Some("docker-opts") | Some("help")) {
        out.extend(rest[start..].iter().cloned());
        return Ok(Prepared {
            args: out,
            from_env: BTreeMap::new(),
        });
    }

    // long name (and aliases) → (primary long, kind)
    let mut known: BTreeMap<String, (String, FlagKind)> = BTreeMap::new();
    // value flags whose default is "unset": Go treats `--flag=` as unset
    let mut empty_means_unset: BTreeSet<String> = BTreeSet::new();
    for a in ctx_cmd.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        let kind = if !a.get_action().takes_values() {
            FlagKind::NoValue
        } else if a.is_require_equals_set() {
            FlagKind::Bool
        } else {
            FlagKind::Value
        };
        if kind == FlagKind::Value && a.get_default_values().is_empty() {
            empty_means_unset.insert(long.to_owned());
        }
        known.insert(long.to_owned(), (long.to_owned(), kind));
        for alias in a.get_all_aliases().unwrap_or_default() {
            known.insert(alias.to_owned(), (long.to_owned(), kind));
        }
    }
    // clap's own flags are not in get_arguments() before/after build in all cases
    known
        .entry("help".to_owned())
        .or_insert(("help".to_owned(), FlagKind::NoValue));
    if ctx.is_none() {
        known
            .entry("version".to_owned())
            .or_insert(("version".to_owned(), FlagKind::NoValue));
    }

    let mut present: BTreeSet<String> = BTreeSet::new();
    let rest: Vec<OsString> = rest[start..].to_vec();
    let mut i = 0;
    let mut terminator: Option<usize> = None;
    while i < rest.len() {
        let raw = &rest[i];
        let Some(tok) = raw.to_str() else {
            out.push(raw.clone());
            i += 1;
            continue;
        };
        if tok == "--" {
            terminator = Some(out.len());
            out.extend(rest[i..].iter().cloned());
            break;
        }
        let body = if let Some(b) = tok.strip_prefix("--") {
            Some((b, 2))
        } else if let Some(b) = tok.strip_prefix('-') {
            if b.is_empty() {
                None
            } else {
                Some((b, 1))
            }
        } else {
            None
        };
        let Some((body, dashes)) = body else {
            out.push(raw.clone());
            i += 1;
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        match known.get(name) {
            Some((primary, kind)) => {
                present.insert(primary.clone());
                match kind {
                    FlagKind::NoValue => {
                        if primary == "version" {
                            // Go: -version is a bool flag; --version=false is a no-op
                            match value.map(parse_go_bool) {
                                Some(Ok(false)) => {}
                                _ => out.push("--version".into()),
                            }
                        } else {
                            out.push(format!("--{name}").into());
                        }
                    }
                    FlagKind::Bool => match value {
                        Some(v) => out.push(format!("--{name}={v}").into()),
                        None => {
                            // Go never takes a separate word as a bool's value
                            // (it would silently stop parsing there): say so.
                            if let Some(next) = rest.get(i + 1).and_then(|n| n.to_str()) {
                                if parse_go_bool(next).is_ok() {
                                    return Err(clap::Error::raw(
                                        ErrorKind::InvalidValue,
                                        format!(
                                            "'{tok} {next}': a boolean flag takes its value \
                                             after '=', write --{name}={next}"
                                        ),
                                    ));
                                }
                            }
                            out.push(format!("--{name}").into());
                        }
                    },
                    FlagKind::Value => match value {
                        Some("") if empty_means_unset.contains(primary) => {}
                        Some(v) => out.push(format!("--{name}={v}").into()),
                        None => {
                            if rest.get(i + 1).is_some_and(|n| n.is_empty())
                                && empty_means_unset.contains(primary)
                            {
                                i += 1;
                            } else if let Some(next) = rest.get(i + 1) {
                                let mut s = OsString::from(format!("--{name}="));
                                s.push(next);
                                out.push(s);
                                i += 1;
                            } else {
                                out.push(format!("--{name}").into());
                            }
                        }
                    },
                }
            }
            None => {
                if dashes == 1 && name.chars().count() == 1 {
                    // a real short flag (-h)
                    out.push(raw.clone());
                } else {
                    // unknown: let clap report it in long form
                    out.push(format!("--{body}").into());
                }
            }
        }
        i += 1;
    }

    // Environment fallback for flags absent from the command line.
    let mut from_env = BTreeMap::new();
    let mut env_tokens: Vec<OsString> = Vec::new();
    for a in ctx_cmd.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        if NO_ENV.contains(&long) || present.contains(long) {
            continue;
        }
        let key = env_name(long);
        if let Some(v) = env(&key) {
            if v.is_empty() {
                continue;
            }
            env_tokens.push(format!("--{long}={v}").into());
            from_env.insert(long.to_owned(), (key, v));
        }
    }
    match terminator {
        Some(pos) => {
            out.splice(pos..pos, env_tokens);
        }
        None => out.extend(env_tokens),
    }
    Ok(Prepared {
        args: out,
        from_env,
    })
}

// ---------------------------------------------------------------------------
// Value parsers (Go semantics)
// ---------------------------------------------------------------------------

/// Go's strconv.ParseBool.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (use true or false)")),
    }
}

/// Go's strconv.ParseInt(s, 0, 64): optional sign, 0x / 0o / 0b prefixes,
/// a leading 0 meaning octal, underscores allowed only after a prefix.
pub fn parse_go_int(s: &str) -> Result<i64, String> {
    let err = || format!("'{s}' is not an integer");
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return Err(err());
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_owned(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_owned(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_owned(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_owned(), true)
    } else {
        (10, lower.clone(), false)
    };
    if digits.contains('_') && !prefixed {
        return Err(err());
    }
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err(err());
    }
    let v = i128::from_str_radix(&digits, radix).map_err(|_| err())?;
    let v = if neg { -v } else { v };
    i64::try_from(v).map_err(|_| format!("'{s}' is out of range"))
}

fn parse_renew_margin(s: &str) -> Result<u32, String> {
    let v = parse_go_int(s)?;
    if !(1..=1439).contains(&v) {
        return Err(format!(
            "{v} is out of range: the renew margin is in minutes and must be between 1 and 1439 \
             (less than the 24 h lease)"
        ));
    }
    Ok(v as u32)
}

fn parse_resync(s: &str) -> Result<u64, String> {
    let v = parse_go_int(s)?;
    if v < 1 {
        return Err(format!(
            "{v} is out of range: the resync period must be at least 1 second"
        ));
    }
    Ok(v as u64)
}

fn parse_port(s: &str) -> Result<u16, String> {
    let v = parse_go_int(s)?;
    u16::try_from(v).map_err(|_| format!("{v} is not a port number (0-65535, 0 = off)"))
}

fn parse_verbosity(s: &str) -> Result<u32, String> {
    let v = parse_go_int(s)?;
    u32::try_from(v).map_err(|_| format!("{v} is not a verbosity level (0 or more)"))
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an IP address"))
}

fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an IPv4 address"))
}

fn parse_ipv6(s: &str) -> Result<Ipv6Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an IPv6 address"))
}

fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

/// One element of --etcd-endpoints: whitespace and stray quotes removed
/// (they survive some EnvironmentFile / unit-file quoting styles).
fn parse_endpoint(s: &str) -> Result<String, String> {
    let t = s.trim().trim_matches(|c| c == '"' || c == '\'').trim();
    Ok(t.to_owned())
}

fn parse_shell_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("'{s}' is not a valid shell variable name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> RunArgs {
        let mut v = vec!["overlay-agent"];
        v.extend_from_slice(args);
        match parse_from_env(v, |_| None).unwrap().command {
            Command::Run(r) => r,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn go_bool_forms() {
        assert!(run(&["--ip-masq"]).ip_masq);
        assert!(run(&["-ip-masq"]).ip_masq);
        assert!(run(&["--ip-masq=true"]).ip_masq);
        assert!(run(&["-ip-masq=1"]).ip_masq);
        assert!(!run(&["--ip-masq=false"]).ip_masq);
        assert!(!run(&["--iptables-forward-rules=false"]).iptables_forward_rules);
        assert!(run(&[]).iptables_forward_rules);
    }

    #[test]
    fn go_ints() {
        assert_eq!(parse_go_int("0x10"), Ok(16));
        assert_eq!(parse_go_int("010"), Ok(8));
        assert_eq!(parse_go_int("-3"), Ok(-3));
        assert!(parse_go_int("1_0").is_err());
        assert_eq!(parse_go_int("0x1_0"), Ok(16));
        assert!(parse_go_int("").is_err());
    }

    #[test]
    fn value_takes_next_word() {
        let r = run(&["-etcd-prefix", "/x", "--iface", "eth0", "--v", "3"]);
        assert_eq!(r.etcd.prefix, "/x");
        assert_eq!(r.iface, vec!["eth0"]);
        assert_eq!(r.verbosity, 3);
        assert_eq!(run(&["-v=2"]).verbosity, 2);
        assert_eq!(run(&["-v", "4"]).verbosity, 4);
    }
}
