//! overlay-agent: a flannel-compatible overlay network agent whose data path
//! is eBPF. The binary (main.rs) is a thin front over these modules.
//!
//! Flow, one direction: etcd -> `etcd::watch` (typed lease events) -> `node`
//! (decides) -> `datapath::maps` (whole entries) -> the BPF programs.

pub mod batched_stderr;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod docker_opts;
pub mod etcd;
pub mod health;
pub mod host;
pub mod inspect;
pub mod node;
pub mod notify;
pub mod strconv;
pub mod subnet_env;
