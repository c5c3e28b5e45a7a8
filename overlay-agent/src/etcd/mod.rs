//! The etcd side of the control plane, laid out as flannel does it
//! (shared/reference/flannel-compat.md).
//!
//! - [`registry`]: key names and lease values (pure, no I/O)
//! - [`backoff`]: waiting between attempts, and the one retry loop
//! - [`client`]: settings, connecting (TLS, auth, several endpoints), retries
//! - [`lease`]: acquiring, renewing, releasing our own lease
//! - [`keeper`]: the task keeping our lease (renewing it, taking it back)
//! - [`watch`]: everyone's leases as typed events (list + watch + resync)
//! - [`config_watch`]: whether etcd's network config is still the one we run with

pub mod backoff;
pub mod client;
pub mod config_watch;
pub mod error;
pub mod keeper;
pub mod lease;
pub mod registry;
pub mod status;
pub mod watch;

pub use backoff::{Backoff, Transient};
pub use client::{connect, EtcdSettings};
pub use config_watch::spawn_config_watch;
pub use error::EtcdError;
pub use keeper::spawn_lease_keeper;
pub use lease::{LeaseListing, PreviousSubnets, SubnetManager};
pub use registry::{
    config_key, lease_key, parse_lease_key, parse_subnet_key, subnet_key, subnets_prefix, Lease, LeaseAttrs, LeaseId,
    RegistryError, DEFAULT_PREFIX, EMPTY_IPV4_SUBNET,
};
pub use status::EtcdStatus;
pub use watch::{spawn_lease_watch, spawn_lease_watch_from, spawn_lease_watch_with_status, LeaseEvent};
