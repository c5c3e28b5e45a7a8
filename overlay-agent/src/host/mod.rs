//! The host outside BPF: the uplink and public IP, the agent's tunnel
//! device and the cluster route, which bridge the pods are on and which
//! pods, sysctls, flannel's iptables rules, and what other agents left.
pub mod iface;
pub mod leftovers;
pub mod masq;
pub mod netlink;
pub mod pod_bridge;
pub mod pods;
pub mod sysctl;
pub mod tunnel_device;
