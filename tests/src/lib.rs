//! Test harness shared by the integration tests, the demo and the benchmarks.
//!
//! * [`etcd`]: real etcd servers (single node, TLS, auth, small clusters) on
//!   loopback, each with its own ports and data directory.
//! * [`netns`]: testbeds of network namespaces (hosts on a bridged underlay,
//!   pods behind per-host bridges) and tracked processes inside them.
//! * [`certs`]: a throw-away CA with server and client certificates.
//! * [`agent`]: the real `overlay-agent` binary running in a testbed host
//!   (with its own forwards to etcd: [`agent::Agent::start_forwarded`]).
//! * [`cluster`]: a whole cluster in one testbed: agent nodes, flannel kernel
//!   nodes, spare hosts, a pod on each node, one etcd, a watch of its leases.
//! * [`traffic`]: pings, checked TCP transfers and UDP echoes between pods.
//! * [`capture`]: tcpdump on an interface, and the VXLAN and IPv4 frames of
//!   the pcap it wrote.
//! * [`packet`]: frames built byte by byte for the BPF programs' test runs.
//! * [`flannel`]: the reference flannel node, our re-implementation of
//!   flanneld's vxlan (and host-gw) backend on the kernel's data path,
//!   driven by etcd watches; and the same kernel state written statically.
//! * [`docker`]: a real dockerd per node namespace, with its own state
//!   directory, and the `docker` CLI against it (containers, networks).
//! * [`cni`]: the real CNI plugins (bridge, host-local, loopback) invoked
//!   as a runtime does, with flannel's delegate configuration.
//! * [`forward`]: reaching the root namespace's etcd from inside a namespace.
//! * [`control_plane`]: many synthetic leases in etcd, etcd's request
//!   counters, the agent's `SUBNETS` map (the benchmark and the tests).
//!
//! Everything a test creates is torn down by `Drop`, also when the test
//! panics. Leftovers of test processes that were killed outright (so no
//! `Drop` ran) are removed the next time a harness object is created.
//!
//! All of it needs root (network namespaces, bpffs).

pub mod agent;
pub mod bench;
pub mod capture;
pub mod certs;
pub mod cluster;
pub mod cni;
pub mod control_plane;
pub mod docker;
pub mod etcd;
pub mod flannel;
pub mod forward;
pub mod netns;
pub mod packet;
pub mod traffic;
mod util;

pub use util::{cleanup_stale, poll_until, random_hex};
