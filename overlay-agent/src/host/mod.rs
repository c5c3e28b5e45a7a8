//! The host outside BPF: the uplink and public IP, the agent's tunnel
//! device and the cluster route, which bridge the pods are on and which
//! pods, sysctls, flannel's iptables or nftables rules, the blackhole route
//! for our lease, and what other agents left.
pub mod blackhole;
pub mod iface;
pub mod leftovers;
pub mod masq;
pub mod masquerade;
pub mod netlink;
pub mod nftables;
pub mod pod_bridge;
pub mod pods;
pub mod sysctl;
pub mod tunnel_device;
pub mod tunnel_v6;
