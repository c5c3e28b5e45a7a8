//! The command line's vocabulary: flanneld's flags, their defaults and value
//! syntax, as clap argument structs. How Go's flag syntax and `FLANNELD_*`
//! reach clap is `go_flags`' business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::strconv::{parse_go_bool, parse_go_int};

/// flanneld's default `--etcd-endpoints`.
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";
/// flanneld's default `--etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// flanneld's default `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default `--bpf-pin-dir` (the data path appends `/v1`).
pub const DEFAULT_BPF_PIN_DIR: &str = crate::datapath::pins::DEFAULT_ROOT;

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

    /// IPv6 accessible by other nodes for inter-host communication, with "EnableIPv6" (default: the interface's IPv6 address)
    #[arg(long = "public-ipv6", value_name = "IP", value_parser = parse_ipv6, help_heading = "Interface selection")]
    pub public_ipv6: Option<Ipv6Addr>,

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

    /// add a blackhole route for this node's lease, so traffic for its unallocated pod IPs is dropped instead of following the default route
    #[arg(long = "ip-blackhole-route", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set)]
    pub ip_blackhole_route: bool,

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

    /// bridge the pods are attached to (default: the bridge that carries the lease's gateway address, FLANNEL_SUBNET: docker0, br-<id>, cni0)
    #[arg(long, value_name = "NAME", value_parser = parse_nonempty, help_heading = "overlay-agent")]
    pub bridge: Option<String>,

    /// send all pod traffic through the kernel's forwarding (and so the host firewall's FORWARD chain) instead of the BPF fast path
    #[arg(long = "kernel-forwarding", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "overlay-agent")]
    pub kernel_forwarding: bool,

    /// bpffs directory for pinned maps and programs (the data path uses <dir>/v<layout version>)
    #[arg(long = "bpf-pin-dir", value_name = "DIR", default_value = DEFAULT_BPF_PIN_DIR, help_heading = "overlay-agent")]
    pub bpf_pin_dir: PathBuf,

    /// drop foreign VXLAN packets early with an XDP program on the uplink (opt-in)
    #[arg(long = "xdp-guard", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "overlay-agent")]
    pub xdp_guard: bool,

    /// decapsulate VXLAN in an XDP program on the uplink (before GRO) instead of TC (opt-in; see BENCHMARKS.md before using it)
    #[arg(long = "xdp-decap", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "overlay-agent")]
    pub xdp_decap: bool,

    /// how --xdp-guard and --xdp-decap attach: native (in the NIC driver; the point of XDP) or generic (after the skb is made; any device)
    #[arg(long = "xdp-mode", value_name = "MODE", value_enum, default_value = "native", help_heading = "overlay-agent")]
    pub xdp_mode: XdpModeArg,

    /// log every packet the BPF programs drop (program, reason, addresses, ports), through the agent's log; off, it costs nothing
    #[arg(long = "bpf-log-drops", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "overlay-agent")]
    pub bpf_log_drops: bool,

    /// print the resolved settings as JSON and exit
    #[arg(long = "print-config", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = "overlay-agent")]
    #[serde(skip)]
    pub print_config: bool,

    #[command(flatten)]
    #[serde(flatten)]
    pub compat: CompatArgs,
}

/// flanneld flags (and old glog flags) that have no counterpart here. They
/// are parsed so that the error can say why the flag is refused instead of
/// "unexpected argument"; none of them is ever accepted and ignored. The
/// glog flags whose meaning this agent has anyway (it logs to stderr only)
/// are accepted: `--logtostderr[=true]`, `--alsologtostderr`,
/// `--stderrthreshold`, and `--log_dir` (files only exist with
/// `--logtostderr=false`, which is refused).
#[derive(Args, Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct CompatArgs {
    /// NOT SUPPORTED: this agent leases subnets from etcd; setting it true is an error
    #[arg(long = "kube-subnet-mgr", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = REFUSED)]
    #[serde(skip)]
    pub kube_subnet_mgr: bool,

    /// NOT SUPPORTED (klog per-Go-file verbosity): an error when set; use -v or RUST_LOG
    #[arg(long = "vmodule", value_name = "SPEC", help_heading = REFUSED)]
    #[serde(skip)]
    pub vmodule: Option<String>,

    /// NOT SUPPORTED (klog stack traces at a Go file:line): an error when set
    #[arg(long = "log_backtrace_at", value_name = "FILE:LINE", help_heading = REFUSED)]
    #[serde(skip)]
    pub log_backtrace_at: Option<String>,

    /// glog flag of old flanneld releases: true is what this agent does; false (log files) is an error
    #[arg(long = "logtostderr", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = REFUSED)]
    #[serde(skip)]
    pub logtostderr: Option<bool>,

    /// glog flag of old flanneld releases (logs go to stderr either way, as with flanneld's forced --logtostderr)
    #[arg(long = "alsologtostderr", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = REFUSED)]
    #[serde(skip)]
    pub alsologtostderr: Option<bool>,

    /// glog flag of old flanneld releases (no log files are written, as with flanneld's forced --logtostderr)
    #[arg(long = "log_dir", value_name = "DIR", help_heading = REFUSED)]
    #[serde(skip)]
    pub log_dir: Option<String>,

    /// glog flag of old flanneld releases (every level goes to stderr, as with flanneld's forced --logtostderr)
    #[arg(long = "stderrthreshold", value_name = "LEVEL", help_heading = REFUSED)]
    #[serde(skip)]
    pub stderrthreshold: Option<String>,

    /// NOT SUPPORTED (Kubernetes subnet manager only): an error when set
    #[arg(long = "kube-api-url", value_name = "URL", help_heading = REFUSED)]
    #[serde(skip)]
    pub kube_api_url: Option<String>,

    /// NOT SUPPORTED (Kubernetes subnet manager only): an error when set
    #[arg(long = "kubeconfig-file", value_name = "FILE", help_heading = REFUSED)]
    #[serde(skip)]
    pub kubeconfig_file: Option<String>,

    /// NOT SUPPORTED (Kubernetes subnet manager only): an error when set
    #[arg(long = "kube-annotation-prefix", value_name = "PREFIX", help_heading = REFUSED)]
    #[serde(skip)]
    pub kube_annotation_prefix: Option<String>,

    /// NOT SUPPORTED (Kubernetes subnet manager only; the network config comes from etcd): an error when set
    #[arg(long = "net-config-path", value_name = "FILE", help_heading = REFUSED)]
    #[serde(skip)]
    pub net_config_path: Option<String>,

    /// NOT SUPPORTED (Kubernetes subnet manager only): an error when set
    #[arg(long = "set-node-network-unavailable", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, help_heading = REFUSED)]
    #[serde(skip)]
    pub set_node_network_unavailable: Option<bool>,
}

const REFUSED: &str = "flanneld flags without a counterpart here (refused when set, unless noted)";

impl CompatArgs {
    /// The first flag given that this agent refuses, as (flag name, why).
    pub fn refused(&self) -> Option<(&'static str, String)> {
        let kube = |flag: &'static str| {
            (
                flag,
                "it configures flanneld's Kubernetes subnet manager (--kube-subnet-mgr), which this \
                 agent does not have (it uses etcd); flanneld ignores it in etcd mode, and this \
                 agent refuses it rather than ignore it: remove it"
                    .to_owned(),
            )
        };
        if self.kube_subnet_mgr {
            return Some((
                "kube-subnet-mgr",
                "this agent uses etcd for subnet leases; drop the flag and point --etcd-endpoints / \
                 --etcd-prefix at the cluster's etcd"
                    .to_owned(),
            ));
        }
        if self.vmodule.as_deref().is_some_and(|v| !v.is_empty()) {
            return Some((
                "vmodule",
                "klog's per-Go-file verbosity has no counterpart here; use -v=N, or \
                 RUST_LOG=overlay_agent::<module>=debug for one module"
                    .to_owned(),
            ));
        }
        if self.log_backtrace_at.as_deref().is_some_and(|v| !v.is_empty()) {
            return Some(("log_backtrace_at", "klog's stack trace at a Go source line has no counterpart here; remove it".to_owned()));
        }
        if self.logtostderr == Some(false) {
            return Some((
                "logtostderr",
                "false asks for log files; this agent logs to stderr only (use the service manager's \
                 journal or redirect stderr)"
                    .to_owned(),
            ));
        }
        if self.kube_api_url.is_some() {
            return Some(kube("kube-api-url"));
        }
        if self.kubeconfig_file.is_some() {
            return Some(kube("kubeconfig-file"));
        }
        if self.kube_annotation_prefix.is_some() {
            return Some(kube("kube-annotation-prefix"));
        }
        if self.net_config_path.is_some() {
            return Some((
                "net-config-path",
                "the network config is read from etcd (<etcd-prefix>/config), as flanneld does in \
                 etcd mode; the file is only read by flanneld's Kubernetes subnet manager: remove it"
                    .to_owned(),
            ));
        }
        if self.set_node_network_unavailable.is_some() {
            return Some(kube("set-node-network-unavailable"));
        }
        None
    }
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

    /// also remove the cluster route and our address from this bridge (what agents before the tunnel device set up)
    #[arg(long, value_name = "NAME", value_parser = parse_nonempty)]
    pub bridge: Option<String>,

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
        match super::parse_from_env(["overlay-agent"], |_| None) {
            Ok(super::Cli {
                command: super::Command::Run(r),
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

// Value parsers: Go's semantics; clap shows the error message.

fn parse_renew_margin(s: &str) -> Result<u32, String> {
    let v = parse_go_int(s).map_err(|e| e.to_string())?;
    if !(1..=1439).contains(&v) {
        return Err(format!(
            "{v} is out of range: the renew margin is in minutes and must be between 1 and 1439 \
             (less than the 24 h lease)"
        ));
    }
    Ok(v as u32)
}

fn parse_resync(s: &str) -> Result<u64, String> {
    let v = parse_go_int(s).map_err(|e| e.to_string())?;
    if v < 1 {
        return Err(format!(
            "{v} is out of range: the resync period must be at least 1 second"
        ));
    }
    Ok(v as u64)
}

fn parse_port(s: &str) -> Result<u16, String> {
    let v = parse_go_int(s).map_err(|e| e.to_string())?;
    u16::try_from(v).map_err(|_| format!("{v} is not a port number (0-65535, 0 = off)"))
}

fn parse_verbosity(s: &str) -> Result<u32, String> {
    let v = parse_go_int(s).map_err(|e| e.to_string())?;
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

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    #[default]
    Native,
    Generic,
}
