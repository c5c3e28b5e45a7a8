//! flannel's subnet file (`--subnet-file`, default `/run/flannel/subnet.env`).
//!
//! Written exactly as flanneld writes it (no quotes, no `export`):
//! ```text
//! FLANNEL_NETWORK=10.42.0.0/16
//! FLANNEL_SUBNET=10.42.0.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//! with `FLANNEL_IPV6_NETWORK` / `FLANNEL_IPV6_SUBNET` right after the IPv4
//! pair when IPv6 is enabled (flanneld's order; FLANNEL_IPV6_SUBNET is the
//! first address of the IPv6 lease with its length, like FLANNEL_SUBNET). An
//! IPv6-only node's file has no IPv4 pair at all, as flanneld writes it:
//! ```text
//! FLANNEL_IPV6_NETWORK=fd00:42::/48
//! FLANNEL_IPV6_SUBNET=fd00:42:0:7::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//! The file is replaced atomically (temporary file in the same directory,
//! fsync, rename) with mode 0644.
//!
//! Reading is tolerant: comments, blank lines, `export`, single or double
//! quotes are accepted, so a file edited by hand or rewritten by a tool
//! still parses.

use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;
use crate::etcd::lease::PreviousSubnets;
use crate::etcd::registry::{Lease, EMPTY_IPV4_SUBNET};

pub const KEY_NETWORK: &str = "FLANNEL_NETWORK";
pub const KEY_SUBNET: &str = "FLANNEL_SUBNET";
pub const KEY_MTU: &str = "FLANNEL_MTU";
pub const KEY_IPMASQ: &str = "FLANNEL_IPMASQ";
pub const KEY_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
pub const KEY_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";

/// The contents of a subnet file.
///
/// An IPv6-only file (no IPv4 pair) has `network` and `subnet` set to
/// flannel's empty `0.0.0.0/0` ([`SubnetEnv::has_ipv4`] is false), as the
/// IPv6-only lease's key has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The cluster network (`FLANNEL_NETWORK`).
    pub network: Ipv4Net,
    /// First usable address of the lease with the lease's prefix length,
    /// e.g. `10.42.0.1/24` for the lease `10.42.0.0/24` (`FLANNEL_SUBNET`).
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET`: first address of the IPv6 lease with its
    /// length, e.g. `fd00:42:0:7::1/64` for `fd00:42:0:7::/64`.
    pub ipv6_subnet: Option<Ipv6Net>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("cannot read subnet file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("subnet file {path} has no {key}")]
    Missing { path: PathBuf, key: &'static str },
    #[error("subnet file {path}: invalid {key}={value:?}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
    },
}

impl SubnetEnv {
    /// Build from the lease itself (network address + prefix): FLANNEL_SUBNET
    /// becomes the lease's first usable address, as flanneld writes it.
    pub fn from_lease(network: Ipv4Net, lease: Ipv4Net, mtu: u32, ipmasq: bool) -> SubnetEnv {
        SubnetEnv {
            network,
            subnet: first_usable(lease),
            mtu,
            ipmasq,
            ipv6_network: None,
            ipv6_subnet: None,
        }
    }

    /// The file for our lease under `cfg`, as flanneld's `WriteSubnetFile`
    /// writes it: the IPv4 pair when IPv4 is enabled, the IPv6 pair when
    /// IPv6 is (and the lease has an IPv6 subnet).
    pub fn for_lease(cfg: &NetworkConfig, lease: &Lease, mtu: u32, ipmasq: bool) -> SubnetEnv {
        let mut env = match lease.ipv4_subnet().filter(|_| cfg.enable_ipv4) {
            Some(sn) => SubnetEnv::from_lease(cfg.network, sn, mtu, ipmasq),
            None => SubnetEnv {
                network: EMPTY_IPV4_SUBNET,
                subnet: EMPTY_IPV4_SUBNET,
                mtu,
                ipmasq,
                ipv6_network: None,
                ipv6_subnet: None,
            },
        };
        if let (Some(v6), Some(sn)) = (&cfg.ipv6, lease.ipv6_subnet) {
            env.ipv6_network = Some(v6.network);
            env.ipv6_subnet = Some(first_usable_v6(sn));
        }
        env
    }

    /// Whether the file has the IPv4 pair (not an IPv6-only node's).
    pub fn has_ipv4(&self) -> bool {
        self.subnet != EMPTY_IPV4_SUBNET
    }

    /// The lease (network address with prefix) FLANNEL_SUBNET belongs to:
    /// `10.42.0.1/24` → `10.42.0.0/24`.
    pub fn lease_subnet(&self) -> Ipv4Net {
        self.subnet.trunc()
    }

    /// The IPv6 lease FLANNEL_IPV6_SUBNET belongs to.
    pub fn ipv6_lease_subnet(&self) -> Option<Ipv6Net> {
        self.ipv6_subnet.map(|n| n.trunc())
    }

    /// The exact text flanneld writes.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.has_ipv4() {
            s.push_str(&format!("{KEY_NETWORK}={}\n", self.network));
            s.push_str(&format!("{KEY_SUBNET}={}\n", self.subnet));
        }
        if let Some(n) = &self.ipv6_network {
            s.push_str(&format!("{KEY_IPV6_NETWORK}={n}\n"));
        }
        if let Some(n) = &self.ipv6_subnet {
            s.push_str(&format!("{KEY_IPV6_SUBNET}={n}\n"));
        }
        s.push_str(&format!("{KEY_MTU}={}\n", self.mtu));
        s.push_str(&format!("{KEY_IPMASQ}={}\n", self.ipmasq));
        s
    }

    /// Replace `path` atomically with [`SubnetEnv::render`]'s text, mode 0644,
    /// creating parent directories (0755) as needed.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        write_file_atomic(path, self.render().as_bytes(), 0o644)
    }

    /// Read and validate a subnet file. Errors name the file and the key.
    pub fn read(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = fs::read_to_string(path).map_err(|source| SubnetEnvError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse subnet-file text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let vars = parse_vars(text);
        let get = |key: &'static str| -> Result<String, SubnetEnvError> {
            lookup(&vars, key).ok_or_else(|| SubnetEnvError::Missing {
                path: path.to_owned(),
                key,
            })
        };
        let invalid = |key: &'static str, value: &str, reason: String| SubnetEnvError::Invalid {
            path: path.to_owned(),
            key,
            value: value.to_owned(),
            reason,
        };

        // An IPv6-only node's file has no IPv4 pair; any other file is read
        // in the order flanneld writes it, the first problem reported.
        let ipv6_only = lookup(&vars, KEY_SUBNET).is_none()
            && lookup(&vars, KEY_NETWORK).is_none()
            && lookup(&vars, KEY_IPV6_SUBNET).is_some();
        let (network, subnet) = if ipv6_only {
            (EMPTY_IPV4_SUBNET, EMPTY_IPV4_SUBNET)
        } else {
            let subnet_s = get(KEY_SUBNET)?;
            let subnet =
                parse_flannel_subnet(&subnet_s).map_err(|r| invalid(KEY_SUBNET, &subnet_s, r))?;

            // Newer flanneld may write several comma-separated networks; keep the
            // one holding our subnet.
            let network_s = get(KEY_NETWORK)?;
            let mut networks = Vec::new();
            for part in network_s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let n: Ipv4Net = part
                    .parse()
                    .map_err(|e| invalid(KEY_NETWORK, &network_s, format!("{e}")))?;
                networks.push(n.trunc());
            }
            let network = networks
                .iter()
                .find(|n| n.contains(&subnet.addr()))
                .or(networks.first())
                .copied()
                .ok_or_else(|| invalid(KEY_NETWORK, &network_s, "empty".to_owned()))?;
            (network, subnet)
        };

        let ipv6 = |key: &'static str| -> Result<Option<Ipv6Net>, SubnetEnvError> {
            match lookup(&vars, key).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => parse_flannel_ipv6_subnet(&v).map(Some).map_err(|r| invalid(key, &v, r)),
            }
        };
        let ipv6_network = ipv6(KEY_IPV6_NETWORK)?.map(|n| n.trunc());
        let ipv6_subnet = ipv6(KEY_IPV6_SUBNET)?;
        if ipv6_subnet.is_some() && ipv6_network.is_none() {
            return Err(SubnetEnvError::Missing { path: path.to_owned(), key: KEY_IPV6_NETWORK });
        }

        let mtu_s = get(KEY_MTU)?;
        let mtu: u32 = mtu_s
            .trim()
            .parse()
            .map_err(|e| invalid(KEY_MTU, &mtu_s, format!("{e}")))?;

        let ipmasq_s = get(KEY_IPMASQ)?;
        let ipmasq = crate::strconv::parse_go_bool(ipmasq_s.trim())
            .map_err(|e| invalid(KEY_IPMASQ, &ipmasq_s, e.to_string()))?;

        Ok(SubnetEnv {
            network,
            subnet,
            mtu,
            ipmasq,
            ipv6_network,
            ipv6_subnet,
        })
    }
}

/// `lease` (e.g. 10.42.0.0/24) → its first usable address with the lease's
/// prefix (10.42.0.1/24), flanneld's FLANNEL_SUBNET. Host bits of `lease`
/// are ignored.
pub fn first_usable(lease: Ipv4Net) -> Ipv4Net {
    let base = u32::from(lease.network());
    let addr = Ipv4Addr::from(base.wrapping_add(1));
    Ipv4Net::new(addr, lease.prefix_len()).expect("prefix length comes from an Ipv4Net")
}

/// The IPv6 counterpart of [`first_usable`]: `fd00:42:0:7::/64` →
/// `fd00:42:0:7::1/64` (flanneld's FLANNEL_IPV6_SUBNET).
pub fn first_usable_v6(lease: Ipv6Net) -> Ipv6Net {
    let addr = Ipv6Addr::from(u128::from(lease.network()).wrapping_add(1));
    Ipv6Net::new(addr, lease.prefix_len()).expect("prefix length comes from an Ipv6Net")
}

/// A FLANNEL_IPV6_SUBNET or FLANNEL_IPV6_NETWORK value (`fd00:42:0:7::1/64`)
/// as written, host bits kept.
pub fn parse_flannel_ipv6_subnet(s: &str) -> Result<Ipv6Net, String> {
    let (addr, len) = split_address_prefix::<Ipv6Addr>(s, "an IPv6 address")?;
    Ipv6Net::new(addr, len).map_err(|e| e.to_string())
}

/// `ADDRESS/PREFIX` split and parsed, for either family (`what` names the
/// address kind in errors).
fn split_address_prefix<A: std::str::FromStr>(s: &str, what: &str) -> Result<(A, u8), String> {
    let s = s.trim();
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not ADDRESS/PREFIX"))?;
    let a = addr.parse().map_err(|_| format!("'{addr}' is not {what}"))?;
    let len = len.parse().map_err(|_| format!("'{len}' is not a prefix length"))?;
    Ok((a, len))
}

/// A FLANNEL_SUBNET value (`10.42.0.1/24`) as written, host bits kept.
pub fn parse_flannel_subnet(s: &str) -> Result<Ipv4Net, String> {
    let (addr, len) = split_address_prefix::<Ipv4Addr>(s, "an IPv4 address")?;
    Ipv4Net::new(addr, len).map_err(|e| e.to_string())
}

/// The lease (network address + prefix) a FLANNEL_SUBNET value names:
/// `10.42.0.1/24` → `10.42.0.0/24`.
pub fn lease_from_flannel_subnet(s: &str) -> Result<Ipv4Net, String> {
    parse_flannel_subnet(s).map(|n| n.trunc())
}

/// The lease recorded in a subnet file, if the file exists and has a valid
/// FLANNEL_SUBNET (what flanneld tries to reclaim on restart). Only
/// FLANNEL_SUBNET is needed; the other keys may be missing.
pub fn read_previous_lease(path: &Path) -> Option<Ipv4Net> {
    read_previous_subnets(path).ipv4
}

/// Both leases recorded in a subnet file (FLANNEL_SUBNET and
/// FLANNEL_IPV6_SUBNET), each when present and valid: what the agent asks
/// for again on restart (flanneld's previous subnet and previous IPv6
/// subnet).
pub fn read_previous_subnets(path: &Path) -> PreviousSubnets {
    let Ok(text) = fs::read_to_string(path) else {
        return PreviousSubnets::default();
    };
    let vars = parse_vars(&text);
    PreviousSubnets {
        ipv4: lookup(&vars, KEY_SUBNET).and_then(|v| lease_from_flannel_subnet(&v).ok()),
        ipv6: lookup(&vars, KEY_IPV6_SUBNET).and_then(|v| parse_flannel_ipv6_subnet(&v).ok()).map(|n| n.trunc()),
    }
}

fn lookup(vars: &[(String, String)], key: &str) -> Option<String> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// Parse shell-style `KEY=value` assignments, in file order (the last of
/// duplicate keys wins for a reader that folds them, as a shell would).
///
/// Accepted: blank lines, `#` comments (whole-line, or after whitespace in
/// an unquoted value), an `export ` prefix, values in double quotes (with
/// `\"`, `\\`, `\$`, `` \` `` escapes), in single quotes (literal), or bare.
/// Lines that are not assignments are skipped.
pub fn parse_vars(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(rest) = l.strip_prefix("export") {
            if rest.starts_with([' ', '\t']) {
                l = rest.trim_start();
            }
        }
        let Some((key, raw)) = l.split_once('=') else {
            continue;
        };
        let key = key.trim_end();
        let valid_key = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !key.starts_with(|c: char| c.is_ascii_digit());
        if !valid_key {
            continue;
        }
        out.push((key.to_owned(), parse_value(raw)));
    }
    out
}

/// One shell word (quotes may be mixed: `a"b c"'d'`), stopping at
/// unquoted whitespace.
fn parse_value(raw: &str) -> String {
    let mut v = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.peek() {
                            Some(&n) if matches!(n, '"' | '\\' | '$' | '`') => {
                                v.push(n);
                                chars.next();
                            }
                            Some(&'\n') => {
                                chars.next();
                            }
                            _ => v.push('\\'),
                        },
                        c => v.push(c),
                    }
                }
            }
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    v.push(c);
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    v.push(n);
                }
            }
            c if c.is_whitespace() => break,
            c => v.push(c),
        }
    }
    v
}

/// Replace `path` with `contents` atomically: parent directories created
/// (0755), a temporary file in the same directory written, given `mode`
/// (independent of the umask), fsynced, renamed over `path`, and the
/// directory fsynced. On failure the temporary file is removed.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)?;

    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));

    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_usable_address() {
        let lease: Ipv4Net = "10.42.7.0/24".parse().unwrap();
        assert_eq!(first_usable(lease).to_string(), "10.42.7.1/24");
        let e = SubnetEnv::from_lease("10.42.0.0/16".parse().unwrap(), lease, 1450, true);
        assert_eq!(e.lease_subnet(), lease);
    }

    #[test]
    fn ipv6_first_usable_and_layouts() {
        let sn: Ipv6Net = "fd00:42:0:7::/64".parse().unwrap();
        assert_eq!(first_usable_v6(sn).to_string(), "fd00:42:0:7::1/64");
        let cfg = NetworkConfig::parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:42::/48"}"#).unwrap();
        let lease = Lease {
            subnet: EMPTY_IPV4_SUBNET,
            ipv6_subnet: Some(sn),
            attrs: crate::etcd::registry::LeaseAttrs::host_gw(Ipv4Addr::UNSPECIFIED),
            etcd_lease: 0,
            expiration: None,
        };
        let env = SubnetEnv::for_lease(&cfg, &lease, 1450, true);
        let text = env.render();
        assert_eq!(text, "FLANNEL_IPV6_NETWORK=fd00:42::/48\nFLANNEL_IPV6_SUBNET=fd00:42:0:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
        let back = SubnetEnv::parse(&text, Path::new("x")).unwrap();
        assert_eq!(back, env);
        assert!(!back.has_ipv4());
        assert_eq!(back.ipv6_lease_subnet(), Some(sn));
    }

    #[test]
    fn value_quoting() {
        let v = parse_vars(
            "A=\"x y\" # c\nexport B='q\"'\nC=plain # comment\nD=a\\ b\n#E=1\nbogus line\n",
        );
        assert_eq!(
            v,
            vec![
                ("A".into(), "x y".into()),
                ("B".into(), "q\"".into()),
                ("C".into(), "plain".into()),
                ("D".into(), "a b".into()),
            ]
        );
    }
}
