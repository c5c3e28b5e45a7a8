//! The etcd layout flannel uses: key names and lease values.
//!
//! - config: `<prefix>/config`
//! - leases: `<prefix>/subnets/<a.b.c.d>-<len>` (dual stack: `...&<v6>-<len>`,
//!   of which only the IPv4 part is used here)
//! - lease value: `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",
//!   "BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`, byte for byte what
//!   flannel's Go `json.Marshal` writes. Reading is lenient like Go: field names
//!   case-insensitive, unknown fields ignored, `VNI` optional (old writers).

use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::config::{field, short_json, NetworkConfig};

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
    #[error("key {key:?} is not a subnet lease key (expected <prefix>/subnets/<a.b.c.d>-<len>)")]
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
}

/// What a node publishes about itself in its lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    /// "vxlan", "host-gw", or whatever another writer put there.
    pub backend_type: String,
    /// vxlan: `BackendData.VNI` (absent with old writers).
    pub vni: Option<u32>,
    /// vxlan: `BackendData.VtepMAC`.
    pub vtep_mac: Option<[u8; 6]>,
}

impl LeaseAttrs {
    /// A vxlan lease value as flannel writes it.
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: [u8; 6]) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            backend_type: "vxlan".into(),
            vni: Some(vni),
            vtep_mac: Some(vtep_mac),
        }
    }

    /// A host-gw lease value (no BackendData).
    pub fn host_gw(public_ip: Ipv4Addr) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            backend_type: "host-gw".into(),
            vni: None,
            vtep_mac: None,
        }
    }

    /// flannel's exact bytes (Go field order, `PublicIPv6` always `null`,
    /// `BackendType`/`BackendData` omitted when empty).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(128);
        s.push_str("{\"PublicIP\":\"");
        s.push_str(&self.public_ip.to_string());
        s.push_str("\",\"PublicIPv6\":null");
        if !self.backend_type.is_empty() {
            s.push_str(",\"BackendType\":");
            s.push_str(&Value::String(self.backend_type.clone()).to_string());
        }
        if self.vni.is_some() || self.vtep_mac.is_some() {
            s.push_str(",\"BackendData\":{");
            let mut first = true;
            if let Some(vni) = self.vni {
                s.push_str("\"VNI\":");
                s.push_str(&vni.to_string());
                first = false;
            }
            if let Some(mac) = self.vtep_mac {
                if !first {
                    s.push(',');
                }
                s.push_str("\"VtepMAC\":\"");
                s.push_str(&format_mac(&mac));
                s.push('"');
            }
            s.push('}');
        }
        s.push('}');
        s
    }

    /// Parses a lease value. `PublicIP` is required; `PublicIPv6` and unknown
    /// fields are ignored; `BackendData` may be absent or hold other fields
    /// (other backends).
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
        let mut vni = None;
        let mut vtep_mac = None;
        match field(obj, "BackendData") {
            None | Some((_, Value::Null)) => {}
            Some((_, Value::Object(bd))) => {
                match field(bd, "VNI") {
                    None | Some((_, Value::Null)) => {}
                    Some((_, n @ Value::Number(_))) => {
                        let x = n.as_u64().filter(|x| *x <= u32::MAX as u64).ok_or_else(|| {
                            RegistryError::Field {
                                field: "BackendData.VNI",
                                value: short_json(n),
                                reason: "expected a non-negative integer",
                            }
                        })?;
                        vni = Some(x as u32);
                    }
                    Some((_, other)) => {
                        return Err(RegistryError::Field {
                            field: "BackendData.VNI",
                            value: short_json(other),
                            reason: "expected a non-negative integer",
                        })
                    }
                }
                match field(bd, "VtepMAC") {
                    None | Some((_, Value::Null)) => {}
                    Some((_, Value::String(m))) if m.is_empty() => {}
                    Some((_, Value::String(m))) => {
                        vtep_mac = Some(parse_mac(m).ok_or_else(|| RegistryError::Field {
                            field: "BackendData.VtepMAC",
                            value: short_json(&Value::String(m.clone())),
                            reason: "not a MAC address (expected aa:bb:cc:dd:ee:ff)",
                        })?);
                    }
                    Some((_, other)) => {
                        return Err(RegistryError::Field {
                            field: "BackendData.VtepMAC",
                            value: short_json(other),
                            reason: "expected a MAC address string",
                        })
                    }
                }
            }
            Some((_, other)) => {
                return Err(RegistryError::Field {
                    field: "BackendData",
                    value: short_json(other),
                    reason: "expected an object",
                })
            }
        }
        Ok(LeaseAttrs {
            public_ip,
            backend_type,
            vni,
            vtep_mac,
        })
    }
}

/// A node's subnet lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to; 0 for a reservation (a key put
    /// without an etcd lease, which flannel never expires or renews).
    pub etcd_lease: i64,
    /// When the etcd lease runs out, when known (our own lease). Leases seen
    /// through the watch carry `None`: no per-lease TimeToLive RPC is made.
    pub expiration: Option<SystemTime>,
}

impl Lease {
    /// This lease's key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        subnet_key(prefix, self.subnet)
    }

    /// A reservation (no etcd lease attached): never renewed, never expires.
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }

    /// Builds a lease from an etcd key/value, checking the key shape and the
    /// value. Does not check it against a network config: see
    /// [`check_lease_against_config`].
    pub fn from_kv(prefix: &str, key: &str, value: &[u8], etcd_lease: i64) -> Result<Lease, RegistryError> {
        let subnet = parse_subnet_key(prefix, key).ok_or_else(|| RegistryError::NotASubnetKey {
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
            attrs,
            etcd_lease,
            expiration: None,
        })
    }
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
    format!(
        "{}{}-{}",
        subnets_prefix(prefix),
        subnet.addr(),
        subnet.prefix_len()
    )
}

/// The IPv4 subnet of a lease key under `prefix`, or `None` when `key` is not
/// one (wrong prefix, nested path, bad address, host bits set, bad length).
/// Dual-stack keys (`10.12.13.0-24&fd00:12:13::-56`) give their IPv4 part.
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(&subnets_prefix(prefix))?;
    parse_subnet_key_name(rest)
}

/// Parses the last path element of a lease key: `10.1.16.0-24`, optionally
/// followed by `&<ipv6>-<len>`.
pub fn parse_subnet_key_name(name: &str) -> Option<Ipv4Net> {
    let (v4, v6) = match name.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (name, None),
    };
    if let Some(v6) = v6 {
        let (a, l) = v6.rsplit_once('-')?;
        a.parse::<std::net::Ipv6Addr>().ok()?;
        let l: u8 = parse_decimal(l)?;
        if l > 128 {
            return None;
        }
    }
    let (a, l) = v4.rsplit_once('-')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    let len: u8 = parse_decimal(l)?;
    let net = Ipv4Net::new(addr, len).ok()?;
    if net.network() != addr {
        return None;
    }
    Some(net)
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

    #[test]
    fn macs() {
        assert_eq!(parse_mac("C6:D2:32:6f:8f:44"), Some([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]));
        assert_eq!(parse_mac("c6-d2-32-6f-8f-44"), Some([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]));
        assert_eq!(parse_mac("c6:d2:32:6f:8f"), None);
        assert_eq!(parse_mac("c6:d2:32:6f:8f:44:00"), None);
        assert_eq!(format_mac(&[0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]), "c6:d2:32:6f:8f:44");
    }
}
