//! The etcd layout flannel uses: key names and lease values.
//!
//! - config: `<prefix>/config`
//! - leases: `<prefix>/subnets/<a.b.c.d>-<len>`; dual stack
//!   `10.5.52.0-24&fc00::-64`. flannel's `MakeSubnetKey` always writes the
//!   IPv4 part, so an IPv6-only lease is `0.0.0.0-0&fc00::-64` (its empty
//!   IPv4 subnet), and its `ParseSubnetKey` reads nothing else; the bare
//!   `fc00::-64` is read too (lenient), never written.
//! - lease value: `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",
//!   "BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`, byte for byte what
//!   flannel's Go `json.Marshal` writes; with IPv6 `"PublicIPv6":"fd00::3"` and
//!   (vxlan) `"BackendV6Data":{"VNI":1,"VtepMAC":…}`, the VtepMAC of the
//!   IPv6 device; IPv6-only leases carry `"PublicIP":"0.0.0.0"` and no
//!   BackendData. Reading is lenient like Go: field names case-insensitive,
//!   unknown fields ignored, `VNI` optional (old writers).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::config::{field, short_json, BackendType, NetworkConfig};

/// flannel's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// Problems with a lease key or value. Messages name the key or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("lease value is not valid JSON: {reason}")]
    Json { reason: String },
    #[error("lease value must be a JSON object, found {found}")]
    NotAnObject { found: String },
    #[error("lease value field {field} is missing")]
    Missing { field: &'static str },
    #[error("lease value field {field} = {value}: {reason}")]
    Field {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "key {key:?} is not a subnet lease key (expected <prefix>/subnets/<a.b.c.d>-<len>, \
         optionally followed by &<IPv6 subnet>-<len>)"
    )]
    NotASubnetKey { key: String },
    #[error("lease {key:?}: value is not UTF-8")]
    NotUtf8 { key: String },
    #[error("lease {key:?}: {source}")]
    Value {
        key: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("lease {key:?}: subnet {subnet} is outside Network {network}")]
    OutsideNetwork {
        key: String,
        subnet: Ipv4Net,
        network: Ipv4Net,
    },
    #[error("lease {key:?}: subnet {subnet} is not a /{expected} (SubnetLen of the network config)")]
    WrongSubnetLen {
        key: String,
        subnet: Ipv4Net,
        expected: u8,
    },
    #[error("lease {key:?}: IPv6 subnet {subnet} {reason}")]
    Ipv6Subnet {
        key: String,
        subnet: Ipv6Net,
        reason: String,
    },
}

/// What a node publishes about itself in its lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseAttrs {
    /// `PublicIP`; `0.0.0.0` in IPv6-only leases (flannel's empty address).
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6` (`null` without IPv6).
    pub public_ipv6: Option<Ipv6Addr>,
    /// "vxlan", "host-gw", or whatever another writer put there.
    pub backend_type: String,
    /// vxlan: `BackendData.VNI` (absent with old writers).
    pub vni: Option<u32>,
    /// vxlan: `BackendData.VtepMAC`.
    pub vtep_mac: Option<[u8; 6]>,
    /// vxlan over IPv6: `BackendV6Data.VNI`.
    pub v6_vni: Option<u32>,
    /// vxlan over IPv6: `BackendV6Data.VtepMAC`, the MAC of the node's IPv6
    /// VXLAN device (flannel's `flannel-v6.<VNI>`), not the IPv4 one's.
    pub v6_vtep_mac: Option<[u8; 6]>,
}

impl LeaseAttrs {
    /// A vxlan lease value as flannel writes it.
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: [u8; 6]) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            vni: Some(vni),
            vtep_mac: Some(vtep_mac),
            v6_vni: None,
            v6_vtep_mac: None,
        }
    }

    /// A host-gw lease value (no BackendData).
    pub fn host_gw(public_ip: Ipv4Addr) -> LeaseAttrs {
        LeaseAttrs {
            backend_type: "host-gw".into(),
            vni: None,
            vtep_mac: None,
            ..LeaseAttrs::vxlan(public_ip, 0, [0; 6])
        }
    }

    /// Our own lease value for `backend`, as flannel's backends build it:
    /// each enabled family adds its public address and, for vxlan, its
    /// device's VNI and VtepMAC (`BackendData` for IPv4, `BackendV6Data`
    /// for IPv6). Without IPv4, PublicIP is `0.0.0.0` and there is no
    /// BackendData, as flanneld writes an IPv6-only lease.
    pub fn for_node(
        backend: BackendType,
        vni: u32,
        ipv4: Option<(Ipv4Addr, [u8; 6])>,
        ipv6: Option<(Ipv6Addr, [u8; 6])>,
    ) -> LeaseAttrs {
        let vxlan = backend == BackendType::Vxlan;
        LeaseAttrs {
            public_ip: ipv4.map_or(Ipv4Addr::UNSPECIFIED, |(ip, _)| ip),
            public_ipv6: ipv6.map(|(ip, _)| ip),
            backend_type: backend.as_str().into(),
            vni: ipv4.and(vxlan.then_some(vni)),
            vtep_mac: ipv4.filter(|_| vxlan).map(|(_, mac)| mac),
            v6_vni: ipv6.and(vxlan.then_some(vni)),
            v6_vtep_mac: ipv6.filter(|_| vxlan).map(|(_, mac)| mac),
        }
    }

    /// Whether a lease with these attributes is the node whose attributes
    /// are `ours`: the same PublicIP, as flannel matches, or for an
    /// IPv6-only node (PublicIP `0.0.0.0`, which every IPv6-only lease
    /// carries) the same PublicIPv6. flannel compares the empty PublicIP
    /// too and so takes any IPv6-only node's lease for its own.
    pub fn same_node(&self, ours: &LeaseAttrs) -> bool {
        if !ours.public_ip.is_unspecified() {
            return self.public_ip == ours.public_ip;
        }
        ours.public_ipv6.is_some() && self.public_ipv6 == ours.public_ipv6
    }

    /// The address naming the node in messages: PublicIP, or PublicIPv6
    /// for an IPv6-only node.
    pub fn node_address(&self) -> String {
        match self.public_ipv6 {
            Some(v6) if self.public_ip.is_unspecified() => v6.to_string(),
            _ => self.public_ip.to_string(),
        }
    }

    /// flannel's exact bytes (Go field order: PublicIP, PublicIPv6 (`null`
    /// when absent), then BackendType, BackendData and BackendV6Data, each
    /// omitted when empty).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(160);
        s.push_str("{\"PublicIP\":\"");
        s.push_str(&self.public_ip.to_string());
        s.push_str("\",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => {
                s.push('"');
                s.push_str(&ip.to_string());
                s.push('"');
            }
            None => s.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            s.push_str(",\"BackendType\":");
            s.push_str(&Value::String(self.backend_type.clone()).to_string());
        }
        push_backend_data(&mut s, "BackendData", self.vni, self.vtep_mac);
        push_backend_data(&mut s, "BackendV6Data", self.v6_vni, self.v6_vtep_mac);
        s.push('}');
        s
    }

    /// Parses a lease value. `PublicIP` is required; `PublicIPv6` may be
    /// null or absent; unknown fields are ignored; `BackendData` and
    /// `BackendV6Data` may be absent or hold other fields (other backends).
    pub fn from_json(s: &str) -> Result<LeaseAttrs, RegistryError> {
        let v: Value = serde_json::from_str(s).map_err(|e| RegistryError::Json {
            reason: e.to_string(),
        })?;
        let obj = match &v {
            Value::Object(m) => m,
            other => {
                return Err(RegistryError::NotAnObject {
                    found: short_json(other),
                })
            }
        };
        let public_ip = match field(obj, "PublicIP") {
            None | Some((_, Value::Null)) => return Err(RegistryError::Missing { field: "PublicIP" }),
            Some((_, Value::String(ip))) => {
                ip.parse::<Ipv4Addr>().map_err(|_| RegistryError::Field {
                    field: "PublicIP",
                    value: short_json(&Value::String(ip.clone())),
                    reason: "not an IPv4 address",
                })?
            }
            Some((_, other)) => {
                return Err(RegistryError::Field {
                    field: "PublicIP",
                    value: short_json(other),
                    reason: "expected an IPv4 address string",
                })
            }
        };
        let backend_type = match field(obj, "BackendType") {
            None | Some((_, Value::Null)) => String::new(),
            Some((_, Value::String(t))) => t.clone(),
            Some((_, other)) => {
                return Err(RegistryError::Field {
                    field: "BackendType",
                    value: short_json(other),
                    reason: "expected a string",
                })
            }
        };
        let public_ipv6 = match field(obj, "PublicIPv6") {
            None | Some((_, Value::Null)) => None,
            Some((_, Value::String(ip))) => Some(ip.parse::<Ipv6Addr>().map_err(|_| RegistryError::Field {
                field: "PublicIPv6",
                value: short_json(&Value::String(ip.clone())),
                reason: "not an IPv6 address",
            })?),
            Some((_, other)) => {
                return Err(RegistryError::Field {
                    field: "PublicIPv6",
                    value: short_json(other),
                    reason: "expected an IPv6 address string or null",
                })
            }
        };
        let (vni, vtep_mac) = parse_backend_data(obj, BACKEND_DATA)?;
        let (v6_vni, v6_vtep_mac) = parse_backend_data(obj, BACKEND_V6_DATA)?;
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            vni,
            vtep_mac,
            v6_vni,
            v6_vtep_mac,
        })
    }
}

/// `,"<name>":{"VNI":…,"VtepMAC":"…"}`, or nothing when both are absent.
fn push_backend_data(s: &mut String, name: &str, vni: Option<u32>, mac: Option<[u8; 6]>) {
    if vni.is_none() && mac.is_none() {
        return;
    }
    s.push_str(",\"");
    s.push_str(name);
    s.push_str("\":{");
    if let Some(vni) = vni {
        s.push_str("\"VNI\":");
        s.push_str(&vni.to_string());
    }
    if let Some(mac) = mac {
        if vni.is_some() {
            s.push(',');
        }
        s.push_str("\"VtepMAC\":\"");
        s.push_str(&format_mac(&mac));
        s.push('"');
    }
    s.push('}');
}

/// The field names (with their paths for errors) of one backend data object.
struct BackendDataFields {
    name: &'static str,
    vni: &'static str,
    vtep_mac: &'static str,
}

const BACKEND_DATA: BackendDataFields = BackendDataFields {
    name: "BackendData",
    vni: "BackendData.VNI",
    vtep_mac: "BackendData.VtepMAC",
};
const BACKEND_V6_DATA: BackendDataFields = BackendDataFields {
    name: "BackendV6Data",
    vni: "BackendV6Data.VNI",
    vtep_mac: "BackendV6Data.VtepMAC",
};

/// VNI and VtepMAC of `BackendData` or `BackendV6Data` (each optional).
fn parse_backend_data(
    obj: &serde_json::Map<String, Value>,
    f: BackendDataFields,
) -> Result<(Option<u32>, Option<[u8; 6]>), RegistryError> {
    let bd = match field(obj, f.name) {
        None | Some((_, Value::Null)) => return Ok((None, None)),
        Some((_, Value::Object(bd))) => bd,
        Some((_, other)) => {
            return Err(RegistryError::Field {
                field: f.name,
                value: short_json(other),
                reason: "expected an object",
            })
        }
    };
    let vni = match field(bd, "VNI") {
        None | Some((_, Value::Null)) => None,
        Some((_, n)) => Some(
            n.as_u64()
                .filter(|x| *x <= u32::MAX as u64)
                .ok_or_else(|| RegistryError::Field {
                    field: f.vni,
                    value: short_json(n),
                    reason: "expected a non-negative integer",
                })? as u32,
        ),
    };
    let vtep_mac = match field(bd, "VtepMAC") {
        None | Some((_, Value::Null)) => None,
        Some((_, Value::String(m))) if m.is_empty() => None,
        Some((_, Value::String(m))) => Some(parse_mac(m).ok_or_else(|| RegistryError::Field {
            field: f.vtep_mac,
            value: short_json(&Value::String(m.clone())),
            reason: "not a MAC address (expected aa:bb:cc:dd:ee:ff)",
        })?),
        Some((_, other)) => {
            return Err(RegistryError::Field {
                field: f.vtep_mac,
                value: short_json(other),
                reason: "expected a MAC address string",
            })
        }
    };
    Ok((vni, vtep_mac))
}

/// A node's subnet lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The IPv4 subnet; for an IPv6-only lease flannel's empty subnet
    /// `0.0.0.0/0`, which its key carries (see [`Lease::ipv4_subnet`]).
    pub subnet: Ipv4Net,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to; 0 for a reservation (a key put
    /// without an etcd lease, which flannel never expires or renews).
    pub etcd_lease: i64,
    /// When the etcd lease runs out, when known (our own lease). Leases seen
    /// through the watch carry `None`: no per-lease TimeToLive RPC is made.
    pub expiration: Option<SystemTime>,
}

/// What names a lease in both address families: its key's subnets. The
/// IPv4 subnet alone does not (every IPv6-only lease has `0.0.0.0/0`
/// there), nor the IPv6 one alone (a v4-only lease of a mixed cluster has
/// none); the pair is what flannel's `MakeSubnetKey` writes into the key.
/// Ordered by the IPv4 subnet first, so the ids of one IPv4 subnet are
/// adjacent (see [`LeaseId::ipv4_range`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId {
    /// The IPv4 subnet, [`EMPTY_IPV4_SUBNET`] for an IPv6-only lease.
    pub ipv4: Ipv4Net,
    pub ipv6: Option<Ipv6Net>,
}

impl LeaseId {
    /// The id of the lease whose key name (after `<prefix>/subnets/`) is
    /// `name`, if it is one.
    pub fn from_key_name(name: &str) -> Option<LeaseId> {
        parse_subnet_key_pair(name).map(|(ipv4, ipv6)| LeaseId { ipv4, ipv6 })
    }

    /// The IPv4 subnet, `None` for an IPv6-only lease.
    pub fn ipv4_subnet(&self) -> Option<Ipv4Net> {
        (self.ipv4 != EMPTY_IPV4_SUBNET).then_some(self.ipv4)
    }

    /// Every id with IPv4 subnet `subnet`, as a range of the order.
    pub fn ipv4_range(subnet: Ipv4Net) -> std::ops::RangeInclusive<LeaseId> {
        LeaseId { ipv4: subnet, ipv6: None }..=LeaseId { ipv4: subnet, ipv6: Some(Ipv6Net::new_assert(Ipv6Addr::from(u128::MAX), 128)) }
    }
}

impl LeaseId {
    /// The key's name as flannel's `MakeSubnetKey` writes it:
    /// `10.5.52.0-24`, `10.5.52.0-24&fc00::-64`, `0.0.0.0-0&fc00::-64`.
    pub fn key_name(&self) -> String {
        let mut name = format!("{}-{}", self.ipv4.addr(), self.ipv4.prefix_len());
        if let Some(v6) = self.ipv6 {
            name.push_str(&format!("&{}-{}", v6.addr(), v6.prefix_len()));
        }
        name
    }
}

/// For messages: `10.5.52.0/24`, `10.5.52.0/24+fc00::/64`, `fc00::/64`
/// (an IPv6-only lease's empty IPv4 part left out).
impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ipv4_subnet(), self.ipv6) {
            (Some(v4), Some(v6)) => write!(f, "{v4}+{v6}"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => write!(f, "{}", self.ipv4),
        }
    }
}

impl Lease {
    /// What names this lease in both families (its key's subnets).
    pub fn id(&self) -> LeaseId {
        LeaseId { ipv4: self.subnet, ipv6: self.ipv6_subnet }
    }

    /// This lease's key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        lease_key(prefix, self.subnet, self.ipv6_subnet)
    }

    /// The IPv4 subnet, `None` for an IPv6-only lease.
    pub fn ipv4_subnet(&self) -> Option<Ipv4Net> {
        (self.subnet != EMPTY_IPV4_SUBNET).then_some(self.subnet)
    }

    /// A reservation (no etcd lease attached): never renewed, never expires.
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }

    /// Builds a lease from an etcd key/value, checking the key shape and the
    /// value. Does not check it against a network config: see
    /// [`check_lease_against_config`].
    pub fn from_kv(prefix: &str, key: &str, value: &[u8], etcd_lease: i64) -> Result<Lease, RegistryError> {
        let (subnet, ipv6_subnet) = parse_lease_key(prefix, key).ok_or_else(|| RegistryError::NotASubnetKey {
            key: key.to_string(),
        })?;
        let text = std::str::from_utf8(value).map_err(|_| RegistryError::NotUtf8 {
            key: key.to_string(),
        })?;
        let attrs = LeaseAttrs::from_json(text).map_err(|e| RegistryError::Value {
            key: key.to_string(),
            source: Box::new(e),
        })?;
        Ok(Lease {
            subnet,
            ipv6_subnet,
            attrs,
            etcd_lease,
            expiration: None,
        })
    }
}

/// flannel's empty IPv4 subnet (`ip.IP4Net{}`), the IPv4 part of an
/// IPv6-only lease's key: `0.0.0.0-0&fc00::-64`.
pub const EMPTY_IPV4_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

/// Rejects a lease whose IPv6 part does not fit the config's IPv6 network:
/// outside IPv6Network, of another length than IPv6SubnetLen, or present
/// while IPv6 is disabled is fine (flannel ignores it then). A missing IPv6
/// part is fine too: a node of a mixed cluster that runs IPv4 only.
pub fn check_ipv6_lease_against_config(
    key: &str,
    ipv6_subnet: Option<Ipv6Net>,
    cfg: &NetworkConfig,
) -> Result<(), RegistryError> {
    let (Some(v6), Some(sn)) = (&cfg.ipv6, ipv6_subnet) else {
        return Ok(());
    };
    let reason = if !v6.network.contains(&sn) {
        format!("is outside IPv6Network {}", v6.network)
    } else if sn.prefix_len() != v6.subnet_len {
        format!("is not a /{} (IPv6SubnetLen of the network config)", v6.subnet_len)
    } else {
        return Ok(());
    };
    Err(RegistryError::Ipv6Subnet {
        key: key.to_string(),
        subnet: sn,
        reason,
    })
}

/// Rejects a lease whose subnet is outside `cfg.network` or not a
/// `/cfg.subnet_len`.
pub fn check_lease_against_config(key: &str, subnet: Ipv4Net, cfg: &NetworkConfig) -> Result<(), RegistryError> {
    if !cfg.network.contains(&subnet) {
        return Err(RegistryError::OutsideNetwork {
            key: key.to_string(),
            subnet,
            network: cfg.network,
        });
    }
    if subnet.prefix_len() != cfg.subnet_len {
        return Err(RegistryError::WrongSubnetLen {
            key: key.to_string(),
            subnet,
            expected: cfg.subnet_len,
        });
    }
    Ok(())
}

/// `prefix` the way Go's `path.Join` would use it: duplicate slashes collapsed,
/// no trailing slash (`"/"` stays `""` so keys start with `/subnets`).
pub fn normalize_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    let mut prev_slash = false;
    for c in prefix.chars() {
        if c == '/' {
            if prev_slash {
                continue;
            }
            prev_slash = true;
        } else {
            prev_slash = false;
        }
        out.push(c);
    }
    while out.ends_with('/') {
        out.pop();
    }
    out
}

/// `<prefix>/config`
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", normalize_prefix(prefix))
}

/// `<prefix>/subnets/` (with the trailing slash: the range of every lease key).
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", normalize_prefix(prefix))
}

/// `<prefix>/subnets/10.1.16.0-24`
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    lease_key(prefix, subnet, None)
}

/// A lease's key as flannel's `MakeSubnetKey` makes it:
/// `<prefix>/subnets/10.5.52.0-24`, dual stack `...10.5.52.0-24&fc00::-64`,
/// IPv6-only (`subnet` = [`EMPTY_IPV4_SUBNET`]) `...0.0.0.0-0&fc00::-64`.
/// The IPv6 address is written as Go prints it (RFC 5952, lower case).
pub fn lease_key(prefix: &str, subnet: Ipv4Net, ipv6_subnet: Option<Ipv6Net>) -> String {
    format!("{}{}", subnets_prefix(prefix), LeaseId { ipv4: subnet, ipv6: ipv6_subnet }.key_name())
}

/// The IPv4 subnet of a lease key under `prefix`, or `None` when `key` is not
/// one (wrong prefix, nested path, bad address, host bits set, bad length).
/// Dual-stack keys (`10.12.13.0-24&fd00:12:13::-56`) give their IPv4 part,
/// IPv6-only ones [`EMPTY_IPV4_SUBNET`].
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    parse_lease_key(prefix, key).map(|(v4, _)| v4)
}

/// Both subnets of a lease key under `prefix` (see [`parse_subnet_key_pair`]).
pub fn parse_lease_key(prefix: &str, key: &str) -> Option<(Ipv4Net, Option<Ipv6Net>)> {
    let rest = key.strip_prefix(&subnets_prefix(prefix))?;
    parse_subnet_key_pair(rest)
}

/// Parses the last path element of a lease key: `10.1.16.0-24`, optionally
/// followed by `&<ipv6>-<len>`; its IPv4 subnet.
pub fn parse_subnet_key_name(name: &str) -> Option<Ipv4Net> {
    parse_subnet_key_pair(name).map(|(v4, _)| v4)
}

/// Parses the last path element of a lease key into its IPv4 subnet and
/// its IPv6 subnet if any: `10.1.16.0-24`, `10.1.16.0-24&fc00:0:0:3::-64`,
/// `0.0.0.0-0&fc00:0:0:3::-64` (IPv6-only, as flannel writes it) or
/// `fc00:0:0:3::-64` (IPv6-only, read but never written). Like flannel's
/// key pattern, the IPv6 part takes lower-case hex digits and colons only.
/// Host bits must be clear in both; a key without any subnet
/// (`0.0.0.0-0`) is not a lease.
pub fn parse_subnet_key_pair(name: &str) -> Option<(Ipv4Net, Option<Ipv6Net>)> {
    let (v4, v6) = match name.split_once('&') {
        Some((a, b)) => (Some(a), Some(b)),
        None if name.contains(':') => (None, Some(name)),
        None => (Some(name), None),
    };
    let v6 = match v6 {
        Some(part) => Some(parse_ipv6_part(part)?),
        None => None,
    };
    let v4 = match v4 {
        Some(part) => {
            let (a, l) = part.rsplit_once('-')?;
            let addr: Ipv4Addr = a.parse().ok()?;
            let net = Ipv4Net::new(addr, parse_decimal(l)?).ok()?;
            if net.network() != addr {
                return None;
            }
            net
        }
        None => EMPTY_IPV4_SUBNET,
    };
    if v4 == EMPTY_IPV4_SUBNET && v6.is_none() {
        return None;
    }
    Some((v4, v6))
}

fn parse_ipv6_part(part: &str) -> Option<Ipv6Net> {
    let (a, l) = part.rsplit_once('-')?;
    if a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':') {
        return None;
    }
    let addr: Ipv6Addr = a.parse().ok()?;
    let net = Ipv6Net::new(addr, parse_decimal(l)?).ok()?;
    (net.network() == addr && net.prefix_len() > 0).then_some(net)
}

fn parse_decimal(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `c6:d2:32:6f:8f:44` (lower case, as Go's `net.HardwareAddr.String`).
pub fn format_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), any case.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let sep = if s.contains(':') { ':' } else { '-' };
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(sep) {
        // Two hex digits exactly: from_str_radix alone would take "+a".
        if n == 6 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        out[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL_EXAMPLE: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn vxlan_value_is_byte_exact() {
        let a = LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 168, 64, 3),
            1,
            [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44],
        );
        assert_eq!(a.to_json(), FLANNEL_EXAMPLE);
        assert_eq!(LeaseAttrs::from_json(FLANNEL_EXAMPLE).unwrap(), a);
    }

    #[test]
    fn host_gw_value_has_no_backend_data() {
        let a = LeaseAttrs::host_gw(Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"10.0.0.7","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        assert_eq!(LeaseAttrs::from_json(&a.to_json()).unwrap(), a);
    }

    #[test]
    fn old_writer_without_vni() {
        let a = LeaseAttrs::from_json(
            r#"{"PublicIP":"192.168.1.132","BackendType":"vxlan","BackendData":{"VtepMAC":"12:b9:d6:fb:f8:e3"}}"#,
        )
        .unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(192, 168, 1, 132));
        assert_eq!(a.vni, None);
        assert_eq!(a.vtep_mac, Some([0x12, 0xb9, 0xd6, 0xfb, 0xf8, 0xe3]));
        assert_eq!(a.backend_type, "vxlan");
    }

    #[test]
    fn lenient_reading() {
        let a = LeaseAttrs::from_json(
            r#"{"publicip":"1.2.3.4","PublicIPv6":"fd00::1","backendtype":"udp","Extra":1,"BackendData":{"Foo":"x"}}"#,
        )
        .unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(a.backend_type, "udp");
        assert_eq!((a.vni, a.vtep_mac), (None, None));
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = LeaseAttrs::from_json("not json").unwrap_err().to_string();
        assert!(e.contains("JSON"), "{e}");
        let e = LeaseAttrs::from_json(r#"{"BackendType":"vxlan"}"#).unwrap_err().to_string();
        assert!(e.contains("PublicIP"), "{e}");
        let e = LeaseAttrs::from_json(r#"{"PublicIP":5}"#).unwrap_err().to_string();
        assert!(e.contains("PublicIP") && e.contains('5'), "{e}");
        let e = LeaseAttrs::from_json(r#"{"PublicIP":"1.2.3"}"#).unwrap_err().to_string();
        assert!(e.contains("PublicIP") && e.contains("1.2.3"), "{e}");
        let e = LeaseAttrs::from_json(r#"{"PublicIP":"1.2.3.4","BackendData":{"VNI":"1"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("BackendData.VNI"), "{e}");
        let e = LeaseAttrs::from_json(r#"{"PublicIP":"1.2.3.4","BackendData":{"VtepMAC":"zz"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("BackendData.VtepMAC") && e.contains("zz"), "{e}");
        let e = LeaseAttrs::from_json("[]").unwrap_err().to_string();
        assert!(e.contains("object"), "{e}");
    }

    #[test]
    fn keys() {
        let sn: Ipv4Net = "10.1.16.0/24".parse().unwrap();
        assert_eq!(subnet_key("/coreos.com/network", sn), "/coreos.com/network/subnets/10.1.16.0-24");
        assert_eq!(subnet_key("/coreos.com/network/", sn), "/coreos.com/network/subnets/10.1.16.0-24");
        assert_eq!(subnet_key("//flannel//network", sn), "/flannel/network/subnets/10.1.16.0-24");
        assert_eq!(config_key("/coreos.com/network"), "/coreos.com/network/config");
        let p = "/coreos.com/network";
        assert_eq!(parse_subnet_key(p, "/coreos.com/network/subnets/10.1.16.0-24"), Some(sn));
        assert_eq!(
            parse_subnet_key(p, "/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::-56"),
            Some("10.12.13.0/24".parse().unwrap())
        );
        for bad in [
            "/coreos.com/network/subnets/10.1.16.0-33",
            "/coreos.com/network/subnets/10.1.16.1-24",
            "/coreos.com/network/subnets/10.1.16.0",
            "/coreos.com/network/subnets/10.1.16.0-24/x",
            "/coreos.com/network/subnets/10.1.16-24",
            "/coreos.com/network/subnets/10.1.16.0-+4",
            "/coreos.com/network/subnets/10.1.16.0-24&junk",
            "/other/network/subnets/10.1.16.0-24",
            "/coreos.com/network/config",
            "/coreos.com/network/subnets/",
        ] {
            assert_eq!(parse_subnet_key(p, bad), None, "{bad}");
        }
    }

    const DUAL: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"7a:11:22:33:44:55"}}"#;
    const V6_ONLY: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendV6Data":{"VNI":4,"VtepMAC":"7a:11:22:33:44:55"}}"#;
    const V4_MAC: [u8; 6] = [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44];
    const V6_MAC: [u8; 6] = [0x7a, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn dual_stack_values_are_byte_exact() {
        let v6: Ipv6Addr = "fd00:64::3".parse().unwrap();
        let v4 = Ipv4Addr::new(192, 168, 64, 3);
        let dual = LeaseAttrs::for_node(BackendType::Vxlan, 1, Some((v4, V4_MAC)), Some((v6, V6_MAC)));
        assert_eq!(dual.to_json(), DUAL);
        assert_eq!(LeaseAttrs::from_json(DUAL).unwrap(), dual);
        let only6 = LeaseAttrs::for_node(BackendType::Vxlan, 4, None, Some((v6, V6_MAC)));
        assert_eq!(only6.to_json(), V6_ONLY);
        assert_eq!(LeaseAttrs::from_json(V6_ONLY).unwrap(), only6);
        // host-gw: PublicIPv6 and no backend data at all.
        let hg = LeaseAttrs::for_node(BackendType::HostGw, 1, Some((v4, V4_MAC)), Some((v6, V6_MAC)));
        assert_eq!(hg.to_json(), r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"host-gw"}"#);
        assert_eq!(LeaseAttrs::from_json(&hg.to_json()).unwrap(), hg);
        // IPv4 only through for_node is the plain vxlan value.
        assert_eq!(LeaseAttrs::for_node(BackendType::Vxlan, 1, Some((v4, V4_MAC)), None), LeaseAttrs::vxlan(v4, 1, V4_MAC));
        assert_eq!(LeaseAttrs::for_node(BackendType::HostGw, 1, Some((v4, V4_MAC)), None), LeaseAttrs::host_gw(v4));
    }

    #[test]
    fn same_node_matches_by_public_ip_or_for_ipv6_only_by_public_ipv6() {
        let a = LeaseAttrs::from_json(DUAL).unwrap();
        let v4_only = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 64, 3), 1, [2; 6]);
        assert!(a.same_node(&v4_only) && v4_only.same_node(&a));
        let b = LeaseAttrs::from_json(V6_ONLY).unwrap();
        assert!(b.same_node(&b));
        let other6 = LeaseAttrs { public_ipv6: Some("fd00:64::9".parse().unwrap()), ..b.clone() };
        assert!(!other6.same_node(&b), "every IPv6-only lease has PublicIP 0.0.0.0: not the same node");
        // The dual lease of a node now running IPv6-only is that node's.
        assert!(a.same_node(&b));
        assert!(!b.same_node(&a), "an IPv6-only lease is nobody's by PublicIP");
        assert_eq!(b.node_address(), "fd00:64::3");
        assert_eq!(a.node_address(), "192.168.64.3");
    }

    #[test]
    fn bad_ipv6_values_name_the_field() {
        for (v, field) in [
            (r#"{"PublicIP":"1.2.3.4","PublicIPv6":"1.2.3.4"}"#, "PublicIPv6"),
            (r#"{"PublicIP":"1.2.3.4","PublicIPv6":7}"#, "PublicIPv6"),
            (r#"{"PublicIP":"1.2.3.4","BackendV6Data":[]}"#, "BackendV6Data"),
            (r#"{"PublicIP":"1.2.3.4","BackendV6Data":{"VNI":-1}}"#, "BackendV6Data.VNI"),
            (r#"{"PublicIP":"1.2.3.4","BackendV6Data":{"VtepMAC":"zz"}}"#, "BackendV6Data.VtepMAC"),
            (r#"{"PublicIP":"1.2.3.4","BackendV6Data":{"VtepMAC":5}}"#, "BackendV6Data.VtepMAC"),
        ] {
            let e = LeaseAttrs::from_json(v).unwrap_err().to_string();
            assert!(e.contains(field), "{v}: {e}");
        }
        // Case-insensitive field names, null PublicIPv6 and missing fields are fine.
        let a = LeaseAttrs::from_json(r#"{"publicip":"1.2.3.4","publicipv6":"FD00::1","backendv6data":{"vtepmac":"AA:BB:CC:DD:EE:FF"}}"#).unwrap();
        assert_eq!(a.public_ipv6, Some("fd00::1".parse().unwrap()));
        assert_eq!((a.v6_vni, a.v6_vtep_mac), (None, Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])));
    }

    #[test]
    fn lease_ids_tell_ipv6_only_leases_apart() {
        let v4: Ipv4Net = "10.5.52.0/24".parse().unwrap();
        let a = LeaseId::from_key_name("0.0.0.0-0&fc00::-64").unwrap();
        let b = LeaseId::from_key_name("0.0.0.0-0&fc00:0:0:1::-64").unwrap();
        assert_ne!(a, b, "two IPv6-only leases share only their empty IPv4 part");
        assert_eq!((a.ipv4_subnet(), a.key_name(), a.to_string()), (None, "0.0.0.0-0&fc00::-64".into(), "fc00::/64".into()));
        let dual = LeaseId::from_key_name("10.5.52.0-24&fc00::-64").unwrap();
        assert_eq!((dual.key_name(), dual.to_string()), ("10.5.52.0-24&fc00::-64".into(), "10.5.52.0/24+fc00::/64".into()));
        let v4_only = LeaseId::from_key_name("10.5.52.0-24").unwrap();
        assert_eq!(v4_only.to_string(), "10.5.52.0/24");
        // The ids of one IPv4 subnet, and only those, are in its range.
        let other = LeaseId::from_key_name("10.5.53.0-24&fc00::-64").unwrap();
        let set: std::collections::BTreeSet<LeaseId> = [a, b, dual, v4_only, other].into();
        let in_range: Vec<_> = set.range(LeaseId::ipv4_range(v4)).copied().collect();
        assert_eq!(in_range, [v4_only, dual]);
    }

    #[test]
    fn dual_stack_keys() {
        let p = "/coreos.com/network";
        let v4: Ipv4Net = "10.5.52.0/24".parse().unwrap();
        let v6: Ipv6Net = "fc00::/64".parse().unwrap();
        assert_eq!(lease_key(p, v4, Some(v6)), "/coreos.com/network/subnets/10.5.52.0-24&fc00::-64");
        assert_eq!(lease_key(p, EMPTY_IPV4_SUBNET, Some(v6)), "/coreos.com/network/subnets/0.0.0.0-0&fc00::-64");
        assert_eq!(lease_key(p, v4, None), subnet_key(p, v4));
        let v6b: Ipv6Net = "fd00:12:13:ab00::/56".parse().unwrap();
        for (name, want) in [
            ("10.5.52.0-24&fc00::-64", (v4, Some(v6))),
            ("0.0.0.0-0&fc00::-64", (EMPTY_IPV4_SUBNET, Some(v6))),
            ("fc00::-64", (EMPTY_IPV4_SUBNET, Some(v6))),
            ("10.5.52.0-24&fd00:12:13:ab00::-56", (v4, Some(v6b))),
            ("10.5.52.0-24", (v4, None)),
        ] {
            assert_eq!(parse_subnet_key_pair(name), Some(want), "{name}");
            assert_eq!(parse_lease_key(p, &format!("{p}/subnets/{name}")), Some(want), "{name}");
        }
        let l = Lease::from_kv(p, &format!("{p}/subnets/0.0.0.0-0&fc00::-64"), V6_ONLY.as_bytes(), 7).unwrap();
        assert_eq!((l.ipv4_subnet(), l.ipv6_subnet), (None, Some(v6)));
        assert_eq!(l.key(p), format!("{p}/subnets/0.0.0.0-0&fc00::-64"));
        let l = Lease::from_kv(p, &format!("{p}/subnets/10.5.52.0-24&fc00::-64"), DUAL.as_bytes(), 7).unwrap();
        assert_eq!((l.ipv4_subnet(), l.ipv6_subnet), (Some(v4), Some(v6)));
        for bad in [
            "10.5.52.0-24&",
            "10.5.52.0-24&fc00::",
            "10.5.52.0-24&fc00::-129",
            "10.5.52.0-24&fc00::1-64",
            "10.5.52.0-24&FC00::-64",
            "10.5.52.0-24&::ffff:1.2.3.4-120",
            "10.5.52.0-24&fc00::-64&fd00::-64",
            "10.5.52.0-24&10.6.0.0-16",
            "10.5.52.0-24&::-0",
            "0.0.0.0-0",
            "&fc00::-64",
            "fc00::-64-1",
            "10.5.52.1-24&fc00::-64",
        ] {
            assert_eq!(parse_subnet_key_pair(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_parts_are_checked_against_the_config() {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#).unwrap();
        let ok: Ipv6Net = "fc00:0:0:3::/64".parse().unwrap();
        assert_eq!(check_ipv6_lease_against_config("k", Some(ok), &cfg), Ok(()));
        assert_eq!(check_ipv6_lease_against_config("k", None, &cfg), Ok(()), "an IPv4-only node of a mixed cluster");
        let e = check_ipv6_lease_against_config("k", Some("fd00::/64".parse().unwrap()), &cfg).unwrap_err().to_string();
        assert!(e.contains("fd00::/64") && e.contains("outside IPv6Network fc00::/48"), "{e}");
        let e = check_ipv6_lease_against_config("k", Some("fc00:0:0:3::/80".parse().unwrap()), &cfg).unwrap_err().to_string();
        assert!(e.contains("/64"), "{e}");
        let v4 = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap();
        assert_eq!(check_ipv6_lease_against_config("k", Some(ok), &v4), Ok(()), "ignored without IPv6, as flannel does");
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("C6:D2:32:6f:8f:44"), Some([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]));
        assert_eq!(parse_mac("c6-d2-32-6f-8f-44"), Some([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]));
        assert_eq!(parse_mac("c6:d2:32:6f:8f"), None);
        assert_eq!(parse_mac("c6:d2:32:6f:8f:44:00"), None);
        assert_eq!(format_mac(&[0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]), "c6:d2:32:6f:8f:44");
    }
}
