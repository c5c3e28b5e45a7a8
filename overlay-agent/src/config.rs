//! flannel's network config (the JSON stored at `<prefix>/config`) turned into
//! a validated [`NetworkConfig`].
//!
//! Rules follow flannel (`pkg/subnet/config.go`), see
//! shared/reference/flannel-compat.md:
//! - field names match case-insensitively at every level (Go's
//!   `encoding/json`: an exact match wins, else the first case-insensitive one);
//!   unknown fields are ignored (with a warning, to catch typos);
//! - `SubnetLen` defaults to 24 when `Network` is /22 or larger, else to the
//!   network prefix + 2; at most 30; the network must hold at least four subnets;
//! - `SubnetMin` defaults to the second subnet, `SubnetMax` to the last one;
//!   both must be inside `Network` and on a `SubnetLen` boundary (and we also
//!   require `SubnetMin <= SubnetMax`); `"0.0.0.0"` means "unset" as in flannel;
//! - a missing `Backend` means vxlan here ([`NetworkConfig::backend_defaulted`]
//!   tells the caller so it can say so; flannel's code would pick udp);
//! - only the vxlan and host-gw backends exist;
//! - dual stack as flannel's `CheckNetworkConfig`: `EnableIPv4` (default
//!   true) and `EnableIPv6` (default false) choose the families; with IPv6,
//!   `IPv6Network` is required, `IPv6SubnetLen` defaults to 64 when the
//!   network is a /62 or larger, else its prefix + 2 (at most 126, the
//!   network a /124 at the smallest), and `IPv6SubnetMin`/`IPv6SubnetMax`
//!   default to the second and the last subnet (`"::"` means unset). An
//!   IPv6-only config (`EnableIPv4: false`) needs no `Network`.
//!
//! Every error names the field and the offending value.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

/// The kernel's default VXLAN UDP port, which flannel uses for `Port: 0`
/// (not IANA's 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// flannel's default VNI.
pub const DEFAULT_VNI: u32 = 1;
/// VNIs are 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// What an unsupported backend type error lists.
pub const SUPPORTED_BACKENDS: &str = "vxlan, host-gw";
/// VXLAN over IPv4 costs 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Errors of [`NetworkConfig::parse`]. The messages name the field (with its
/// path, e.g. `Backend.Port`) and the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {reason}")]
    Json { reason: String },
    #[error("network config must be a JSON object, found {found}")]
    NotAnObject { found: String },
    #[error("network config field {field} is missing: {hint}")]
    Missing { field: String, hint: String },
    #[error("network config field {field} = {value}: expected {expected}")]
    WrongType {
        field: String,
        value: String,
        expected: &'static str,
    },
    #[error("network config field {field} = {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "network config field {field} = {value}: backend type not supported \
         (supported: {SUPPORTED_BACKENDS})"
    )]
    UnsupportedBackend { field: String, value: String },
}

/// The backends this agent implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendType {
    Vxlan,
    HostGw,
}

impl BackendType {
    /// The name flannel uses in the config and in leases' `BackendType`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
        }
    }

    /// Parses a backend name (case-insensitive, surrounding blanks ignored).
    pub fn from_name(name: &str) -> Option<BackendType> {
        let n = name.trim();
        if n.eq_ignore_ascii_case("vxlan") {
            Some(BackendType::Vxlan)
        } else if n.eq_ignore_ascii_case("host-gw") {
            Some(BackendType::HostGw)
        } else {
            None
        }
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendType {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendType::from_name(s).ok_or_else(|| ConfigError::UnsupportedBackend {
            field: "Backend.Type".into(),
            value: json_str(s),
        })
    }
}

/// `Backend` of the network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub kind: BackendType,
    /// VXLAN network identifier (default 1).
    pub vni: u32,
    /// VXLAN UDP port; `Port: 0` or missing gives 8472.
    pub port: u16,
    /// Uplink MTU override (`MTU: 0` or missing → `None`: use the uplink's).
    pub mtu: Option<u32>,
    /// vxlan only: peers on the same L2 segment get a plain route.
    pub direct_routing: bool,
    pub gbp: bool,
    pub learning: bool,
}

impl BackendConfig {
    /// flannel's vxlan defaults.
    pub fn vxlan() -> BackendConfig {
        BackendConfig {
            kind: BackendType::Vxlan,
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            mtu: None,
            direct_routing: false,
            gbp: false,
            learning: false,
        }
    }

    /// host-gw (VNI/port are carried but unused).
    pub fn host_gw() -> BackendConfig {
        BackendConfig {
            kind: BackendType::HostGw,
            ..BackendConfig::vxlan()
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::vxlan()
    }
}

/// The IPv6 half of a dual-stack (or IPv6-only) network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network` (host bits cleared).
    pub network: Ipv6Net,
    /// `IPv6SubnetLen`: prefix length of each node's IPv6 subnet.
    pub subnet_len: u8,
    /// `IPv6SubnetMin`: first subnet that may be handed out.
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`: last subnet that may be handed out.
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    fn size(&self) -> u128 {
        1u128 << (128 - self.subnet_len)
    }

    /// Whether `sn` is an IPv6 subnet this config could hand out: right
    /// prefix length, aligned, between IPv6SubnetMin and IPv6SubnetMax
    /// (flannel's `isIPv6SubnetConfigCompat`, plus the alignment check).
    pub fn is_compatible_subnet(&self, sn: Ipv6Net) -> bool {
        // IPv6SubnetMin and IPv6SubnetMax are inside IPv6Network (parse
        // checks them), so the range check covers the network's.
        let range = u128::from(self.subnet_min)..=u128::from(self.subnet_max);
        sn.prefix_len() == self.subnet_len && sn == sn.trunc() && range.contains(&u128::from(sn.addr()))
    }

    /// Every subnet from IPv6SubnetMin to IPv6SubnetMax, in order (lazily:
    /// a /48 holds 65,536 /64s).
    pub fn candidate_subnets(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        let size = self.size();
        let min = u128::from(self.subnet_min);
        let max = u128::from(self.subnet_max);
        let len = self.subnet_len;
        (0u128..)
            .map_while(move |i| i.checked_mul(size).and_then(|o| min.checked_add(o)))
            .take_while(move |a| *a <= max)
            .map(move |a| Ipv6Net::new(Ipv6Addr::from(a), len).expect("prefix <= 126"))
    }
}

/// A validated network config with every default filled in.
///
/// The IPv4 fields hold flannel's empty values (`0.0.0.0/0`, length 0,
/// `0.0.0.0`) when `enable_ipv4` is false: flannel's Go config does the
/// same, and its lease keys carry that empty subnet (`0.0.0.0-0&fc00::-64`).
/// [`NetworkConfig::ipv4_network`] gives the IPv4 network only when enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The whole overlay network (host bits cleared).
    pub network: Ipv4Net,
    /// Prefix length of each node's subnet.
    pub subnet_len: u8,
    /// First subnet that may be handed out (its network address).
    pub subnet_min: Ipv4Addr,
    /// Last subnet that may be handed out (its network address).
    pub subnet_max: Ipv4Addr,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    /// The IPv6 network, present exactly when `enable_ipv6`.
    pub ipv6: Option<Ipv6Config>,
    /// `EnableNFTables`: masquerade and forward rules as flannel's nftables
    /// tables instead of iptables chains.
    pub enable_nftables: bool,
    pub backend: BackendConfig,
    /// `Backend` (or its `Type`) was missing and vxlan was assumed: the caller
    /// should log it (flannel's code would have used udp).
    pub backend_defaulted: bool,
}

impl NetworkConfig {
    /// Parses and validates flannel's config JSON.
    pub fn parse(json: &str) -> Result<NetworkConfig, ConfigError> {
        let root: Value = serde_json::from_str(json).map_err(|e| ConfigError::Json {
            reason: e.to_string(),
        })?;
        let obj = match &root {
            Value::Object(m) => m,
            other => {
                return Err(ConfigError::NotAnObject {
                    found: short_json(other),
                })
            }
        };
        warn_unknown_fields(obj, "", TOP_LEVEL_FIELDS);

        let enable_ipv4 = opt_bool(obj, "EnableIPv4", "EnableIPv4")?.unwrap_or(true);
        let enable_ipv6 = opt_bool(obj, "EnableIPv6", "EnableIPv6")?.unwrap_or(false);
        let enable_nftables = opt_bool(obj, "EnableNFTables", "EnableNFTables")?.unwrap_or(false);
        if !enable_ipv4 && !enable_ipv6 {
            return Err(ConfigError::Invalid {
                field: "EnableIPv4".into(),
                value: "false".into(),
                reason: "EnableIPv6 is false too: at least one address family must be enabled"
                    .into(),
            });
        }
        for (name, only) in [("Networks", "Network"), ("IPv6Networks", "IPv6Network")] {
            if let Some((_, v)) = field(obj, name) {
                if matches!(v, Value::Array(a) if !a.is_empty()) {
                    log::warn!(
                        "network config field {name} = {} is ignored (multiple cluster CIDRs are \
                         not supported); only {only} is used",
                        short_json(v)
                    );
                }
            }
        }
        let (network, subnet_len, subnet_min, subnet_max) = if enable_ipv4 {
            parse_ipv4(obj)?
        } else {
            if let Some((_, v)) = field(obj, "Network").filter(|(_, v)| !v.is_null()) {
                log::warn!(
                    "network config field Network = {} is ignored: EnableIPv4 is false",
                    short_json(v)
                );
            }
            (Ipv4Net::default(), 0, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)
        };
        let ipv6 = if enable_ipv6 {
            Some(parse_ipv6(obj)?)
        } else {
            None
        };
        let (backend, backend_defaulted) = parse_backend(obj)?;

        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            enable_ipv4,
            enable_ipv6,
            ipv6,
            enable_nftables,
            backend,
            backend_defaulted,
        })
    }

    /// The IPv4 network, when IPv4 is enabled.
    pub fn ipv4_network(&self) -> Option<Ipv4Net> {
        self.enable_ipv4.then_some(self.network)
    }

    /// Number of addresses in one node subnet.
    /// (0 with IPv4 disabled: the empty subnet holds nothing to hand out.)
    pub fn subnet_size(&self) -> u32 {
        if !self.enable_ipv4 {
            return 0;
        }
        1u32 << (32 - self.subnet_len)
    }

    /// Number of subnets between SubnetMin and SubnetMax inclusive (0 with
    /// IPv4 disabled).
    pub fn subnet_count(&self) -> u64 {
        if !self.enable_ipv4 {
            return 0;
        }
        ((u32::from(self.subnet_max) - u32::from(self.subnet_min)) / self.subnet_size()) as u64 + 1
    }

    /// Whether `sn` is a subnet this config could hand out: right prefix length,
    /// aligned, inside Network and between SubnetMin and SubnetMax
    /// (flannel's `isSubnetConfigCompat`, plus the alignment/Network checks).
    /// With IPv4 disabled only the empty subnet `0.0.0.0/0` fits.
    pub fn is_compatible_subnet(&self, sn: Ipv4Net) -> bool {
        if !self.enable_ipv4 {
            return sn == Ipv4Net::default();
        }
        let a = u32::from(sn.addr());
        sn.prefix_len() == self.subnet_len
            && sn.addr() == sn.network()
            && self.network.contains(&sn.addr())
            && a >= u32::from(self.subnet_min)
            && a <= u32::from(self.subnet_max)
    }

    /// Whether a lease's IPv6 part fits: absent without IPv6, else a subnet
    /// the IPv6 config could hand out (flannel's `isIPv6SubnetConfigCompat`).
    pub fn is_compatible_ipv6_subnet(&self, sn: Option<Ipv6Net>) -> bool {
        match (&self.ipv6, sn) {
            (None, None) => true,
            (Some(v6), Some(sn)) => v6.is_compatible_subnet(sn),
            _ => false,
        }
    }

    /// Every subnet from SubnetMin to SubnetMax, in order (none with IPv4
    /// disabled).
    pub fn candidate_subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let enabled = self.enable_ipv4;
        let size = (self.subnet_size() as u64).max(1);
        let min = u32::from(self.subnet_min) as u64;
        let max = u32::from(self.subnet_max) as u64;
        let len = self.subnet_len;
        (0..)
            .map(move |i: u64| min + i * size)
            .take_while(move |a| enabled && *a <= max)
            .map(move |a| Ipv4Net::new(Ipv4Addr::from(a as u32), len).expect("prefix <= 30"))
    }
}

const TOP_LEVEL_FIELDS: &[&str] = &[
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "Networks",
    "IPv6Networks",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
];

const BACKEND_FIELDS: &[&str] = &[
    "Type",
    "VNI",
    "Port",
    "MTU",
    "DirectRouting",
    "GBP",
    "Learning",
];

/// Address ranges a Network must not overlap: its route via the tunnel
/// device would capture them (flanneld accepts these; its cluster route for
/// `0.0.0.0/0` then competes with the default route).
const RESERVED_RANGES: [(&str, &str); 3] = [
    ("0.0.0.0/8", "\"this network\" addresses"),
    ("127.0.0.0/8", "loopback"),
    ("224.0.0.0/3", "multicast, reserved and broadcast addresses"),
];

fn check_network_range(network: Ipv4Net) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        field: "Network".into(),
        value: json_str(&network.to_string()),
        reason,
    };
    if network.prefix_len() == 0 {
        return Err(invalid(
            "the whole IPv4 space: the cluster route would take the place of the default route".into(),
        ));
    }
    for (range, what) in RESERVED_RANGES {
        let range: Ipv4Net = range.parse().expect("a valid constant");
        if network.contains(&range.network()) || range.contains(&network.network()) {
            return Err(invalid(format!("overlaps {range} ({what}); the overlay needs private unicast addresses")));
        }
    }
    Ok(())
}

fn parse_network(s: &str) -> Result<Ipv4Net, ConfigError> {
    let t = s.trim();
    match t.parse::<Ipv4Net>() {
        Ok(n) => {
            let trunc = n.trunc();
            if trunc != n {
                log::warn!(
                    "network config field Network = \"{s}\" has host bits set; using {trunc}"
                );
            }
            Ok(trunc)
        }
        Err(_) => {
            let reason = if t.parse::<Ipv6Net>().is_ok() {
                "an IPv6 CIDR: Network is the IPv4 network; put it in IPv6Network with \
                 \"EnableIPv6\": true"
                    .to_string()
            } else if t.parse::<Ipv4Addr>().is_ok() {
                "missing the /prefix length (expected e.g. \"10.244.0.0/16\")".to_string()
            } else {
                "not an IPv4 CIDR (expected e.g. \"10.244.0.0/16\")".to_string()
            };
            Err(ConfigError::Invalid {
                field: "Network".into(),
                value: json_str(s),
                reason,
            })
        }
    }
}

/// The IPv4 half: Network, SubnetLen, SubnetMin and SubnetMax, with
/// flannel's defaults and checks.
fn parse_ipv4(obj: &Map<String, Value>) -> Result<(Ipv4Net, u8, Ipv4Addr, Ipv4Addr), ConfigError> {
    // Network
    let network = match field(obj, "Network") {
        None | Some((_, Value::Null)) => {
            return Err(ConfigError::Missing {
                field: "Network".into(),
                hint: "it must be an IPv4 CIDR such as \"10.244.0.0/16\"".into(),
            })
        }
        Some((_, Value::String(s))) => parse_network(s)?,
        Some((_, v)) => {
            return Err(ConfigError::WrongType {
                field: "Network".into(),
                value: short_json(v),
                expected: "an IPv4 CIDR string such as \"10.244.0.0/16\"",
            })
        }
    };
    let net_len = network.prefix_len();
    check_network_range(network)?;

    // SubnetLen
    let subnet_len = match opt_u64(obj, "SubnetLen", "SubnetLen")? {
        None | Some(0) => {
            if net_len > 28 {
                return Err(ConfigError::Invalid {
                    field: "Network".into(),
                    value: json_str(&network.to_string()),
                    reason: "network is too small: the smallest useful Network is a /28 \
                             (four subnets of /30)"
                        .into(),
                });
            } else if net_len <= 22 {
                24
            } else {
                net_len + 2
            }
        }
        Some(n) => {
            if n > 30 {
                return Err(ConfigError::Invalid {
                    field: "SubnetLen".into(),
                    value: n.to_string(),
                    reason: "must be at most 30 (each node needs room for a tunnel and a \
                             bridge address)"
                        .into(),
                });
            }
            let n = n as u8;
            if n < net_len.saturating_add(2) {
                return Err(ConfigError::Invalid {
                    field: "SubnetLen".into(),
                    value: n.to_string(),
                    reason: format!(
                        "Network {network} must be able to hold at least four subnets, so \
                         SubnetLen must be at least {}",
                        net_len + 2
                    ),
                });
            }
            n
        }
    };
    let size: u32 = 1u32 << (32 - subnet_len);
    let net_start = u32::from(network.network());
    let net_last_subnet = u32::from(network.broadcast()) - (size - 1);
    let mask: u32 = u32::MAX << (32 - subnet_len);

    let check_bound = |name: &str, ip: Option<Ipv4Addr>, default: u32| -> Result<Ipv4Addr, ConfigError> {
        match ip {
            None => Ok(Ipv4Addr::from(default)),
            Some(ip) if ip.is_unspecified() => Ok(Ipv4Addr::from(default)),
            Some(ip) => {
                if !network.contains(&ip) {
                    return Err(ConfigError::Invalid {
                        field: name.into(),
                        value: json_str(&ip.to_string()),
                        reason: format!("not inside Network {network}"),
                    });
                }
                let v = u32::from(ip);
                if v & mask != v {
                    return Err(ConfigError::Invalid {
                        field: name.into(),
                        value: json_str(&ip.to_string()),
                        reason: format!(
                            "not on a SubnetLen (/{subnet_len}) boundary (e.g. {})",
                            Ipv4Addr::from(v & mask)
                        ),
                    });
                }
                Ok(ip)
            }
        }
    };
    let subnet_min = check_bound(
        "SubnetMin",
        opt_ipv4(obj, "SubnetMin", "SubnetMin")?,
        net_start + size,
    )?;
    let subnet_max = check_bound(
        "SubnetMax",
        opt_ipv4(obj, "SubnetMax", "SubnetMax")?,
        net_last_subnet,
    )?;
    if u32::from(subnet_min) > u32::from(subnet_max) {
        return Err(ConfigError::Invalid {
            field: "SubnetMin".into(),
            value: json_str(&subnet_min.to_string()),
            reason: format!("greater than SubnetMax {subnet_max}"),
        });
    }
    Ok((network, subnet_len, subnet_min, subnet_max))
}

/// IPv6 ranges an IPv6Network must not overlap (the counterpart of
/// [`RESERVED_RANGES`]: its route via the tunnel would capture them).
const RESERVED_RANGES_V6: [(&str, &str); 3] = [
    ("::/8", "loopback, unspecified and IPv4-mapped addresses"),
    ("fe80::/10", "link-local addresses"),
    ("ff00::/8", "multicast addresses"),
];

/// The IPv6 half, validated as flannel's `CheckNetworkConfig` does (plus
/// the checks [`NetworkConfig::parse`] makes for IPv4).
fn parse_ipv6(obj: &Map<String, Value>) -> Result<Ipv6Config, ConfigError> {
    const EXAMPLE: &str = "an IPv6 CIDR string such as \"fd00:10:244::/48\"";
    let network = match field(obj, "IPv6Network") {
        None | Some((_, Value::Null)) => {
            return Err(ConfigError::Missing {
                field: "IPv6Network".into(),
                hint: format!("EnableIPv6 is true, so it must be {EXAMPLE}"),
            })
        }
        Some((_, Value::String(s))) => {
            let t = s.trim();
            let n: Ipv6Net = t.parse().map_err(|_| ConfigError::Invalid {
                field: "IPv6Network".into(),
                value: json_str(s),
                reason: if t.parse::<Ipv4Net>().is_ok() {
                    "an IPv4 CIDR: IPv6Network is the IPv6 network (IPv4 goes in Network)".into()
                } else if t.parse::<Ipv6Addr>().is_ok() {
                    format!("missing the /prefix length (expected {EXAMPLE})")
                } else {
                    format!("not {EXAMPLE}")
                },
            })?;
            let trunc = n.trunc();
            if trunc != n {
                log::warn!("network config field IPv6Network = \"{s}\" has host bits set; using {trunc}");
            }
            trunc
        }
        Some((_, v)) => {
            return Err(ConfigError::WrongType {
                field: "IPv6Network".into(),
                value: short_json(v),
                expected: EXAMPLE,
            })
        }
    };
    let invalid = |field: &str, value: String, reason: String| ConfigError::Invalid {
        field: field.into(),
        value,
        reason,
    };
    let net_text = json_str(&network.to_string());
    if network.prefix_len() == 0 {
        return Err(invalid(
            "IPv6Network",
            net_text,
            "the whole IPv6 space: the cluster route would take the place of the default route".into(),
        ));
    }
    for (range, what) in RESERVED_RANGES_V6 {
        let range: Ipv6Net = range.parse().expect("a valid constant");
        if network.contains(&range.network()) || range.contains(&network.network()) {
            return Err(invalid(
                "IPv6Network",
                net_text,
                format!("overlaps {range} ({what}); the overlay needs unicast addresses such as fd00::/8"),
            ));
        }
    }
    let net_len = network.prefix_len();
    let subnet_len = match opt_u64(obj, "IPv6SubnetLen", "IPv6SubnetLen")? {
        None | Some(0) => {
            if net_len > 124 {
                return Err(invalid(
                    "IPv6Network",
                    net_text,
                    "network is too small: the smallest useful IPv6Network is a /124 (four subnets of /126)".into(),
                ));
            } else if net_len <= 62 {
                64
            } else {
                net_len + 2
            }
        }
        Some(n) if n > 126 => {
            return Err(invalid(
                "IPv6SubnetLen",
                n.to_string(),
                "must be at most 126 (each node needs room for a tunnel and a bridge address)".into(),
            ))
        }
        Some(n) if (n as u8) < net_len.saturating_add(2) => {
            return Err(invalid(
                "IPv6SubnetLen",
                n.to_string(),
                format!(
                    "IPv6Network {network} must be able to hold at least four subnets, so IPv6SubnetLen \
                     must be at least {}",
                    net_len + 2
                ),
            ))
        }
        Some(n) => n as u8,
    };
    let size = 1u128 << (128 - subnet_len);
    let mask = u128::MAX << (128 - subnet_len);
    let first = u128::from(network.network());
    let last_subnet = u128::from(network.broadcast()) & mask;
    let bound = |name: &str, default: u128| -> Result<Ipv6Addr, ConfigError> {
        let ip = match field(obj, name) {
            None | Some((_, Value::Null)) => None,
            Some((_, Value::String(s))) if s.trim().is_empty() => None,
            Some((_, Value::String(s))) => Some(s.trim().parse::<Ipv6Addr>().map_err(|_| {
                invalid(name, json_str(s), "not an IPv6 address (expected e.g. \"fd00:10:244:1::\")".into())
            })?),
            Some((_, v)) => {
                return Err(ConfigError::WrongType {
                    field: name.into(),
                    value: short_json(v),
                    expected: "an IPv6 address string",
                })
            }
        };
        match ip {
            // "::" is flannel's "unset" (its IsEmpty).
            None => Ok(Ipv6Addr::from(default)),
            Some(ip) if ip.is_unspecified() => Ok(Ipv6Addr::from(default)),
            Some(ip) if !network.contains(&ip) => Err(invalid(
                name,
                json_str(&ip.to_string()),
                format!("not inside IPv6Network {network}"),
            )),
            Some(ip) if u128::from(ip) & mask != u128::from(ip) => Err(invalid(
                name,
                json_str(&ip.to_string()),
                format!(
                    "not on an IPv6SubnetLen (/{subnet_len}) boundary (e.g. {})",
                    Ipv6Addr::from(u128::from(ip) & mask)
                ),
            )),
            Some(ip) => Ok(ip),
        }
    };
    let subnet_min = bound("IPv6SubnetMin", first + size)?;
    let subnet_max = bound("IPv6SubnetMax", last_subnet)?;
    if u128::from(subnet_min) > u128::from(subnet_max) {
        return Err(invalid(
            "IPv6SubnetMin",
            json_str(&subnet_min.to_string()),
            format!("greater than IPv6SubnetMax {subnet_max}"),
        ));
    }
    Ok(Ipv6Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

fn parse_backend(obj: &Map<String, Value>) -> Result<(BackendConfig, bool), ConfigError> {
    let be = match field(obj, "Backend") {
        None | Some((_, Value::Null)) => return Ok((BackendConfig::vxlan(), true)),
        Some((_, Value::Object(m))) => m,
        Some((_, v)) => {
            return Err(ConfigError::WrongType {
                field: "Backend".into(),
                value: short_json(v),
                expected: "an object such as {\"Type\":\"vxlan\"}",
            })
        }
    };
    warn_unknown_fields(be, "Backend.", BACKEND_FIELDS);

    let (kind, defaulted) = match field(be, "Type") {
        None | Some((_, Value::Null)) => (BackendType::Vxlan, true),
        Some((_, Value::String(s))) if s.trim().is_empty() => (BackendType::Vxlan, true),
        Some((_, Value::String(s))) => (s.parse::<BackendType>()?, false),
        Some((_, v)) => {
            return Err(ConfigError::WrongType {
                field: "Backend.Type".into(),
                value: short_json(v),
                expected: "a string (vxlan or host-gw)",
            })
        }
    };

    let mut cfg = match kind {
        BackendType::Vxlan => BackendConfig::vxlan(),
        BackendType::HostGw => BackendConfig::host_gw(),
    };
    if let Some(vni) = opt_u64(be, "VNI", "Backend.VNI")? {
        if vni > MAX_VNI as u64 {
            return Err(ConfigError::Invalid {
                field: "Backend.VNI".into(),
                value: vni.to_string(),
                reason: format!("a VNI is 24 bits: at most {MAX_VNI}"),
            });
        }
        cfg.vni = vni as u32;
    }
    if let Some(port) = opt_u64(be, "Port", "Backend.Port")? {
        if port > u16::MAX as u64 {
            return Err(ConfigError::Invalid {
                field: "Backend.Port".into(),
                value: port.to_string(),
                reason: "not a UDP port (0..65535; 0 means 8472)".into(),
            });
        }
        cfg.port = if port == 0 {
            DEFAULT_VXLAN_PORT
        } else {
            port as u16
        };
    }
    if let Some(mtu) = opt_u64(be, "MTU", "Backend.MTU")? {
        if mtu != 0 {
            let min = match kind {
                BackendType::Vxlan => 68 + VXLAN_OVERHEAD as u64,
                BackendType::HostGw => 68,
            };
            if mtu < min || mtu > 65535 {
                return Err(ConfigError::Invalid {
                    field: "Backend.MTU".into(),
                    value: mtu.to_string(),
                    reason: format!("must be between {min} and 65535 for {kind} (0 = uplink MTU)"),
                });
            }
            cfg.mtu = Some(mtu as u32);
        }
    }
    if let Some(b) = opt_bool(be, "DirectRouting", "Backend.DirectRouting")? {
        cfg.direct_routing = b;
    }
    if let Some(b) = opt_bool(be, "GBP", "Backend.GBP")? {
        cfg.gbp = b;
    }
    if let Some(b) = opt_bool(be, "Learning", "Backend.Learning")? {
        cfg.learning = b;
    }
    Ok((cfg, defaulted))
}

// ---- case-insensitive JSON access (Go encoding/json semantics) ----

/// Looks `name` up in `obj` like Go's `encoding/json`: an exact match first,
/// else the first key equal ignoring ASCII case. Returns the key as written.
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<(&'a str, &'a Value)> {
    if let Some((k, v)) = obj.get_key_value(name) {
        return Some((k.as_str(), v));
    }
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, v)| (k.as_str(), v))
}

fn warn_unknown_fields(obj: &Map<String, Value>, path: &str, known: &[&str]) {
    for k in obj.keys() {
        if !known.iter().any(|n| n.eq_ignore_ascii_case(k)) {
            log::warn!("network config: unknown field {path}{k} ignored");
        }
    }
}

fn opt_bool(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<bool>, ConfigError> {
    match field(obj, name) {
        None | Some((_, Value::Null)) => Ok(None),
        Some((_, Value::Bool(b))) => Ok(Some(*b)),
        Some((_, v)) => Err(ConfigError::WrongType {
            field: path.into(),
            value: short_json(v),
            expected: "true or false",
        }),
    }
}

fn opt_u64(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<u64>, ConfigError> {
    match field(obj, name) {
        None | Some((_, Value::Null)) => Ok(None),
        Some((_, v @ Value::Number(n))) => match n.as_u64() {
            Some(x) => Ok(Some(x)),
            None => Err(ConfigError::WrongType {
                field: path.into(),
                value: short_json(v),
                expected: "a non-negative integer",
            }),
        },
        Some((_, v)) => Err(ConfigError::WrongType {
            field: path.into(),
            value: short_json(v),
            expected: "a non-negative integer",
        }),
    }
}

fn opt_ipv4(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<Ipv4Addr>, ConfigError> {
    match field(obj, name) {
        None | Some((_, Value::Null)) => Ok(None),
        Some((_, Value::String(s))) if s.trim().is_empty() => Ok(None),
        Some((_, Value::String(s))) => s.trim().parse::<Ipv4Addr>().map(Some).map_err(|_| {
            ConfigError::Invalid {
                field: path.into(),
                value: json_str(s),
                reason: "not an IPv4 address (expected e.g. \"10.244.1.0\")".into(),
            }
        }),
        Some((_, v)) => Err(ConfigError::WrongType {
            field: path.into(),
            value: short_json(v),
            expected: "an IPv4 address string",
        }),
    }
}

/// A JSON rendering of a value for error messages, cut to a sane length.
pub(crate) fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn json_str(s: &str) -> String {
    short_json(&Value::String(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn err(s: &str) -> String {
        NetworkConfig::parse(s).expect_err(s).to_string()
    }

    #[test]
    fn defaults_for_a_16() {
        let c = p(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert_eq!(c.network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert!(c.enable_ipv4 && !c.enable_ipv6 && !c.enable_nftables);
        assert!(p(r#"{"Network":"10.244.0.0/16","EnableNFTables":true}"#).enable_nftables);
        assert!(err(r#"{"Network":"10.244.0.0/16","EnableNFTables":"yes"}"#).contains("EnableNFTables"));
        assert_eq!(c.backend, BackendConfig::vxlan());
        assert_eq!(c.backend.port, 8472);
        assert_eq!(c.backend.vni, 1);
        assert!(!c.backend_defaulted);
        assert_eq!(c.subnet_count(), 255);
    }

    #[test]
    fn subnet_len_default_rule() {
        assert_eq!(p(r#"{"Network":"10.0.0.0/22"}"#).subnet_len, 24);
        assert_eq!(p(r#"{"Network":"10.0.0.0/8"}"#).subnet_len, 24);
        assert_eq!(p(r#"{"Network":"10.0.0.0/23"}"#).subnet_len, 25);
        assert_eq!(p(r#"{"Network":"10.0.0.0/28"}"#).subnet_len, 30);
        let c = p(r#"{"Network":"10.0.0.0/28"}"#);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 0, 0, 12));
        assert!(err(r#"{"Network":"10.0.0.0/29"}"#).contains("too small"));
    }

    #[test]
    fn case_insensitive_fields_and_defaulted_backend() {
        let c = p(r#"{"NetWork":"10.0.0.0/16"}"#);
        assert_eq!(c.network, "10.0.0.0/16".parse().unwrap());
        assert!(c.backend_defaulted);
        assert_eq!(c.backend.kind, BackendType::Vxlan);
        let c = p(r#"{"network":"10.0.0.0/16","subnetlen":26,"backend":{"type":"host-gw"}}"#);
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.backend.kind, BackendType::HostGw);
        assert!(!c.backend_defaulted);
        let c = p(r#"{"NETWORK":"10.0.0.0/16","BACKEND":{"TYPE":"VXLAN","vni":7,"port":4789,"directrouting":true,"gbp":true,"LEARNING":true,"mtu":9000}}"#);
        assert_eq!(
            c.backend,
            BackendConfig {
                kind: BackendType::Vxlan,
                vni: 7,
                port: 4789,
                mtu: Some(9000),
                direct_routing: true,
                gbp: true,
                learning: true
            }
        );
        // exact match wins over a case-insensitive one
        let c = p(r#"{"network":"10.9.0.0/16","Network":"10.0.0.0/16"}"#);
        assert_eq!(c.network, "10.0.0.0/16".parse().unwrap());
    }

    #[test]
    fn port_zero_is_8472_and_mtu_zero_is_none() {
        let c = p(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":0,"MTU":0}}"#);
        assert_eq!(c.backend.port, 8472);
        assert_eq!(c.backend.mtu, None);
    }

    #[test]
    fn networks_capturing_the_default_route_or_special_ranges_are_refused() {
        let e = err(r#"{"Network":"0.0.0.0/0"}"#);
        assert!(e.contains("Network") && e.contains("0.0.0.0/0") && e.contains("default route"), "{e}");
        for (net, says) in [("0.0.0.0/1", "0.0.0.0/8"), ("127.0.0.0/16", "loopback"), ("224.0.0.0/8", "multicast"), ("128.0.0.0/1", "224.0.0.0/3")] {
            let e = err(&format!(r#"{{"Network":"{net}"}}"#));
            assert!(e.contains(net) && e.contains(says), "{net}: {e}");
        }
        for ok in ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "1.0.0.0/8"] {
            p(&format!(r#"{{"Network":"{ok}"}}"#));
        }
    }

    #[test]
    fn errors_name_field_and_value() {
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#);
        assert!(e.contains("Backend.Type") && e.contains("\"udp\"") && e.contains("vxlan, host-gw"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard"}}"#);
        assert!(e.contains("wireguard") && e.contains("host-gw"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#);
        assert!(e.contains("IPv6Network") && e.contains("missing") && e.contains("EnableIPv6"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#);
        assert!(e.contains("SubnetLen") && e.contains("31") && e.contains("at most 30"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#);
        assert!(e.contains("SubnetLen") && e.contains("17") && e.contains("four subnets"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#);
        assert!(e.contains("SubnetMin") && e.contains("10.1.0.0") && e.contains("inside"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.3.128"}"#);
        assert!(e.contains("SubnetMax") && e.contains("10.0.3.128") && e.contains("boundary"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}"#);
        assert!(e.contains("SubnetMin") && e.contains("SubnetMax"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/33"}"#);
        assert!(e.contains("Network") && e.contains("10.0.0.0/33"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0"}"#);
        assert!(e.contains("Network") && e.contains("prefix"), "{e}");
        let e = err(r#"{"Network":"fd00::/48"}"#);
        assert!(e.contains("Network") && e.contains("IPv6Network"), "{e}");
        let e = err(r#"{"Network":16}"#);
        assert!(e.contains("Network") && e.contains("16"), "{e}");
        let e = err(r#"{"SubnetLen":24}"#);
        assert!(e.contains("Network") && e.contains("missing"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#);
        assert!(e.contains("SubnetLen") && e.contains("\"24\""), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":{"VNI":16777216}}"#);
        assert!(e.contains("Backend.VNI") && e.contains("16777216"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":{"Port":70000}}"#);
        assert!(e.contains("Backend.Port") && e.contains("70000"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":{"Port":-1}}"#);
        assert!(e.contains("Backend.Port") && e.contains("-1"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":{"DirectRouting":"yes"}}"#);
        assert!(e.contains("Backend.DirectRouting") && e.contains("yes"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#);
        assert!(e.contains("Backend") && e.contains("vxlan"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":{"MTU":100}}"#);
        assert!(e.contains("Backend.MTU") && e.contains("100"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","EnableIPv4":false}"#);
        assert!(e.contains("EnableIPv4") && e.contains("EnableIPv6 is false"), "{e}");
        assert!(err("[1]").contains("object"));
        assert!(err("{").contains("JSON"));
    }

    #[test]
    fn subnet_min_max_explicit() {
        let c = p(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.10.0","SubnetMax":"10.0.20.0"}"#);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 0, 10, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 0, 20, 0));
        assert_eq!(c.subnet_count(), 11);
        let all: Vec<_> = c.candidate_subnets().collect();
        assert_eq!(all.len(), 11);
        assert_eq!(all[0], "10.0.10.0/24".parse().unwrap());
        assert_eq!(all[10], "10.0.20.0/24".parse().unwrap());
        // "0.0.0.0" means unset, as in flannel
        let c = p(r#"{"Network":"10.0.0.0/16","SubnetMin":"0.0.0.0"}"#);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 0, 1, 0));
        assert!(c.is_compatible_subnet("10.0.1.0/24".parse().unwrap()));
        assert!(!c.is_compatible_subnet("10.0.0.0/24".parse().unwrap()));
        assert!(!c.is_compatible_subnet("10.0.1.0/25".parse().unwrap()));
        assert!(!c.is_compatible_subnet("10.1.1.0/24".parse().unwrap()));
    }

    fn v6(s: &str) -> Ipv6Config {
        p(s).ipv6.unwrap_or_else(|| panic!("{s}: no IPv6 half"))
    }

    #[test]
    fn dual_stack_defaults_follow_flannel() {
        let c = p(r#"{"Network":"10.70.0.0/16","EnableIPv6":true,"IPv6Network":"fd70::/48","Backend":{"Type":"vxlan"}}"#);
        assert!(c.enable_ipv4 && c.enable_ipv6);
        assert_eq!(c.ipv4_network(), Some("10.70.0.0/16".parse().unwrap()));
        let v = c.ipv6.clone().unwrap();
        assert_eq!(v.network, "fd70::/48".parse().unwrap());
        assert_eq!(v.subnet_len, 64);
        assert_eq!(v.subnet_min, "fd70:0:0:1::".parse::<Ipv6Addr>().unwrap(), "the second /64");
        assert_eq!(v.subnet_max, "fd70:0:0:ffff::".parse::<Ipv6Addr>().unwrap(), "the last /64");
        assert_eq!(v.candidate_subnets().count(), 65535);
        assert_eq!(v.candidate_subnets().next(), Some("fd70:0:0:1::/64".parse().unwrap()));
        assert!(c.is_compatible_ipv6_subnet(Some("fd70:0:0:7::/64".parse().unwrap())));
        assert!(!c.is_compatible_ipv6_subnet(Some("fd70::/64".parse().unwrap())), "first subnet");
        assert!(!c.is_compatible_ipv6_subnet(Some("fd70:0:0:7::/80".parse().unwrap())));
        assert!(!c.is_compatible_ipv6_subnet(Some("fd71:0:0:7::/64".parse().unwrap())));
        assert!(!c.is_compatible_ipv6_subnet(None), "a dual-stack config wants an IPv6 part");
        // IPv6SubnetLen default: 64 for a /62 or larger, else prefix + 2.
        assert_eq!(v6(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/62"}"#).subnet_len, 64);
        assert_eq!(v6(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/63"}"#).subnet_len, 65);
        let small = v6(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/124"}"#);
        assert_eq!((small.subnet_len, small.candidate_subnets().count()), (126, 3));
        // Without EnableIPv6 the IPv6 fields are ignored, as flannel does.
        let c = p(r#"{"Network":"10.0.0.0/16","IPv6Network":"fd00::/48"}"#);
        assert_eq!(c.ipv6, None);
        assert!(c.is_compatible_ipv6_subnet(None));
        assert!(!c.is_compatible_ipv6_subnet(Some("fd00:0:0:1::/64".parse().unwrap())));
    }

    #[test]
    fn ipv6_only_needs_no_network() {
        let c = p(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:1::/56","IPv6SubnetLen":60,"IPv6SubnetMin":"fd00:1:0:20::","IPv6SubnetMax":"fd00:1:0:40::","Backend":{"Type":"vxlan"}}"#);
        assert!(!c.enable_ipv4 && c.enable_ipv6);
        assert_eq!(c.ipv4_network(), None);
        assert_eq!(c.candidate_subnets().count(), 0);
        assert!(c.is_compatible_subnet(Ipv4Net::default()), "flannel's empty IPv4 part");
        assert!(!c.is_compatible_subnet("10.0.1.0/24".parse().unwrap()));
        let v = c.ipv6.unwrap();
        assert_eq!(v.subnet_len, 60);
        let all: Vec<Ipv6Net> = v.candidate_subnets().collect();
        assert_eq!(all.first(), Some(&"fd00:1:0:20::/60".parse().unwrap()));
        assert_eq!(all.last(), Some(&"fd00:1:0:40::/60".parse().unwrap()));
        assert_eq!(all.len(), 3);
        // "::" means unset, as in flannel.
        let v = v6(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"::"}"#);
        assert_eq!(v.subnet_min, "fd00:0:0:1::".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn ipv6_errors_name_field_and_value() {
        let pre = r#"{"Network":"10.0.0.0/16","EnableIPv6":true"#;
        let e6 = |rest: &str| err(&format!("{pre},{rest}}}"));
        for (rest, field, says) in [
            (r#""IPv6Network":"fd00::""#, "IPv6Network", "prefix"),
            (r#""IPv6Network":"10.0.0.0/8""#, "IPv6Network", "IPv4 CIDR"),
            (r#""IPv6Network":"bogus""#, "IPv6Network", "\"bogus\""),
            (r#""IPv6Network":48"#, "IPv6Network", "48"),
            (r#""IPv6Network":"::/0""#, "IPv6Network", "whole IPv6 space"),
            (r#""IPv6Network":"fe80::/64""#, "IPv6Network", "link-local"),
            (r#""IPv6Network":"ff00::/16""#, "IPv6Network", "multicast"),
            (r#""IPv6Network":"::1/128""#, "IPv6Network", "loopback"),
            (r#""IPv6Network":"fd00::/125""#, "IPv6Network", "too small"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetLen":127"#, "IPv6SubnetLen", "at most 126"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetLen":49"#, "IPv6SubnetLen", "four subnets"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetLen":"64""#, "IPv6SubnetLen", "\"64\""),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::""#, "IPv6SubnetMin", "inside"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00:0:0:5::1""#, "IPv6SubnetMax", "boundary"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetMax":"x""#, "IPv6SubnetMax", "not an IPv6 address"),
            (r#""IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::""#, "IPv6SubnetMin", "IPv6SubnetMax"),
        ] {
            let e = e6(rest);
            assert!(e.contains(field) && e.contains(says), "{rest}: {e}");
        }
        let e = err(r#"{"EnableIPv4":false,"EnableIPv6":false}"#);
        assert!(e.contains("EnableIPv4") && e.contains("EnableIPv6"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","EnableIPv6":"yes"}"#);
        assert!(e.contains("EnableIPv6") && e.contains("yes"), "{e}");
    }

    #[test]
    fn host_bits_are_cleared() {
        let c = p(r#"{"Network":"10.0.0.5/16"}"#);
        assert_eq!(c.network, "10.0.0.0/16".parse().unwrap());
    }
}
