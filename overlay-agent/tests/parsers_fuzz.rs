//! Fuzzing (proptest, a bounded number of cases per property) of what the
//! agent reads from outside: the lease values and keys in etcd, the network
//! config JSON, and the subnet file. On any input: no panic; on bad input an
//! error naming what was being read (and, where there is one, the field);
//! round trips where they hold: what we write reads back identically, and
//! what flanneld writes (Go's `json.Marshal` field order and spelling,
//! field names in any case, unknown fields) parses to what it means.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};
use overlay_agent::config::NetworkConfig;
use overlay_agent::etcd::registry::{
    format_mac, lease_key, parse_lease_key, parse_mac, parse_subnet_key, subnet_key, Lease, LeaseAttrs,
    RegistryError, EMPTY_IPV4_SUBNET,
};
use overlay_agent::subnet_env::{parse_vars, SubnetEnv, SubnetEnvError};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Cases per property: enough to find shallow bugs in every run of the
/// suite while staying well under a second each.
fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any JSON value, nested a few levels, with keys drawn partly from the
/// field names the parsers look for (in any case) so that the typed
/// branches are reached, not just "unknown field".
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "PublicIP", "PublicIPv6", "BackendType", "BackendData", "VNI", "VtepMAC", "Network", "SubnetLen",
        "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6", "IPv6Network", "Backend", "Type", "Port", "MTU",
        "DirectRouting", "GBP", "Learning", "EnableNFTables", "BackendV6Data", "IPv6SubnetLen", "IPv6SubnetMin",
        "IPv6SubnetMax",
    ]);
    prop_oneof![
        3 => (known, any::<u64>()).prop_map(|(k, bits)| random_case(k, bits)),
        1 => "[A-Za-z0-9_]{0,12}",
    ]
}

/// Strings that look almost right: addresses, CIDRs, MACs, numbers, with
/// junk mixed in.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}(/[0-9]{1,3})?",
        "[0-9a-fA-F+-]{1,3}(:[0-9a-fA-F+-]{1,3}){4,6}",
        "[0-9a-f]{0,4}(:{1,2}[0-9a-f]{0,4}){1,7}(/[0-9]{1,3})?",
        prop::sample::select(vec!["vxlan", "host-gw", "udp", "", "VXLAN", "ipip", "wireguard", "true", "false"])
            .prop_map(str::to_string),
    ]
}

/// `name` with the case of each letter flipped where `bits` says so (Go's
/// encoding/json matches field names case-insensitively).
fn random_case(name: &str, bits: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| if bits >> (i % 64) & 1 == 1 { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() })
        .collect()
}

fn any_mac() -> impl Strategy<Value = [u8; 6]> {
    any::<[u8; 6]>()
}

fn any_ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn any_ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn any_attrs() -> impl Strategy<Value = LeaseAttrs> {
    (
        (any_ipv4(), prop::option::of(any_ipv6())),
        prop_oneof![Just(String::new()), Just("vxlan".to_string()), Just("host-gw".to_string()), any::<String>()],
        (prop::option::of(any::<u32>()), prop::option::of(any_mac())),
        (prop::option::of(any::<u32>()), prop::option::of(any_mac())),
    )
        .prop_map(|((public_ip, public_ipv6), backend_type, (vni, vtep_mac), (v6_vni, v6_vtep_mac))| {
            let mut a = LeaseAttrs::host_gw(public_ip);
            (a.public_ipv6, a.backend_type) = (public_ipv6, backend_type);
            (a.vni, a.vtep_mac, a.v6_vni, a.v6_vtep_mac) = (vni, vtep_mac, v6_vni, v6_vtep_mac);
            a
        })
}

fn any_subnet() -> impl Strategy<Value = Ipv4Net> {
    (any_ipv4(), 0u8..=32).prop_map(|(a, l)| Ipv4Net::new(a, l).unwrap().trunc())
}

fn any_subnet6() -> impl Strategy<Value = Ipv6Net> {
    (any_ipv6(), 1u8..=128).prop_map(|(a, l)| Ipv6Net::new(a, l).unwrap().trunc())
}

/// What a bad lease value's error must say: that it is about a lease value
/// and, for a typed problem, which field.
fn check_lease_error(e: &RegistryError) {
    let msg = e.to_string();
    assert!(msg.starts_with("lease value"), "unclear error {msg:?}");
    match e {
        RegistryError::Field { field, .. } | RegistryError::Missing { field } => {
            assert!(msg.contains(field), "{msg:?} does not name {field}")
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lease_value_any_text_no_panic(s in any::<String>()) {
        if let Err(e) = LeaseAttrs::from_json(&s) {
            check_lease_error(&e);
        }
    }

    #[test]
    fn lease_value_any_json_no_panic(v in any_json()) {
        if let Err(e) = LeaseAttrs::from_json(&v.to_string()) {
            check_lease_error(&e);
        }
    }

    /// Our own values read back as written.
    #[test]
    fn lease_value_round_trip(a in any_attrs()) {
        let text = a.to_json();
        prop_assert_eq!(LeaseAttrs::from_json(&text), Ok(a), "{}", text);
    }

    /// flanneld's encoding (Go field order, PublicIPv6 null), with field
    /// names in any case, the fields in any order and unknown fields added
    /// (newer writers), parses to what it says.
    #[test]
    fn flanneld_lease_values_parse(
        ip in any_ipv4(),
        vni in prop::option::of(0u32..=16_777_215),
        mac in any_mac(),
        upper_mac in any::<bool>(),
        bits in any::<u64>(),
        extra in prop::option::of(("[A-Za-z]{3,10}", any_json())),
        reverse in any::<bool>(),
    ) {
        let mac_s = if upper_mac { format_mac(&mac).to_uppercase() } else { format_mac(&mac) };
        let mut bd = vec![];
        if let Some(vni) = vni {
            bd.push(format!("\"{}\":{vni}", random_case("VNI", bits)));
        }
        bd.push(format!("\"{}\":\"{mac_s}\"", random_case("VtepMAC", bits >> 3)));
        let mut fields = vec![
            format!("\"{}\":\"{ip}\"", random_case("PublicIP", bits >> 7)),
            format!("\"{}\":null", random_case("PublicIPv6", bits >> 15)),
            format!("\"{}\":\"vxlan\"", random_case("BackendType", bits >> 25)),
            format!("\"{}\":{{{}}}", random_case("BackendData", bits >> 36), bd.join(",")),
        ];
        if let Some((k, v)) = &extra {
            let known = ["publicip", "publicipv6", "backendtype", "backenddata"];
            if !known.contains(&k.to_ascii_lowercase().as_str()) {
                fields.push(format!("{}:{v}", Value::String(k.clone())));
            }
        }
        if reverse {
            fields.reverse();
        }
        let text = format!("{{{}}}", fields.join(","));
        let want = LeaseAttrs { vni, ..LeaseAttrs::vxlan(ip, 0, mac) };
        prop_assert_eq!(LeaseAttrs::from_json(&text), Ok(want), "{}", text);
    }

    /// flanneld's dual-stack and IPv6-only values (its vxlan backend's
    /// `newSubnetAttrs`), field names in any case: both halves parse.
    #[test]
    fn flanneld_dual_stack_lease_values_parse(
        ip in prop::option::of(any_ipv4()),
        ip6 in any_ipv6(),
        vni in 0u32..=16_777_215,
        mac in any_mac(),
        mac6 in any_mac(),
        bits in any::<u64>(),
    ) {
        let name = |n: &str, shift: u32| random_case(n, bits >> shift);
        let bd = |m: &[u8; 6]| format!("{{\"{}\":{vni},\"{}\":\"{}\"}}", name("VNI", 1), name("VtepMAC", 5), format_mac(m));
        let mut fields = vec![
            format!("\"{}\":\"{}\"", name("PublicIP", 9), ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            format!("\"{}\":\"{ip6}\"", name("PublicIPv6", 17)),
            format!("\"{}\":\"vxlan\"", name("BackendType", 27)),
        ];
        if ip.is_some() {
            fields.push(format!("\"{}\":{}", name("BackendData", 38), bd(&mac)));
        }
        fields.push(format!("\"{}\":{}", name("BackendV6Data", 49), bd(&mac6)));
        let text = format!("{{{}}}", fields.join(","));
        let want = LeaseAttrs::for_node(
            overlay_agent::config::BackendType::Vxlan,
            vni,
            ip.map(|ip| (ip, mac)),
            Some((ip6, mac6)),
        );
        prop_assert_eq!(LeaseAttrs::from_json(&text), Ok(want.clone()), "{}", text);
        // And we write exactly that (Go's field order) when the names are flannel's.
        if bits == 0 {
            prop_assert_eq!(want.to_json(), text.to_string());
        }
    }

    #[test]
    fn mac_round_trip_and_junk(
        mac in any_mac(),
        junk in prop_oneof!["[0-9a-fA-F:+ -]{0,20}", "([0-9a-fA-F+ ]{2}[:-]){5}[0-9a-fA-F+ ]{2}"],
    ) {
        prop_assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        prop_assert_eq!(parse_mac(&format_mac(&mac).replace(':', "-")), Some(mac));
        if let Some(m) = parse_mac(&junk) {
            // Whatever parses is six hex pairs and nothing else.
            let canon = format_mac(&m);
            prop_assert_eq!(junk.to_ascii_lowercase().replace('-', ":"), canon, "{:?}", junk);
        }
    }

    /// Lease keys: ours read back; anything else under the prefix is
    /// either a key or refused, never a panic.
    #[test]
    fn lease_keys(prefix in "(/[a-z.]{1,8}){0,3}/?", subnet in any_subnet(), junk in any::<String>(), value in any::<Vec<u8>>()) {
        let key = subnet_key(&prefix, subnet);
        if subnet == EMPTY_IPV4_SUBNET {
            // No subnet at all (the IPv4 part of IPv6-only keys, alone): not a lease.
            prop_assert_eq!(parse_subnet_key(&prefix, &key), None);
            return Ok(());
        }
        prop_assert_eq!(parse_subnet_key(&prefix, &key), Some(subnet), "{}", key);
        let dual = format!("{key}&fd00:{:x}::-64", subnet.addr().octets()[3]);
        prop_assert_eq!(parse_subnet_key(&prefix, &dual), Some(subnet), "{}", dual);
        let junk_key = format!("{}{junk}", subnet_key(&prefix, subnet).rsplit_once('/').unwrap().0);
        let _ = parse_subnet_key(&prefix, &junk_key);
        match Lease::from_kv(&prefix, &key, &value, 0) {
            Ok(l) => prop_assert_eq!(l.subnet, subnet),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(&key), "{} does not name the key {}", msg, key);
            }
        }
    }

    /// Dual-stack and IPv6-only keys: what we write reads back as both
    /// subnets; near misses of the IPv6 part are refused, never a panic.
    #[test]
    fn dual_stack_lease_keys(
        prefix in "(/[a-z.]{1,8}){0,3}/?",
        subnet in any_subnet(),
        subnet6 in any_subnet6(),
        junk in "[0-9a-fA-F:.&/-]{0,40}",
    ) {
        let key = lease_key(&prefix, subnet, Some(subnet6));
        prop_assert_eq!(parse_lease_key(&prefix, &key), Some((subnet, Some(subnet6))), "{}", key);
        prop_assert_eq!(parse_subnet_key(&prefix, &key), Some(subnet), "{}", key);
        let only6 = lease_key(&prefix, EMPTY_IPV4_SUBNET, Some(subnet6));
        prop_assert!(only6.contains("/0.0.0.0-0&"), "{}", only6);
        prop_assert_eq!(parse_lease_key(&prefix, &only6), Some((EMPTY_IPV4_SUBNET, Some(subnet6))));
        let near = format!("{}&{junk}", subnet_key(&prefix, subnet));
        if let Some((v4, v6)) = parse_lease_key(&prefix, &near) {
            // Whatever parses is a canonical key: it is written back the same.
            prop_assert_eq!(lease_key(&prefix, v4, v6), near);
        }
    }

    #[test]
    fn network_config_any_text_no_panic(s in any::<String>()) {
        if let Err(e) = NetworkConfig::parse(&s) {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("network config"), "unclear error {:?}", msg);
        }
    }

    #[test]
    fn network_config_any_json_no_panic(v in any_json()) {
        if let Err(e) = NetworkConfig::parse(&v.to_string()) {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("network config"), "unclear error {:?}", msg);
        }
    }

    /// Dual-stack and IPv6-only net-confs: flannel's IPv6 defaults
    /// (IPv6SubnetLen 64 from a /62 up, else prefix + 2; the second and the
    /// last subnet), or a clear error naming an IPv6 field.
    #[test]
    fn flannel_ipv6_network_configs_parse(
        addr in any::<u128>(),
        net_len in 1u8..=126,
        subnet_len in prop::option::of(0u8..=130),
        ipv4 in any::<bool>(),
        bits in any::<u64>(),
    ) {
        let network = Ipv6Net::new(Ipv6Addr::from(addr | (0xfd << 120)), net_len.max(8)).unwrap().trunc();
        let mut root = Map::new();
        if ipv4 {
            root.insert(random_case("Network", bits), json!("10.9.0.0/16"));
        } else {
            root.insert(random_case("EnableIPv4", bits >> 7), json!(false));
        }
        root.insert(random_case("EnableIPv6", bits >> 17), json!(true));
        root.insert(random_case("IPv6Network", bits >> 27), json!(network.to_string()));
        if let Some(l) = subnet_len {
            root.insert(random_case("IPv6SubnetLen", bits >> 38), json!(l));
        }
        let text = Value::Object(root).to_string();
        match NetworkConfig::parse(&text) {
            Ok(cfg) => {
                prop_assert_eq!(cfg.enable_ipv4, ipv4);
                let v6 = cfg.ipv6.expect("the IPv6 half");
                prop_assert_eq!(v6.network, network);
                let len = network.prefix_len();
                let want = match subnet_len {
                    None | Some(0) => if len <= 62 { 64 } else { len + 2 },
                    Some(l) => l,
                };
                prop_assert_eq!(v6.subnet_len, want, "{}", text);
                let size = 1u128 << (128 - v6.subnet_len);
                prop_assert_eq!(u128::from(v6.subnet_min), u128::from(network.network()) + size, "{}", text);
                prop_assert_eq!(u128::from(v6.subnet_max), u128::from(network.broadcast()) + 1 - size, "{}", text);
                prop_assert!(v6.is_compatible_subnet(Ipv6Net::new(v6.subnet_max, v6.subnet_len).unwrap()));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("IPv6Network") || msg.contains("IPv6SubnetLen"), "{} -> {}", text, msg);
            }
        }
    }

    /// Typical flannel net-confs, field names in any case, parse to what
    /// they say, with flannel's defaults filled in.
    #[test]
    fn flannel_network_configs_parse(
        a in any::<u8>(), b in any::<u8>(),
        net_len in 8u8..=20,
        subnet_len in prop::option::of(0u8..=6),
        vni in prop::option::of(1u32..=16_777_215),
        port in prop::option::of(prop::sample::select(vec![0u16, 4789, 8472])),
        host_gw in any::<bool>(),
        bits in any::<u64>(),
    ) {
        let network = Ipv4Net::new(Ipv4Addr::new(10, a, b, 0), net_len).unwrap().trunc();
        let subnet_len = subnet_len.map(|d| (net_len + 2 + d * 2).min(28));
        let mut backend = Map::new();
        backend.insert(random_case("Type", bits), json!(if host_gw { "host-gw" } else { "vxlan" }));
        if let (false, Some(vni)) = (host_gw, vni) {
            backend.insert(random_case("VNI", bits >> 5), json!(vni));
        }
        if let (false, Some(port)) = (host_gw, port) {
            backend.insert(random_case("Port", bits >> 9), json!(port));
        }
        let mut root = Map::new();
        root.insert(random_case("Network", bits >> 14), json!(network.to_string()));
        if let Some(l) = subnet_len {
            root.insert(random_case("SubnetLen", bits >> 22), json!(l));
        }
        root.insert(random_case("Backend", bits >> 32), Value::Object(backend));
        let text = Value::Object(root).to_string();
        let cfg = NetworkConfig::parse(&text);
        prop_assert!(cfg.is_ok(), "{} -> {:?}", text, cfg);
        let cfg = cfg.unwrap();
        prop_assert_eq!(cfg.network, network);
        let default_len = if net_len <= 22 { 24 } else { net_len + 2 };
        prop_assert_eq!(cfg.subnet_len, subnet_len.unwrap_or(default_len), "{}", text);
        // SubnetMin is the second subnet of the network, SubnetMax the last.
        let size = 1u32 << (32 - cfg.subnet_len);
        prop_assert_eq!(u32::from(cfg.subnet_min), u32::from(network.network()) + size, "{}", text);
        prop_assert_eq!(u32::from(cfg.subnet_max), u32::from(network.broadcast()) + 1 - size, "{}", text);
        if !host_gw {
            prop_assert_eq!(cfg.backend.vni, vni.unwrap_or(1), "{}", text);
        }
    }

    #[test]
    fn subnet_file_any_text_no_panic(s in any::<String>()) {
        let _ = parse_vars(&s);
        check_subnet_env_result(SubnetEnv::parse(&s, Path::new("/run/x/subnet.env")));
    }

    /// Text made of the keys the reader wants with junk values.
    #[test]
    fn subnet_file_bad_values(
        lines in prop::collection::vec(
            (prop::sample::select(vec!["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ", "FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_NETWORK"]),
             prop::sample::select(vec!["", "export ", " "]),
             interesting_string()),
            0..8),
    ) {
        let text: String = lines.iter().map(|(k, export, v)| format!("{export}{k}={v}\n")).collect();
        check_subnet_env_result(SubnetEnv::parse(&text, Path::new("/run/x/subnet.env")));
    }

    /// What we write reads back identically; flanneld writes the same text.
    #[test]
    fn subnet_file_round_trip(
        network in any_subnet(),
        lease_bits in any::<u32>(),
        lease_extra in 0u8..=8,
        mtu in any::<u32>(),
        ipmasq in any::<bool>(),
        v6 in prop::option::of(any::<u16>()),
    ) {
        let lease_len = (network.prefix_len() + lease_extra).min(32);
        let lease = Ipv4Net::new(Ipv4Addr::from(u32::from(network.network()) | (lease_bits & !u32::from(network.netmask()))), lease_len).unwrap().trunc();
        let mut env = SubnetEnv::from_lease(network, lease, mtu, ipmasq);
        // Dual stack: flanneld adds the IPv6 pair after the IPv4 one.
        let v6_lines = match v6 {
            Some(x) => {
                env.ipv6_network = Some(format!("fd00:{x:x}::/48").parse().unwrap());
                env.ipv6_subnet = Some(format!("fd00:{x:x}:1::1/64").parse().unwrap());
                format!("FLANNEL_IPV6_NETWORK=fd00:{x:x}::/48\nFLANNEL_IPV6_SUBNET=fd00:{x:x}:1::1/64\n")
            }
            None => String::new(),
        };
        let text = env.render();
        let back = SubnetEnv::parse(&text, Path::new("/run/flannel/subnet.env"));
        prop_assert!(back.is_ok(), "{} -> {:?}", text, back);
        let back = back.unwrap();
        prop_assert_eq!(&back, &env, "{}", text);
        prop_assert_eq!(&back.render(), &text);
        // flanneld's own text for the same lease.
        let flanneld = format!(
            "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={}/{}\n{v6_lines}FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n",
            Ipv4Addr::from(u32::from(lease.network()).wrapping_add(1)),
            lease.prefix_len()
        );
        prop_assert_eq!(&text, &flanneld);
    }
}

fn check_subnet_env_result(r: Result<SubnetEnv, SubnetEnvError>) {
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(msg.contains("/run/x/subnet.env"), "{msg:?} does not name the file");
        match &e {
            SubnetEnvError::Missing { key, .. } | SubnetEnvError::Invalid { key, .. } => {
                assert!(msg.contains(key), "{msg:?} does not name {key}")
            }
            SubnetEnvError::Io { .. } => {}
        }
    }
}

/// Found by `mac_round_trip_and_junk`: a sign is not a hex digit (Go's
/// net.ParseMAC refuses it; `u8::from_str_radix` alone takes "+a").
#[test]
fn mac_with_a_sign_is_refused() {
    assert_eq!(parse_mac("+0-0A-a0-A0-00-aA"), None);
    assert_eq!(parse_mac("+a:bb:cc:dd:ee:ff"), None);
    let e = LeaseAttrs::from_json(r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VtepMAC":"+a:bb:cc:dd:ee:ff"}}"#)
        .unwrap_err();
    assert!(e.to_string().contains("BackendData.VtepMAC"), "{e}");
}
