//! flannel's subnet file: byte-exact rendering, atomic writes, tolerant
//! reading, errors that name the key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};
use overlay_agent::config::NetworkConfig;
use overlay_agent::etcd::{Lease, LeaseAttrs, PreviousSubnets, EMPTY_IPV4_SUBNET};
use overlay_agent::subnet_env::{
    first_usable, lease_from_flannel_subnet, parse_vars, read_previous_lease, read_previous_subnets,
    SubnetEnv, SubnetEnvError,
};

/// A scratch folder, removed when dropped.
fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("overlay-subnet-env-{tag}-")).tempdir().unwrap()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn net6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn example() -> SubnetEnv {
    SubnetEnv::from_lease(net("10.42.0.0/16"), net("10.42.0.0/24"), 1450, true)
}

#[test]
fn render_is_flannels_format() {
    assert_eq!(
        example().render(),
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    // seed 000's file
    let e = SubnetEnv::from_lease(net("10.10.0.0/16"), net("10.10.100.0/24"), 1450, false);
    assert_eq!(
        e.render(),
        "FLANNEL_NETWORK=10.10.0.0/16\nFLANNEL_SUBNET=10.10.100.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    );
    // flanneld puts the IPv6 pair right after the IPv4 pair
    let mut d = example();
    d.ipv6_network = Some(net6("fd00:42::/48"));
    d.ipv6_subnet = Some(net6("fd00:42:0:1::1/64"));
    assert_eq!(
        d.render(),
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=fd00:42::/48\n\
         FLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
}

#[test]
fn subnet_is_first_usable_address_of_lease() {
    assert_eq!(
        first_usable(net("10.1.74.0/24")).to_string(),
        "10.1.74.1/24"
    );
    assert_eq!(
        first_usable(net("10.1.16.0/21")).to_string(),
        "10.1.16.1/21"
    );
    // host bits of the argument do not matter
    assert_eq!(
        first_usable(net("10.1.74.9/24")).to_string(),
        "10.1.74.1/24"
    );
    let e = example();
    assert_eq!(e.subnet.to_string(), "10.42.0.1/24");
    assert_eq!(e.lease_subnet(), net("10.42.0.0/24"));
    assert_eq!(
        lease_from_flannel_subnet("10.244.8.1/24").unwrap(),
        net("10.244.8.0/24")
    );
    assert_eq!(
        lease_from_flannel_subnet(" 10.1.16.1/21 ").unwrap(),
        net("10.1.16.0/21")
    );
    assert!(lease_from_flannel_subnet("10.1.16.1").is_err());
    assert!(lease_from_flannel_subnet("10.1.16.1/33").is_err());
    assert!(lease_from_flannel_subnet("x/24").is_err());
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn write_atomic_creates_parents_mode_0644_no_leftovers() {
    let tmp = scratch("write");
    let path = tmp.path().join("run/flannel/subnet.env");
    // a restrictive umask must not change the mode
    let old = unsafe { libc::umask(0o077) };
    let r1 = example().write_atomic(&path);
    unsafe { libc::umask(old) };
    r1.unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), example().render());
    assert_eq!(mode(&path), 0o644);
    assert_eq!(entries(path.parent().unwrap()), ["subnet.env"]);

    // replacing: content and mode fixed, inode replaced (rename), still no temp files
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    let mut e2 = example();
    e2.ipmasq = false;
    e2.mtu = 1400;
    e2.write_atomic(&path).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), e2.render());
    assert_eq!(mode(&path), 0o644);
    let after = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    assert_ne!(before, after, "written in place instead of renamed");
    assert_eq!(entries(path.parent().unwrap()), ["subnet.env"]);
}

#[test]
fn write_atomic_failure_leaves_nothing() {
    let tmp = scratch("fail");
    // the target is a directory: rename fails, the temp file must go
    let path = tmp.path().join("subnet.env");
    fs::create_dir_all(path.join("occupied")).unwrap();
    assert!(example().write_atomic(&path).is_err());
    assert_eq!(entries(tmp.path()), ["subnet.env"]);
}

#[test]
fn read_round_trip() {
    let tmp = scratch("rt");
    let path = tmp.path().join("subnet.env");
    for e in [
        example(),
        SubnetEnv::from_lease(net("10.244.0.0/16"), net("10.244.8.0/24"), 1450, false),
        SubnetEnv {
            ipv6_network: Some(net6("fd00::/48")),
            ipv6_subnet: Some(net6("fd00:0:0:5::1/64")),
            ..SubnetEnv::from_lease(net("10.1.0.0/16"), net("10.1.16.0/21"), 8950, true)
        },
    ] {
        e.write_atomic(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), e);
    }
}

#[test]
fn read_is_tolerant() {
    let tmp = scratch("tolerant");
    let path = tmp.path().join("subnet.env");
    fs::write(
        &path,
        "# written by hand\n\n  export FLANNEL_NETWORK=\"10.42.0.0/16\"\r\nFLANNEL_SUBNET='10.42.5.1/24'  # mine\n\
         FLANNEL_MTU=1450\nexport   FLANNEL_IPMASQ=True\nSOMETHING_ELSE=1\nnot an assignment\n",
    )
    .unwrap();
    let e = SubnetEnv::read(&path).unwrap();
    assert_eq!(e.network, net("10.42.0.0/16"));
    assert_eq!(e.subnet.to_string(), "10.42.5.1/24");
    assert_eq!(e.lease_subnet(), net("10.42.5.0/24"));
    assert_eq!(e.mtu, 1450);
    assert!(e.ipmasq);
    assert_eq!(e.ipv6_network, None);
    assert_eq!(read_previous_lease(&path), Some(net("10.42.5.0/24")));

    // several networks (newer flanneld): the one holding the subnet
    fs::write(&path, "FLANNEL_NETWORK=10.1.0.0/16,10.42.0.0/16\nFLANNEL_SUBNET=10.42.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();
    assert_eq!(SubnetEnv::read(&path).unwrap().network, net("10.42.0.0/16"));

    // seed 003 after mk-docker-opts.sh -d subnet.env: only docker lines
    fs::write(&path, "DOCKER_OPT_BIP=\"--bip=10.244.8.1/24\"\nDOCKER_NETWORK_OPTIONS=\" --bip=10.244.8.1/24 --ip-masq=false --mtu=1450\"\n").unwrap();
    assert_eq!(read_previous_lease(&path), None);
    let vars = parse_vars(&fs::read_to_string(&path).unwrap());
    assert_eq!(vars[1].1, " --bip=10.244.8.1/24 --ip-masq=false --mtu=1450");
}

#[test]
fn read_errors_name_the_problem() {
    let tmp = scratch("errors");
    let path = tmp.path().join("subnet.env");
    let full = example().render();
    for key in [
        "FLANNEL_NETWORK",
        "FLANNEL_SUBNET",
        "FLANNEL_MTU",
        "FLANNEL_IPMASQ",
    ] {
        let text: String = full
            .lines()
            .filter(|l| !l.starts_with(&format!("{key}=")))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&path, text).unwrap();
        let e = SubnetEnv::read(&path).unwrap_err();
        assert!(
            matches!(e, SubnetEnvError::Missing { key: k, .. } if k == key),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(key) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
    for (key, bad) in [
        ("FLANNEL_NETWORK", "10.42.0.0"),
        ("FLANNEL_SUBNET", "10.42.0.1/99"),
        ("FLANNEL_MTU", "big"),
        ("FLANNEL_IPMASQ", "yes"),
    ] {
        let text: String = full
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key}=")) {
                    format!("{key}={bad}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        fs::write(&path, text).unwrap();
        let e = SubnetEnv::read(&path).unwrap_err();
        assert!(
            matches!(e, SubnetEnvError::Invalid { key: k, .. } if k == key),
            "{e:?}"
        );
        assert!(e.to_string().contains(bad), "{e}");
    }
    let missing = tmp.path().join("nope.env");
    let e = SubnetEnv::read(&missing).unwrap_err();
    assert!(matches!(e, SubnetEnvError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.env"));
    assert_eq!(read_previous_lease(&missing), None);
}

fn lease(v4: Option<&str>, v6: Option<&str>) -> Lease {
    Lease {
        subnet: v4.map_or(EMPTY_IPV4_SUBNET, net),
        ipv6_subnet: v6.map(net6),
        attrs: LeaseAttrs::host_gw("192.168.1.2".parse().unwrap()),
        etcd_lease: 0,
        expiration: None,
    }
}

/// The file for a dual-stack lease is flanneld's (IPv6 pair after the IPv4
/// pair, each subnet's first address), and what a restart reads back from
/// it asks for both subnets again.
#[test]
fn dual_stack_file_is_flannels_and_gives_both_previous_subnets() {
    let tmp = scratch("dual");
    let path = tmp.path().join("subnet.env");
    let cfg = NetworkConfig::parse(r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:42::/48"}"#).unwrap();
    let env = SubnetEnv::for_lease(&cfg, &lease(Some("10.42.7.0/24"), Some("fd00:42:0:7::/64")), 1450, true);
    env.write_atomic(&path).unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:42::/48\n\
         FLANNEL_IPV6_SUBNET=fd00:42:0:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    assert_eq!(SubnetEnv::read(&path).unwrap(), env);
    assert_eq!(
        read_previous_subnets(&path),
        PreviousSubnets { ipv4: Some(net("10.42.7.0/24")), ipv6: Some(net6("fd00:42:0:7::/64")) }
    );
    // An IPv4-only config writes no IPv6 pair, even for a dual lease.
    let v4cfg = NetworkConfig::parse(r#"{"Network":"10.42.0.0/16"}"#).unwrap();
    let env = SubnetEnv::for_lease(&v4cfg, &lease(Some("10.42.7.0/24"), Some("fd00:42:0:7::/64")), 1450, true);
    assert_eq!(env, SubnetEnv::from_lease(net("10.42.0.0/16"), net("10.42.7.0/24"), 1450, true));
}

/// flanneld's IPv6-only file has no IPv4 pair; it reads back, and a restart
/// asks for the IPv6 subnet again.
#[test]
fn ipv6_only_file_has_no_ipv4_pair() {
    let tmp = scratch("v6only");
    let path = tmp.path().join("subnet.env");
    let cfg = NetworkConfig::parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:42::/48"}"#).unwrap();
    let env = SubnetEnv::for_lease(&cfg, &lease(None, Some("fd00:42:0:9::/64")), 1430, false);
    env.write_atomic(&path).unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "FLANNEL_IPV6_NETWORK=fd00:42::/48\nFLANNEL_IPV6_SUBNET=fd00:42:0:9::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
    );
    let back = SubnetEnv::read(&path).unwrap();
    assert_eq!(back, env);
    assert!(!back.has_ipv4());
    assert_eq!(read_previous_subnets(&path), PreviousSubnets { ipv4: None, ipv6: Some(net6("fd00:42:0:9::/64")) });
    assert_eq!(read_previous_lease(&path), None);
}

#[test]
fn bad_ipv6_values_name_the_key() {
    let tmp = scratch("bad6");
    let path = tmp.path().join("subnet.env");
    let base = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    for (extra, key, says) in [
        ("FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00::1\n", "FLANNEL_IPV6_SUBNET", "fd00::1"),
        ("FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=10.0.0.1/24\n", "FLANNEL_IPV6_SUBNET", "10.0.0.1"),
        ("FLANNEL_IPV6_NETWORK=fd00::/129\nFLANNEL_IPV6_SUBNET=fd00::1/64\n", "FLANNEL_IPV6_NETWORK", "fd00::/129"),
        ("FLANNEL_IPV6_SUBNET=fd00::1/64\n", "FLANNEL_IPV6_NETWORK", "no FLANNEL_IPV6_NETWORK"),
    ] {
        fs::write(&path, format!("{base}{extra}")).unwrap();
        let e = SubnetEnv::read(&path).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
    }
    // A file with neither pair names the IPv4 key it lacks.
    fs::write(&path, "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
    let e = SubnetEnv::read(&path).unwrap_err().to_string();
    assert!(e.contains("FLANNEL_SUBNET"), "{e}");
    // A bad IPv6 line does not cost a restart the IPv4 subnet.
    fs::write(&path, format!("{base}FLANNEL_IPV6_SUBNET=junk\n")).unwrap();
    assert_eq!(read_previous_subnets(&path), PreviousSubnets { ipv4: Some(net("10.42.0.0/24")), ipv6: None });
}
