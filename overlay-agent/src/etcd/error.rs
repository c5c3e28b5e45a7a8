//! Errors of the etcd side. Every message names the key (or endpoints) and the
//! problem, and says what to do when there is something to do.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::ConfigError;
use crate::etcd::backoff::Transient;
use crate::etcd::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd settings: {0}")]
    Settings(String),

    #[error("cannot read etcd {what} {path:?}: {reason}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error("cannot reach etcd at {endpoints} within {timeout:?}: {reason}{hint}")]
    Unreachable {
        endpoints: String,
        timeout: Duration,
        reason: String,
        /// What to check, when the reason suggests something (may be empty).
        hint: &'static str,
    },

    #[error("etcd at {endpoints} refused us: {reason}{hint}")]
    Rejected {
        endpoints: String,
        reason: String,
        hint: &'static str,
    },

    #[error("etcd authentication as user {user:?} failed at {endpoints}: {reason} (check --etcd-username / --etcd-password)")]
    Auth {
        user: String,
        endpoints: String,
        reason: String,
    },

    #[error("etcd {op} of {key:?} failed: {source}")]
    Request {
        op: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },

    #[error("etcd {op} of {key:?} timed out after {after:?} (endpoints {endpoints})")]
    Timeout {
        op: &'static str,
        key: String,
        after: Duration,
        endpoints: String,
    },

    #[error(
        "network config not found: etcd key {key} does not exist (flannel: \"flannel config not \
         found in etcd store. Did you create your config using etcdv3 API?\"). Create it with the \
         etcd v3 API, e.g.: ETCDCTL_API=3 etcdctl put {key} \
         '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
    )]
    ConfigMissing { key: String },

    #[error("invalid network config in etcd key {key}: {source}")]
    Config {
        key: String,
        #[source]
        source: ConfigError,
    },

    #[error("{0}")]
    Registry(#[from] RegistryError),

    #[error(
        "out of subnets: all {total} /{subnet_len} subnets of Network {network} between SubnetMin \
         {subnet_min} and SubnetMax {subnet_max} are leased (or overlap a lease) under {subnets}; \
         delete stale leases there or enlarge Network / the SubnetMin..SubnetMax range"
    )]
    OutOfSubnets {
        network: Ipv4Net,
        subnet_len: u8,
        subnet_min: Ipv4Addr,
        subnet_max: Ipv4Addr,
        total: u64,
        subnets: String,
    },

    #[error(
        "out of IPv6 subnets: all /{subnet_len} subnets of IPv6Network {network} between \
         IPv6SubnetMin {subnet_min} and IPv6SubnetMax {subnet_max} are leased (or overlap a lease) \
         under {subnets}; delete stale leases there or enlarge IPv6Network / the \
         IPv6SubnetMin..IPv6SubnetMax range"
    )]
    OutOfIpv6Subnets {
        network: Ipv6Net,
        subnet_len: u8,
        subnet_min: Ipv6Addr,
        subnet_max: Ipv6Addr,
        subnets: String,
    },

    #[error(
        "could not acquire a subnet lease under {subnets} after {attempts} attempts: other nodes \
         kept taking the chosen subnets or changing our lease first"
    )]
    TooManyConflicts { attempts: u32, subnets: String },

    #[error("our lease {key} is lost: {reason}")]
    LeaseLost { key: String, reason: String },
}

impl EtcdError {
    /// Errors that a later retry may fix (etcd unreachable, timeouts, races).
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. }
            | EtcdError::Timeout { .. }
            | EtcdError::TooManyConflicts { .. } => true,
            EtcdError::Request { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

impl Transient for EtcdError {
    fn is_transient(&self) -> bool {
        EtcdError::is_transient(self)
    }
}

// How etcd-client's errors are read here, by the client and by the lease code.

/// Errors worth retrying: the request may not have reached a healthy member.
pub(crate) fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    // A server certificate we do not trust will not become trusted by
    // retrying, nor will a server accept the client certificate (or its
    // absence) it refused with a TLS alert.
    let d = describe(e);
    if d.contains("invalid peer certificate") || REFUSED_CLIENT_CERT.iter().any(|a| d.contains(a)) {
        return false;
    }
    match e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        E::LeaseKeepAliveError(m) => !m.contains("lease not found"),
        E::GRpcStatus(s) => {
            // gRPC codes: 1 Cancelled, 2 Unknown, 4 DeadlineExceeded,
            // 8 ResourceExhausted, 10 Aborted, 13 Internal, 14 Unavailable.
            matches!(s.code() as i32, 1 | 2 | 4 | 8 | 10 | 13 | 14)
        }
        _ => false,
    }
}

/// TLS alerts (as rustls names them) with which a server refuses our client
/// certificate or the lack of one.
pub(crate) const REFUSED_CLIENT_CERT: [&str; 3] =
    ["received fatal alert: BadCertificate", "received fatal alert: UnknownCA", "received fatal alert: CertificateRequired"];

pub(crate) fn is_invalid_token(e: &etcd_client::Error) -> bool {
    match e {
        // 16 Unauthenticated: etcd's "invalid auth token" (e.g. after an etcd
        // restart, simple tokens are kept in memory only).
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == 16,
        _ => false,
    }
}

/// A one-line description of an etcd-client error: the gRPC message or the
/// error chain, without the repetitions tonic's nesting produces.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut push = |m: String| {
        let m = m.trim().to_string();
        if !m.is_empty() && !parts.iter().any(|p| p.contains(&m)) {
            parts.retain(|p| !m.contains(p.as_str()));
            parts.push(m);
        }
    };
    let mut src: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => {
            push(if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() });
            std::error::Error::source(s)
        }
        other => {
            push(other.to_string());
            std::error::Error::source(other)
        }
    };
    while let Some(inner) = src {
        push(inner.to_string());
        src = inner.source();
    }
    parts.join(": ")
}

/// The etcd lease is gone (expired or revoked).
pub(crate) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        _ => false,
    }
}
