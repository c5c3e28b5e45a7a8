//! The control-plane half of dual stack (issue #15), on real hosts:
//! - the uplink and PublicIPv6 the agent's `host::iface` chooses for a
//!   dual-stack or IPv6-only network (the real netlink code, run inside a
//!   testbed host's network namespace), against flanneld's rules
//!   (`ipmatch.LookupExtIface`): `--iface` by IPv6 address, `--public-ipv6`,
//!   the IPv6 default route when there is no IPv4 one, both default routes
//!   on one interface.
//!
//! IPv6-only clusters end to end: tests/tests/ipv6_only.rs.
//!
//! The hosts (testbed nodes: eth0 on the underlay) get:
//! - eth0: fd00:77::10/64 (plus its IPv4 underlay address)
//! - up1: 198.18.77.2/24, fd00:88::5/64, then fd00:88::6/64 (the kernel
//!   lists IPv6 addresses newest first: fd00:88::6 is up1's first, the one
//!   flanneld's `GetInterfaceIP6Addrs()[0]` takes)
//! - up2: 172.31.5.2/24 and only a link-local IPv6 address

use std::net::{Ipv4Addr, Ipv6Addr};

use overlay_agent::host::iface::{self, Families, IfaceError, IfaceSelection, Uplink};
use overlay_agent::host::netlink;
use overlay_tests::netns::{Host, Testbed};

const DUAL: Families = Families { ipv4: true, ipv6: true };
const V6_ONLY: Families = Families { ipv4: false, ipv6: true };

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A testbed host with the links above and the given routes (`ip` lines).
fn host_with(routes: &[&str]) -> Testbed {
    let tb = Testbed::new(1).expect("testbed");
    let mut script = String::from(
        "set -e
         ip -6 addr add fd00:77::10/64 dev eth0 nodad
         ip link add up1 type veth peer name up1p
         ip link set up1p up; ip link set up1 up
         ip addr add 198.18.77.2/24 dev up1
         ip -6 addr add fd00:88::5/64 dev up1 nodad
         ip -6 addr add fd00:88::6/64 dev up1 nodad
         ip link add up2 type veth peer name up2p
         ip link set up2p up; ip link set up2 up
         ip addr add 172.31.5.2/24 dev up2
         ip -6 addr add fe80::99/64 dev up2 nodad
         ip route del default 2>/dev/null || true
        ",
    );
    for r in routes {
        script.push_str(r);
        script.push('\n');
    }
    tb.host(0).ns().sh(&script).expect("setting up links");
    tb
}

/// What `select_uplink_for` chooses inside `host`'s namespace.
fn choose(host: &Host, sel: IfaceSelection, families: Families) -> Result<Uplink, IfaceError> {
    host.ns().in_ns(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let handle = netlink::connect().expect("netlink");
            iface::select_uplink_for(&handle, &sel, families).await
        })
    })
}

fn v6_of(u: &Uplink) -> (Ipv6Addr, Ipv6Addr) {
    let v = u.ipv6.expect("an IPv6 side");
    (v.iface_addr, v.public_ip)
}

#[test]
fn dual_stack_uplink_follows_the_default_routes() {
    // Both default routes out of eth0: eth0, its IPv4 and IPv6 addresses.
    let tb = host_with(&["ip route add default dev eth0", "ip -6 route add default dev eth0"]);
    let h = tb.host(0);
    let u = choose(h, IfaceSelection::default(), DUAL).unwrap();
    assert_eq!((u.name.as_str(), u.public_ip), ("eth0", h.ip()));
    assert_eq!(v6_of(&u), (v6("fd00:77::10"), v6("fd00:77::10")));
    // The IPv4-only choice is unchanged and has no IPv6 side.
    let u = choose(h, IfaceSelection::default(), Families::IPV4).unwrap();
    assert_eq!((u.name.as_str(), u.ipv6), ("eth0", None));

    // No IPv4 default route: the IPv6 one picks the interface.
    let tb = host_with(&["ip -6 route add default dev up1"]);
    let u = choose(tb.host(0), IfaceSelection::default(), DUAL).unwrap();
    assert_eq!((u.name.as_str(), u.public_ip), ("up1", Ipv4Addr::new(198, 18, 77, 2)));
    assert_eq!(v6_of(&u), (v6("fd00:88::6"), v6("fd00:88::6")));

    // Default routes out of different interfaces: refused, both named.
    let tb = host_with(&["ip route add default dev eth0", "ip -6 route add default dev up1"]);
    let e = choose(tb.host(0), IfaceSelection::default(), DUAL).unwrap_err().to_string();
    assert!(e.contains("eth0") && e.contains("up1") && e.contains("--iface"), "{e}");
}

#[test]
fn iface_by_ipv6_address_and_public_ipv6() {
    let tb = host_with(&["ip route add default dev eth0", "ip -6 route add default dev eth0"]);
    let h = tb.host(0);
    let sel = |iface: &[&str], public_ipv6: Option<&str>| IfaceSelection {
        iface: iface.iter().map(|s| s.to_string()).collect(),
        public_ipv6: public_ipv6.map(v6),
        ..IfaceSelection::default()
    };
    // --iface by IPv6 address: that interface, that address (not its first).
    let u = choose(h, sel(&["fd00:88::5"], None), DUAL).unwrap();
    assert_eq!((u.name.as_str(), u.iface_addr), ("up1", Ipv4Addr::new(198, 18, 77, 2)));
    assert_eq!(v6_of(&u), (v6("fd00:88::5"), v6("fd00:88::5")));
    // --iface by name: its first global IPv6 address.
    let u = choose(h, sel(&["up1"], None), DUAL).unwrap();
    assert_eq!(v6_of(&u), (v6("fd00:88::6"), v6("fd00:88::6")));
    // --public-ipv6 is advertised; the interface's address stays the tunnel's.
    let u = choose(h, sel(&[], Some("2001:db8:1::7")), DUAL).unwrap();
    assert_eq!(v6_of(&u), (v6("fd00:77::10"), v6("2001:db8:1::7")));
    // ... and when the interface carries it, it is the tunnel's address too.
    let u = choose(h, sel(&["up1"], Some("fd00:88::5")), DUAL).unwrap();
    assert_eq!(v6_of(&u), (v6("fd00:88::5"), v6("fd00:88::5")));
    // An interface without a global IPv6 address cannot carry IPv6.
    let e = choose(h, sel(&["up2"], None), DUAL).unwrap_err().to_string();
    assert!(e.contains("up2") && e.contains("no global IPv6 address"), "{e}");
    // An IPv6 address nobody has.
    let e = choose(h, sel(&["fd00:99::1"], None), DUAL).unwrap_err().to_string();
    assert!(e.contains("fd00:99::1") && e.contains("no such interface"), "{e}");
}

#[test]
fn ipv6_only_uplink_needs_no_ipv4() {
    let tb = host_with(&["ip -6 route add default dev up1", "ip -6 route add fd00:55::/64 dev eth0"]);
    let h = tb.host(0);
    // The IPv6 default route; no IPv4 address is used, PublicIP is 0.0.0.0.
    let u = choose(h, IfaceSelection::default(), V6_ONLY).unwrap();
    assert_eq!((u.name.as_str(), u.public_ip, u.iface_addr), ("up1", Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED));
    assert_eq!(v6_of(&u), (v6("fd00:88::6"), v6("fd00:88::6")));
    // --iface-can-reach with an IPv6 destination: the route's interface.
    let can_reach = IfaceSelection { iface_can_reach_v6: Some(v6("fd00:55::9")), ..IfaceSelection::default() };
    let u = choose(h, can_reach, V6_ONLY).unwrap();
    assert_eq!(u.name, "eth0");
    // --iface-regex: IPv6 addresses first.
    let regex = IfaceSelection { iface_regex: vec!["^fd00:88::5$".into()], ..IfaceSelection::default() };
    let u = choose(h, regex, V6_ONLY).unwrap();
    assert_eq!((u.name.as_str(), v6_of(&u).0), ("up1", v6("fd00:88::5")));
    // No IPv6 default route: said so.
    let tb = host_with(&["ip route add default dev eth0"]);
    let e = choose(tb.host(0), IfaceSelection::default(), V6_ONLY).unwrap_err().to_string();
    assert!(e.contains("no IPv6 default route"), "{e}");
}
