//! Errors of the etcd side. Every message names the key (or endpoints) and the
//! problem, and says what to do when there is something to do.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::config::ConfigError;
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
            EtcdError::Request { source, .. } => crate::etcd::client::is_transient(source),
            _ => false,
        }
    }
}
