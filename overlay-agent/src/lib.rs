//! overlay-agent: a flannel-compatible overlay network agent whose data path
//! is eBPF. The binary is a thin clap front over these modules.

pub mod datapath;
