//! Which uplink and PublicIP the real agent binary chooses on a host with
//! several links, against flanneld's rules (shared/reference/flannel-compat.md
//! and flannel's `ipmatch.LookupExtIface`): `--iface` by name (the first
//! global address, a link-local one only when there is no other) and by
//! address (that address), `--iface-regex` (addresses before names),
//! `--iface-can-reach` (the route's interface and source address), the
//! default route, `--public-ip` (advertised instead, the uplink unchanged).
//! Checked in what users see: the lease's PublicIP in etcd, the subnet
//! file's FLANNEL_MTU (the chosen uplink's MTU - 50) and the agent's log.
//!
//! The host (a testbed node: eth0 on the underlay, MTU 1500) gets a default
//! route out of eth0 and:
//! - up1 (MTU 1400): 169.254.50.2/16, then 198.18.77.2/24
//! - up2 (MTU 1300): 172.31.5.2/24, then 172.31.6.2/24, and a route
//!   198.51.100.0/24 via 172.31.6.1 src 172.31.6.2; fd00:31::2/64
//!
//! (The IPv6 side of the choice, for networks enabling IPv6, is in
//! `dual_stack_control.rs`.)
use std::time::Duration;

use overlay_tests::agent::{Agent, AgentOptions, Launch};
use overlay_tests::etcd::Etcd;
use overlay_tests::netns::Testbed;

const CONFIG: &str = r#"{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan"}}"#;

struct Chosen {
    public_ip: String,
    mtu: u32,
    log: String,
}

/// A fresh host with the links above, the network config under a fresh
/// prefix, and the agent started there with `flags` and `env`.
fn launch(etcd: &Etcd, flags: &[&str], env: &[(&str, &str)]) -> (Testbed, Agent, String) {
    let tb = Testbed::new(1).expect("testbed");
    let host = tb.host(0);
    host.ns()
        .sh(
            "set -e
             ip link add up1 mtu 1400 type veth peer name up1p mtu 1400
             ip link set up1p up; ip link set up1 up
             ip addr add 169.254.50.2/16 dev up1
             ip addr add 198.18.77.2/24 dev up1
             ip link add up2 mtu 1300 type veth peer name up2p mtu 1300
             ip link set up2p up; ip link set up2 up
             ip addr add 172.31.5.2/24 dev up2
             ip addr add 172.31.6.2/24 dev up2
             ip route add 198.51.100.0/24 via 172.31.6.1 dev up2 src 172.31.6.2
             ip -6 addr add fd00:31::2/64 dev up2 nodad
             ip route add unreachable 203.0.113.0/24
             ip route add default dev eth0",
        )
        .expect("adding links");
    let prefix = format!("/iface-{}/network", tb.id());
    etcd.put(&format!("{prefix}/config"), CONFIG).unwrap();
    let agent = Agent::start_forwarded_with(
        host,
        AgentOptions {
            etcd_endpoints: &etcd.endpoint(),
            prefix: &prefix,
            dir: tb.dir(),
            extra: flags.iter().map(|f| f.to_string()).collect(),
        },
        Launch {
            agent_chooses_iface: true,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        },
    )
    .expect("starting the agent");
    (tb, agent, prefix)
}

/// What the agent chose with `flags` and `env`.
fn choose_with(etcd: &Etcd, flags: &[&str], env: &[(&str, &str)]) -> Chosen {
    let (_tb, agent, prefix) = launch(etcd, flags, env);
    agent.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{flags:?} {env:?}: {e:#}"));
    let leases = etcd.get_prefix(&format!("{prefix}/subnets/")).unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    let value: serde_json::Value = serde_json::from_str(&leases[0].1).unwrap();
    let (subnet, len, _) = agent.lease().unwrap();
    assert!(leases[0].0.ends_with(&format!("/{subnet}-{len}")), "subnet file {subnet}/{len} vs lease {}", leases[0].0);
    Chosen {
        public_ip: value["PublicIP"].as_str().unwrap_or_default().to_string(),
        mtu: agent.flannel_mtu().unwrap(),
        log: agent.log_text(),
    }
}

fn choose(etcd: &Etcd, flags: &[&str]) -> Chosen {
    choose_with(etcd, flags, &[])
}

fn uplink_line(log: &str) -> &str {
    log.lines().find(|l| l.contains("] uplink ")).unwrap_or("(no uplink line)")
}

#[test]
fn iface_by_name_prefers_a_global_address() {
    let etcd = Etcd::start().unwrap();
    // up1's first address is link-local: flanneld skips it for 198.18.77.2.
    let c = choose(&etcd, &["--iface=up1"]);
    assert_eq!(c.public_ip, "198.18.77.2", "{}", uplink_line(&c.log));
    assert_eq!(c.mtu, 1350);
    assert!(uplink_line(&c.log).contains("uplink up1 (198.18.77.2/24, MTU 1400)"), "{}", uplink_line(&c.log));
    // Listed several times: the first usable one wins.
    let c = choose(&etcd, &["--iface=nosuch0", "--iface=up2"]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("172.31.5.2", 1250), "{}", uplink_line(&c.log));
}

#[test]
fn iface_by_address_takes_that_address() {
    let etcd = Etcd::start().unwrap();
    let c = choose(&etcd, &["--iface=172.31.6.2"]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("172.31.6.2", 1250), "{}", uplink_line(&c.log));
    assert!(uplink_line(&c.log).contains("uplink up2 (172.31.6.2/24"), "{}", uplink_line(&c.log));
}

/// flanneld's `--iface` may name an IPv6 address: the interface carrying
/// it, whose IPv4 address an IPv4 network uses.
#[test]
fn iface_by_ipv6_address_takes_that_interface() {
    let etcd = Etcd::start().unwrap();
    let c = choose(&etcd, &["--iface=fd00:31::2"]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("172.31.5.2", 1250), "{}", uplink_line(&c.log));
    assert!(uplink_line(&c.log).contains("uplink up2 "), "{}", uplink_line(&c.log));
}

#[test]
fn iface_regex_matches_addresses_then_names() {
    let etcd = Etcd::start().unwrap();
    let c = choose(&etcd, &["--iface-regex=^198\\.18\\.77\\."]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("198.18.77.2", 1350), "{}", uplink_line(&c.log));
    // A name: that interface's preferred address.
    let c = choose(&etcd, &["--iface-regex=^up2$"]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("172.31.5.2", 1250), "{}", uplink_line(&c.log));
    // Patterns in order; the second address of up2 is matched as such.
    let c = choose(&etcd, &["--iface-regex=^nomatch$", "--iface-regex=\\.6\\.2$"]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("172.31.6.2", 1250), "{}", uplink_line(&c.log));
}

#[test]
fn iface_can_reach_uses_the_route_and_its_source() {
    let etcd = Etcd::start().unwrap();
    // up2's route to 198.51.100.0/24 leaves from its second address.
    let c = choose(&etcd, &["--iface-can-reach=198.51.100.7"]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("172.31.6.2", 1250), "{}", uplink_line(&c.log));
}

#[test]
fn default_route_public_ip_and_environment_forms() {
    let etcd = Etcd::start().unwrap();
    // The testbed's eth0 carries the default route.
    let c = choose(&etcd, &[]);
    assert_eq!(c.mtu, 1450, "{}", uplink_line(&c.log));
    assert!(uplink_line(&c.log).contains("uplink eth0 "), "{}", uplink_line(&c.log));
    assert!(uplink_line(&c.log).ends_with(&format!("public IP {}", c.public_ip)), "{}", uplink_line(&c.log));
    // --public-ip is advertised; the uplink (and so the MTU) stays up1.
    let c = choose(&etcd, &["--iface=up1", "--public-ip=203.0.113.9"]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("203.0.113.9", 1350), "{}", uplink_line(&c.log));
    assert!(uplink_line(&c.log).contains("public IP 203.0.113.9"), "{}", uplink_line(&c.log));
    // FLANNELD_IFACE / FLANNELD_PUBLIC_IP / FLANNELD_IFACE_CAN_REACH.
    let c = choose_with(&etcd, &[], &[("FLANNELD_IFACE", "up2"), ("FLANNELD_PUBLIC_IP", "203.0.113.10")]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("203.0.113.10", 1250), "{}", uplink_line(&c.log));
    let c = choose_with(&etcd, &[], &[("FLANNELD_IFACE_CAN_REACH", "198.51.100.7")]);
    assert_eq!((c.public_ip.as_str(), c.mtu), ("172.31.6.2", 1250), "{}", uplink_line(&c.log));
}

#[test]
fn no_usable_interface_is_a_clear_error() {
    let etcd = Etcd::start().unwrap();
    for (flags, needle) in [
        (&["--iface=nosuch0"][..], "--iface nosuch0: no such interface"),
        (&["--iface=lo"][..], "--iface lo: the interface has no usable IPv4 address"),
        (&["--iface-regex=^zz"][..], "no interface matches --iface-regex"),
        (&["--iface-can-reach=203.0.113.1"][..], "203.0.113.1"),
        (&["--iface=fd00:99::1"][..], "--iface fd00:99::1: no such interface"),
        (&["--iface-can-reach=fd00:31::9"][..], "an IPv6 address, but the network config enables IPv4"),
    ] {
        let (_tb, mut agent, _) = launch(&etcd, flags, &[]);
        let status = agent.wait_exit(Duration::from_secs(20));
        let log = agent.log_text();
        assert!(status.is_some_and(|s| !s.success()), "{flags:?}: the agent did not fail ({status:?}); log:\n{log}");
        let error = log.lines().filter(|l| l.contains("choosing the uplink")).collect::<Vec<_>>().join("\n");
        assert!(error.contains(needle), "{flags:?}: {needle:?} not in the error; log:\n{log}");
    }
}
