//! flannel's network config: every default, every check, the error messages,
//! and reading it from a real etcd (missing key, invalid value).

use std::net::{Ipv4Addr, Ipv6Addr};

use overlay_agent::config::{BackendConfig, BackendType, ConfigError, NetworkConfig};
use overlay_agent::etcd::{EtcdError, EtcdSettings, SubnetManager};
use overlay_tests::etcd::Etcd;

fn parse(s: &str) -> NetworkConfig {
    NetworkConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn error(s: &str) -> String {
    match NetworkConfig::parse(s) {
        Ok(c) => panic!("{s} parsed: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

#[test]
fn defaults_of_a_minimal_config() {
    let c = parse(r#"{"Network":"10.244.0.0/16"}"#);
    assert_eq!(c.network, "10.244.0.0/16".parse().unwrap());
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0), "second subnet");
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0), "last subnet");
    assert!(c.enable_ipv4);
    assert!(!c.enable_ipv6);
    assert!(c.backend_defaulted, "no Backend: vxlan assumed and flagged");
    assert_eq!(
        c.backend,
        BackendConfig {
            kind: BackendType::Vxlan,
            vni: 1,
            port: 8472,
            mtu: None,
            direct_routing: false,
            gbp: false,
            learning: false,
        }
    );
}

#[test]
fn seed_002_mixed_case_network() {
    // seed 002: etcdctl set /coreos.com/network/config '{"NetWork":"10.0.0.0/16"}'
    let c = parse(r#"{"NetWork":"10.0.0.0/16"}"#);
    assert_eq!(c.network, "10.0.0.0/16".parse().unwrap());
    assert_eq!(c.backend.kind, BackendType::Vxlan);
    assert!(c.backend_defaulted);
}

#[test]
fn field_names_are_case_insensitive_at_every_level() {
    let c = parse(
        r#"{"nEtWoRk":"10.1.0.0/16","SUBNETLEN":26,"subnetmin":"10.1.1.0","SubNetMax":"10.1.2.192",
            "enableipv4":true,"backend":{"type":"host-gw"}}"#,
    );
    assert_eq!(c.subnet_len, 26);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 1, 1, 0));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 1, 2, 192));
    assert_eq!(c.backend.kind, BackendType::HostGw);
    assert!(!c.backend_defaulted);
    let c = parse(r#"{"Network":"10.1.0.0/16","Backend":{"TYPE":"vxlan","vni":42,"PORT":4789,"mtu":1400,"directrouting":true,"Gbp":true,"learning":true}}"#);
    assert_eq!(c.backend.vni, 42);
    assert_eq!(c.backend.port, 4789);
    assert_eq!(c.backend.mtu, Some(1400));
    assert!(c.backend.direct_routing && c.backend.gbp && c.backend.learning);
}

#[test]
fn subnet_len_default_rule() {
    for (net, len) in [
        ("10.0.0.0/8", 24),
        ("10.0.0.0/16", 24),
        ("10.0.0.0/22", 24),
        ("10.0.0.0/23", 25),
        ("10.0.0.0/24", 26),
        ("10.0.0.0/26", 28),
        ("10.0.0.0/28", 30),
    ] {
        let c = parse(&format!(r#"{{"Network":"{net}"}}"#));
        assert_eq!(c.subnet_len, len, "{net}");
        let size = 1u32 << (32 - len);
        let base = u32::from(c.network.network());
        assert_eq!(u32::from(c.subnet_min), base + size, "{net}: SubnetMin is the second subnet");
        assert_eq!(
            u32::from(c.subnet_max),
            u32::from(c.network.broadcast()) + 1 - size,
            "{net}: SubnetMax is the last subnet"
        );
    }
    let e = error(r#"{"Network":"10.0.0.0/29"}"#);
    assert_mentions(&e, &["Network", "10.0.0.0/29", "too small"]);
}

#[test]
fn subnet_len_checks() {
    assert_eq!(parse(r#"{"Network":"10.0.0.0/16","SubnetLen":30}"#).subnet_len, 30);
    assert_eq!(parse(r#"{"Network":"10.0.0.0/16","SubnetLen":18}"#).subnet_len, 18);
    assert_eq!(parse(r#"{"Network":"10.0.0.0/16","SubnetLen":0}"#).subnet_len, 24, "0 = default");
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#);
    assert_mentions(&e, &["SubnetLen", "31", "at most 30"]);
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#);
    assert_mentions(&e, &["SubnetLen", "17", "four subnets"]);
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetLen":24.5}"#);
    assert_mentions(&e, &["SubnetLen", "24.5"]);
}

#[test]
fn subnet_min_max_checks() {
    let c = parse(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.5.0","SubnetMax":"10.0.9.0"}"#);
    assert_eq!(c.subnet_count(), 5);
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.2.0.0"}"#);
    assert_mentions(&e, &["SubnetMin", "10.2.0.0", "10.0.0.0/16"]);
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetMax":"192.168.0.0"}"#);
    assert_mentions(&e, &["SubnetMax", "192.168.0.0", "10.0.0.0/16"]);
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.5.7"}"#);
    assert_mentions(&e, &["SubnetMin", "10.0.5.7", "boundary"]);
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.9.128"}"#);
    assert_mentions(&e, &["SubnetMax", "10.0.9.128", "boundary"]);
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.5.0"}"#);
    assert_mentions(&e, &["SubnetMin", "10.0.9.0", "SubnetMax", "10.0.5.0"]);
    let e = error(r#"{"Network":"10.0.0.0/16","SubnetMin":"ten"}"#);
    assert_mentions(&e, &["SubnetMin", "ten"]);
}

#[test]
fn network_checks() {
    let e = error(r#"{}"#);
    assert_mentions(&e, &["Network", "missing"]);
    let e = error(r#"{"Network":"10.0.0.0/40"}"#);
    assert_mentions(&e, &["Network", "10.0.0.0/40"]);
    let e = error(r#"{"Network":"10.0.0.0"}"#);
    assert_mentions(&e, &["Network", "10.0.0.0", "prefix"]);
    let e = error(r#"{"Network":"banana"}"#);
    assert_mentions(&e, &["Network", "banana"]);
    let e = error(r#"{"Network":["10.0.0.0/16"]}"#);
    assert_mentions(&e, &["Network", "10.0.0.0/16"]);
    // An IPv6 CIDR in Network: named, and where it goes instead.
    let e = error(r#"{"Network":"fd00::/48"}"#);
    assert_mentions(&e, &["Network", "fd00::/48", "IPv6Network", "EnableIPv6"]);
    let e = error("not json");
    assert_mentions(&e, &["JSON"]);
    let e = error(r#""10.0.0.0/16""#);
    assert_mentions(&e, &["object"]);
}

#[test]
fn ipv6_and_ipv4_switches() {
    // The issue's config, as a new user writes it: dual stack, flannel's defaults.
    let c = parse(r#"{"Network":"10.70.0.0/16","EnableIPv6":true,"IPv6Network":"fd70::/48","Backend":{"Type":"vxlan"}}"#);
    assert!(c.enable_ipv4 && c.enable_ipv6);
    let v6 = c.ipv6.as_ref().expect("the IPv6 half");
    assert_eq!(v6.network, "fd70::/48".parse().unwrap());
    assert_eq!(v6.subnet_len, 64, "IPv6SubnetLen defaults to 64");
    assert_eq!(v6.subnet_min, "fd70:0:0:1::".parse::<Ipv6Addr>().unwrap(), "the second /64");
    assert_eq!(v6.subnet_max, "fd70:0:0:ffff::".parse::<Ipv6Addr>().unwrap(), "the last /64");
    // Explicit values, checked as flannel checks them.
    let c = parse(r#"{"Network":"10.70.0.0/16","EnableIPv6":true,"IPv6Network":"fd70::/56","IPv6SubnetLen":60,"IPv6SubnetMin":"fd70:0:0:10::","IPv6SubnetMax":"fd70:0:0:f0::"}"#);
    let v6 = c.ipv6.unwrap();
    assert_eq!((v6.subnet_len, v6.candidate_subnets().count()), (60, 15));
    // IPv6-only: no Network needed; IPv4 disabled.
    let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd71::/48","Backend":{"Type":"vxlan"}}"#);
    assert!(!c.enable_ipv4 && c.enable_ipv6);
    assert_eq!(c.ipv4_network(), None);
    // EnableIPv6 false is fine, and IPv6 fields are then ignored.
    let c = parse(r#"{"Network":"10.0.0.0/16","EnableIPv6":false,"IPv6Network":"fd00::/48"}"#);
    assert!(!c.enable_ipv6);
    assert_eq!(c.ipv6, None);
    // Errors name the field once, without repeating themselves.
    let e = error(r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#);
    assert_mentions(&e, &["IPv6Network", "missing", "EnableIPv6"]);
    assert_eq!(e.matches("IPv6Network").count(), 1, "{e}");
    let e = error(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":47}"#);
    assert_mentions(&e, &["IPv6SubnetLen", "47", "four subnets"]);
    let e = error(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:1::5"}"#);
    assert_mentions(&e, &["IPv6SubnetMin", "fd00:0:0:1::5", "boundary"]);
    let e = error(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fe80::/64"}"#);
    assert_mentions(&e, &["IPv6Network", "fe80::/64", "link-local"]);
    let e = error(r#"{"Network":"10.0.0.0/16","EnableIPv4":false}"#);
    assert_mentions(&e, &["EnableIPv4", "false", "EnableIPv6"]);
    let e = error(r#"{"Network":"10.0.0.0/16","EnableIPv6":"yes"}"#);
    assert_mentions(&e, &["EnableIPv6", "yes"]);
}

#[test]
fn backend_types() {
    assert_eq!(parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#).backend.kind, BackendType::Vxlan);
    assert_eq!(parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"}}"#).backend.kind, BackendType::HostGw);
    // A Backend without Type: vxlan, flagged.
    let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"VNI":3}}"#);
    assert!(c.backend_defaulted);
    assert_eq!(c.backend.vni, 3);
    for t in ["udp", "wireguard", "ipip", "ipsec", "alloc", "gce", "extension"] {
        let e = error(&format!(r#"{{"Network":"10.0.0.0/16","Backend":{{"Type":"{t}"}}}}"#));
        assert_mentions(&e, &["Backend.Type", t, "vxlan", "host-gw"]);
        assert!(matches!(
            NetworkConfig::parse(&format!(r#"{{"Network":"10.0.0.0/16","Backend":{{"Type":"{t}"}}}}"#)),
            Err(ConfigError::UnsupportedBackend { .. })
        ));
    }
    let e = error(r#"{"Network":"10.0.0.0/16","Backend":{"Type":7}}"#);
    assert_mentions(&e, &["Backend.Type", "7"]);
}

#[test]
fn backend_fields() {
    let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":0}}"#);
    assert_eq!(c.backend.port, 8472, "Port 0 is the kernel default 8472, not 4789");
    let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#);
    assert_eq!(c.backend.vni, 0);
    let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777215,"MTU":0}}"#);
    assert_eq!(c.backend.vni, 16777215);
    assert_eq!(c.backend.mtu, None);
    let e = error(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#);
    assert_mentions(&e, &["Backend.VNI", "16777216"]);
    let e = error(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":65536}}"#);
    assert_mentions(&e, &["Backend.Port", "65536"]);
    let e = error(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":"8472"}}"#);
    assert_mentions(&e, &["Backend.Port", "8472"]);
    let e = error(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MTU":90}}"#);
    assert_mentions(&e, &["Backend.MTU", "90"]);
    let e = error(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","GBP":1}}"#);
    assert_mentions(&e, &["Backend.GBP", "1"]);
    let e = error(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Learning":"no"}}"#);
    assert_mentions(&e, &["Backend.Learning", "no"]);
    let e = error(r#"{"Network":"10.0.0.0/16","Backend":[1]}"#);
    assert_mentions(&e, &["Backend", "[1]"]);
}

fn settings(etcd: &Etcd, prefix: &str) -> EtcdSettings {
    EtcdSettings::new(vec![etcd.endpoint()], prefix)
}

#[tokio::test]
async fn config_from_etcd() {
    let etcd = Etcd::start().unwrap();
    let mgr = SubnetManager::new(settings(&etcd, "/flannel/network")).await.unwrap();

    // Missing: the key is named and the fix is shown.
    let e = mgr.network_config().await.unwrap_err();
    assert!(matches!(e, EtcdError::ConfigMissing { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[
            "/flannel/network/config",
            "etcdctl put /flannel/network/config",
            r#"'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'"#,
        ],
    );

    // Invalid: a ConfigError, with the key.
    etcd.put("/flannel/network/config", r#"{"Network":"10.10.0.0/16","Backend":{"Type":"udp"}}"#)
        .unwrap();
    let e = mgr.network_config().await.unwrap_err();
    match &e {
        EtcdError::Config { key, source: ConfigError::UnsupportedBackend { .. } } => {
            assert_eq!(key, "/flannel/network/config")
        }
        other => panic!("{other:?}"),
    }
    assert_mentions(&e.to_string(), &["/flannel/network/config", "udp", "vxlan, host-gw"]);

    // seed 000's config.
    etcd.put("/flannel/network/config", r#"{ "Network": "10.10.0.0/16", "Backend": {"Type": "vxlan"}}"#)
        .unwrap();
    let c = mgr.network_config().await.unwrap();
    assert_eq!(c.network, "10.10.0.0/16".parse().unwrap());
    assert!(!c.backend_defaulted);

    // A trailing slash on the prefix reads the same key (path.Join semantics).
    let mgr2 = SubnetManager::new(settings(&etcd, "/flannel/network/")).await.unwrap();
    assert_eq!(mgr2.network_config().await.unwrap(), c);
}
