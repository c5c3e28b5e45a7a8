//! The host outside BPF: the uplink and public IP, the pod bridge and its
//! routes, sysctls, and flannel's iptables rules.
pub mod bridge;
pub mod iface;
pub mod masq;
pub mod netlink;
