//! The host outside BPF: the uplink and public IP, the pod bridge and its
//! routes, sysctls, flannel's iptables rules, and the pods on the bridge.
pub mod bridge;
pub mod iface;
pub mod masq;
pub mod netlink;
pub mod pods;
