//! net-conf `"EnableNFTables": true`: flanneld's nftables tables, written
//! and read back with the real `nft` inside testbed network namespaces
//! (the machine's own ruleset is never touched), and the agent choosing
//! them over iptables, replacing an earlier iptables-mode run's rules.
//! Dual stack: `ip6 flannel-ipv6` gets the same layout for IPv6Network and
//! the v6 lease. Also `--ip-blackhole-route`, for the IPv4 lease and a dual-stack
//! lease's IPv6 subnet. Needs root and the nft binary.

use std::time::Duration;

use ipnet::Ipv4Net;
use overlay_agent::host::blackhole;
use overlay_agent::host::masq::MasqRules;
use overlay_agent::host::nftables::{remove_all_with, NftRules};
use overlay_tests::agent::agent_binary;
use overlay_tests::cluster::{Cluster, PREFIX};
use overlay_tests::netns::{Netns, Testbed};
use overlay_tests::poll_until;

const NFT_CONFIG: &str = r#"{"Network":"10.42.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;

fn in_ns(ns: &Netns, tool: &str) -> Vec<String> {
    vec!["nsenter".into(), format!("--net={}", ns.path().display()), "--".into(), tool.into()]
}

fn nft_rules(ns: &Netns, cluster: &str, pod: &str, fully_random: bool, forward: bool) -> NftRules {
    let c: Ipv4Net = cluster.parse().unwrap();
    let p: Ipv4Net = pod.parse().unwrap();
    NftRules::new(c, p, fully_random, forward).with_nft_command(in_ns(ns, "nft"))
}

/// `nft list table` as nft prints it, or None when the table is absent.
fn table(ns: &Netns, family: &str, name: &str) -> Option<String> {
    let out = ns.exec(&["nft", "list", "table", family, name]).expect("running nft (is it installed?)");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// flanneld's table for Network 10.42.0.0/16 and lease `pod` (what
/// flanneld v0.26+ installs, flannel-compat.md; its comments aside, which
/// nft's JSON input cannot carry).
fn expected_v4(pod: &str, fully_random: bool) -> String {
    expected_table("ip", "flannel-ipv4", "10.42.0.0/16", pod, "224.0.0.0/4", fully_random)
}

/// The same layout for `family` (`ip` or `ip6`, whose matches say `ip6`).
fn expected_table(family: &str, name: &str, cluster: &str, pod: &str, multicast: &str, fully_random: bool) -> String {
    let masq = if fully_random { "masquerade fully-random" } else { "masquerade" };
    let f = family;
    format!(
        "table {f} {name} {{\n\
         \tchain postrtg {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark 0x00004000 return\n\
         \t\t{f} saddr {pod} {f} daddr {cluster} return\n\
         \t\t{f} saddr {cluster} {f} daddr {pod} return\n\
         \t\t{f} saddr != {pod} {f} daddr {cluster} return\n\
         \t\t{f} saddr {cluster} {f} daddr != {multicast} {masq}\n\
         \t\t{f} saddr != {cluster} {f} daddr {cluster} {masq}\n\
         \t}}\n\
         \n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\t{f} saddr {cluster} accept\n\
         \t\t{f} daddr {cluster} accept\n\
         \t}}\n\
         }}\n"
    )
}

fn wait_table(ns: &Netns, want: &str) {
    poll_until(Duration::from_secs(20), "the resync to restore the table", || {
        let now = table(ns, "ip", "flannel-ipv4").unwrap_or_default();
        if now == want {
            Ok(())
        } else {
            anyhow::bail!("{now}")
        }
    })
    .unwrap();
}

#[test]
fn tables_are_flannels_layout_once() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    let r = nft_rules(ns, "10.42.0.0/16", "10.42.3.1/24", true, true);
    let first = r.ensure().unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(table(ns, "ip", "flannel-ipv4").as_deref(), Some(expected_v4("10.42.3.0/24", true).as_str()));
    assert_eq!(table(ns, "ip6", "flannel-ipv6").as_deref(), Some("table ip6 flannel-ipv6 {\n}\n"));
    // in place: nothing to do, nothing duplicated
    assert_eq!(r.ensure().unwrap(), Vec::<String>::new());
    assert_eq!(table(ns, "ip", "flannel-ipv4").as_deref(), Some(expected_v4("10.42.3.0/24", true).as_str()));
    // nftables mode writes no iptables rules
    let save = ns.run(&["iptables-save"]).unwrap();
    assert!(!save.contains("FLANNEL"), "{save}");
}

#[test]
fn options_change_the_tables() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    nft_rules(ns, "10.42.0.0/16", "10.42.3.0/24", false, true).ensure().unwrap();
    assert_eq!(table(ns, "ip", "flannel-ipv4").unwrap(), expected_v4("10.42.3.0/24", false));
    // a new lease: the same table with the new subnet, the old one gone
    nft_rules(ns, "10.42.0.0/16", "10.42.9.0/24", true, true).ensure().unwrap();
    assert_eq!(table(ns, "ip", "flannel-ipv4").unwrap(), expected_v4("10.42.9.0/24", true));
    // no --ip-masq, no --iptables-forward-rules: the tables only
    nft_rules(ns, "10.42.0.0/16", "10.42.9.0/24", true, false).with_masq(false).ensure().unwrap();
    assert_eq!(table(ns, "ip", "flannel-ipv4").unwrap(), "table ip flannel-ipv4 {\n}\n");
}

#[test]
fn resync_restores_flushed_and_changed_tables() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    let r = nft_rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true);
    r.ensure().unwrap();
    let want = expected_v4("10.42.3.0/24", true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let passes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handle = {
        let _in_runtime = rt.enter();
        let passes = passes.clone();
        // a pass that fails (say, nft racing the test's own nft) is only
        // retried at the next tick, as in the agent: count the good ones
        r.spawn_resync(Duration::from_millis(200), move |ok| {
            if ok {
                passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    for (what, script) in [
        ("flush one chain", "nft flush chain ip flannel-ipv4 postrtg"),
        ("flush the table", "nft flush table ip flannel-ipv4"),
        ("flush the whole ruleset", "nft flush ruleset"),
        ("delete the table", "nft delete table ip flannel-ipv4"),
        ("add a foreign rule", "nft insert rule ip flannel-ipv4 postrtg ip saddr 10.42.0.0/16 accept"),
        (
            "delete one rule",
            "nft -a list chain ip flannel-ipv4 forward | sed -n 's/.*accept # handle //p' | head -1 | \
             xargs -I{} nft delete rule ip flannel-ipv4 forward handle {}",
        ),
    ] {
        ns.sh(script).unwrap();
        assert_ne!(table(ns, "ip", "flannel-ipv4").unwrap_or_default(), want, "{what} changed nothing");
        wait_table(ns, &want);
    }
    assert!(passes.load(std::sync::atomic::Ordering::SeqCst) > 0);
    handle.abort();
    drop(rt);
}

#[test]
fn remove_deletes_both_tables_and_is_idempotent() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    nft_rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true).ensure().unwrap();
    // a table of someone else's stays
    ns.run(&["nft", "add", "table", "ip", "other"]).unwrap();
    remove_all_with(&in_ns(ns, "nft")).unwrap();
    assert_eq!(table(ns, "ip", "flannel-ipv4"), None);
    assert_eq!(table(ns, "ip6", "flannel-ipv6"), None);
    assert!(table(ns, "ip", "other").is_some());
    remove_all_with(&in_ns(ns, "nft")).unwrap();
}

/// A node that ran in iptables mode (flanneld's or ours) switches to
/// EnableNFTables: its FLANNEL-POSTRTG / FLANNEL-FWD rules, still there and
/// for an older lease, go; the agent's tables appear; readiness says so;
/// `cleanup` deletes the tables.
#[test]
fn agent_switches_an_iptables_node_to_nftables() {
    let mut c = Cluster::build(1, 0, 0, NFT_CONFIG)
        .agent_flags(&["--ip-masq"])
        .prepare(|tb| {
            let ns = tb.host(0).ns();
            let old = MasqRules::new("10.42.0.0/16".parse().unwrap(), "10.42.200.0/24".parse().unwrap(), true, true)
                .with_iptables_command(in_ns(ns, "iptables"));
            old.ensure().unwrap();
            assert!(ns.run(&["iptables-save"]).unwrap().contains("FLANNEL-POSTRTG"));
        })
        .start();
    let host = c.tb.host(0);
    let ns = host.ns();
    let subnet = c.subnet(0);
    assert_eq!(table(ns, "ip", "flannel-ipv4").unwrap(), expected_v4(&subnet.to_string(), true));
    assert!(table(ns, "ip6", "flannel-ipv6").is_some());
    let save = ns.run(&["iptables-save"]).unwrap();
    assert!(!save.contains("FLANNEL") && !save.contains("flanneld"), "iptables-mode rules left: {save}");
    let log = c.agents[0].log_text();
    assert!(log.contains("nftables rules installed"), "{log}");

    // repaired by the agent's own resync (--iptables-resync, 5 s)
    ns.run(&["nft", "flush", "ruleset"]).unwrap();
    poll_until(Duration::from_secs(20), "the agent to restore its table", || {
        match table(ns, "ip", "flannel-ipv4") {
            Some(t) if t == expected_v4(&subnet.to_string(), true) => Ok(()),
            other => anyhow::bail!("{other:?}"),
        }
    })
    .unwrap();
    c.agents[0].wait_log("nftables rules had to be repaired", Duration::from_secs(5)).unwrap();

    let status = c.agents[0].stop().expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let said = cleanup(ns, &c.agents[0]);
    assert_eq!(table(ns, "ip", "flannel-ipv4"), None, "{said}");
    assert_eq!(table(ns, "ip6", "flannel-ipv6"), None, "{said}");
}

/// And back: an iptables-mode agent removes the tables an nftables-mode run
/// left.
#[test]
fn agent_switches_an_nftables_node_to_iptables() {
    let c = Cluster::build(1, 0, 0, overlay_tests::cluster::VXLAN_CONFIG)
        .agent_flags(&["--ip-masq"])
        .prepare(|tb| {
            nft_rules(tb.host(0).ns(), "10.42.0.0/16", "10.42.200.0/24", true, true).ensure().unwrap();
        })
        .start();
    let ns = c.tb.host(0).ns();
    assert_eq!(table(ns, "ip", "flannel-ipv4"), None);
    assert_eq!(table(ns, "ip6", "flannel-ipv6"), None);
    assert!(ns.run(&["iptables-save"]).unwrap().contains("FLANNEL-POSTRTG"));
}

/// `overlay-agent cleanup` in `ns` for agent `agent`'s pins and subnet
/// file; what it printed, after asserting it succeeded.
fn cleanup(ns: &Netns, agent: &overlay_tests::agent::Agent) -> String {
    let out = ns
        .exec(&[
            agent_binary().to_str().unwrap(),
            "cleanup",
            &format!("--bpf-pin-dir={}", agent.pin_root.display()),
            &format!("--subnet-file={}", agent.subnet_file.display()),
            &format!("--etcd-prefix={PREFIX}"),
        ])
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleanup failed: {said}");
    said
}

/// `ip route get` for an address of the node's lease that no pod holds.
fn route_get(ns: &Netns, ip: &str) -> String {
    let out = ns.exec(&["ip", "route", "get", ip]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `--ip-blackhole-route`: while the pod bridge is there it carries the
/// lease; without it, the kernel drops the lease's addresses itself. (On a
/// node without the flag they follow overlay0's route for the whole
/// Network, never the default route as on a flanneld node, and the data
/// path drops them: no leak either way, but only the flag gives flanneld's
/// blackhole.) `cleanup` removes the route.
#[test]
fn blackhole_route_keeps_lease_traffic_off_the_default_route() {
    let mut c = Cluster::build(2, 0, 0, overlay_tests::cluster::VXLAN_CONFIG)
        .agent_flags_for(0, &["--ip-blackhole-route"])
        .start();
    for i in 0..2 {
        let other = c.tb.host(1 - i).ip();
        c.tb.host(i).run(&["ip", "route", "add", "default", "via", &other.to_string()]).unwrap();
    }
    let unallocated = |i: usize| {
        let s = c.subnet(i);
        (u32::from(s.network()) + 77).into()
    };
    let (ip0, ip1): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (unallocated(0), unallocated(1));
    let ns0 = c.tb.host(0).ns();
    let ns1 = c.tb.host(1).ns();
    let bh = ns0.run(&["ip", "route", "show", "type", "blackhole"]).unwrap();
    assert_eq!(bh.trim(), format!("blackhole {} proto static metric 4242", c.subnet(0)));
    assert_eq!(ns1.run(&["ip", "route", "show", "type", "blackhole"]).unwrap().trim(), "");
    // the bridge wins while it exists
    assert!(route_get(ns0, &ip0.to_string()).contains("dev cni0"), "{}", route_get(ns0, &ip0.to_string()));
    for ns in [ns0, ns1] {
        ns.run(&["ip", "link", "del", "cni0"]).unwrap();
    }
    let without = route_get(ns1, &ip1.to_string());
    assert!(without.contains("dev overlay0") && !without.contains("via"), "no flag: overlay0's route: {without}");
    let with = route_get(ns0, &ip0.to_string());
    assert!(with.contains("Invalid argument") && !with.contains("via"), "blackholed: {with}");
    // the agent keeps it (re-asserted every 5 s) if it is deleted
    ns0.run(&["ip", "route", "del", "blackhole", &c.subnet(0).to_string(), "metric", "4242"]).unwrap();
    poll_until(Duration::from_secs(15), "the blackhole route to come back", || {
        let bh = ns0.run(&["ip", "route", "show", "type", "blackhole"]).unwrap();
        if bh.contains(&c.subnet(0).to_string()) {
            Ok(())
        } else {
            anyhow::bail!("{bh}")
        }
    })
    .unwrap();

    c.agents[0].stop();
    let said = cleanup(ns0, &c.agents[0]);
    assert_eq!(ns0.run(&["ip", "route", "show", "type", "blackhole"]).unwrap().trim(), "", "{said}");
}

/// The route follows the lease (the old one goes), is added once, and
/// only routes with our metric are ours to remove.
#[test]
fn blackhole_route_follows_the_lease() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    ns.run(&["ip", "route", "add", "blackhole", "192.0.2.0/24"]).unwrap();
    let in_ns = |f: fn(rtnetlink::Handle) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
        ns.in_ns(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { f(overlay_agent::host::netlink::connect().unwrap()).await })
        })
    };
    in_ns(|h| {
        Box::pin(async move {
            blackhole::ensure(&h, "10.42.3.1/24".parse::<Ipv4Net>().unwrap()).await.unwrap();
            blackhole::ensure(&h, "10.42.3.0/24".parse::<Ipv4Net>().unwrap()).await.unwrap();
        })
    });
    let bh = ns.run(&["ip", "route", "show", "type", "blackhole"]).unwrap();
    assert_eq!(bh, "blackhole 10.42.3.0/24 proto static metric 4242 \nblackhole 192.0.2.0/24 \n");
    in_ns(|h| Box::pin(async move { blackhole::ensure(&h, "10.42.9.0/24".parse::<Ipv4Net>().unwrap()).await.unwrap() }));
    let bh = ns.run(&["ip", "route", "show", "type", "blackhole"]).unwrap();
    assert_eq!(bh, "blackhole 10.42.9.0/24 proto static metric 4242 \nblackhole 192.0.2.0/24 \n");
    in_ns(|h| {
        Box::pin(async move {
            let removed = blackhole::remove(&h, None).await.unwrap();
            assert_eq!(removed, ["10.42.9.0/24".parse::<ipnet::IpNet>().unwrap()]);
            assert!(blackhole::remove(&h, None).await.unwrap().is_empty());
        })
    });
    let bh = ns.run(&["ip", "route", "show", "type", "blackhole"]).unwrap();
    assert_eq!(bh, "blackhole 192.0.2.0/24 \n", "someone else's blackhole route stays");
}

const DUAL_STACK_CONFIG: &str =
    r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}"#;

/// Dual stack: `--ip-blackhole-route` blackholes the v6 lease too (as
/// flanneld adds one per family); without cni0 the kernel drops the v6
/// lease's unallocated addresses itself; the route is re-asserted when
/// deleted; `cleanup` removes both families' routes.
#[test]
fn blackhole_route_covers_the_v6_lease_in_dual_stack() {
    let mut c = Cluster::build(1, 0, 0, DUAL_STACK_CONFIG)
        .prepare(overlay_tests::cluster::address_underlay6)
        .agent_flags(&["--ip-blackhole-route"])
        .start();
    let (subnet6, _) = c.agents[0].lease6().unwrap();
    let ns = c.tb.host(0).ns();
    let show6 = || ns.run(&["ip", "-6", "route", "show", "type", "blackhole"]).unwrap();
    assert_eq!(show6().trim(), format!("blackhole {subnet6} dev lo proto static metric 4242 pref medium"));
    let bh4 = ns.run(&["ip", "route", "show", "type", "blackhole"]).unwrap();
    assert_eq!(bh4.trim(), format!("blackhole {} proto static metric 4242", c.subnet(0)), "the v4 route stays");

    let unallocated = std::net::Ipv6Addr::from(u128::from(subnet6.network()) + 77).to_string();
    ns.run(&["ip", "link", "del", "cni0"]).unwrap();
    let with = route_get(ns, &unallocated);
    assert!(with.contains("Invalid argument") || with.contains("blackhole"), "blackholed: {with}");

    ns.run(&["ip", "-6", "route", "del", "blackhole", &subnet6.to_string(), "metric", "4242"]).unwrap();
    poll_until(Duration::from_secs(15), "the v6 blackhole route to come back", || {
        let bh = show6();
        anyhow::ensure!(bh.contains(&subnet6.to_string()), "{bh}");
        Ok(())
    })
    .unwrap();

    c.agents[0].stop();
    let said = cleanup(ns, &c.agents[0]);
    assert_eq!(show6().trim(), "", "{said}");
    assert_eq!(ns.run(&["ip", "route", "show", "type", "blackhole"]).unwrap().trim(), "", "{said}");
}

/// The v6 route follows the v6 lease and leaves the v4 one alone.
#[test]
fn blackhole_routes_of_the_two_families_are_kept_apart() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    ns.in_ns(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = overlay_agent::host::netlink::connect().unwrap();
            blackhole::ensure(&h, "10.42.3.0/24".parse::<Ipv4Net>().unwrap()).await.unwrap();
            blackhole::ensure(&h, "fd42:0:0:3::/64".parse::<ipnet::Ipv6Net>().unwrap()).await.unwrap();
            blackhole::ensure(&h, "fd42:0:0:9::1/64".parse::<ipnet::Ipv6Net>().unwrap()).await.unwrap();
        })
    });
    assert_eq!(ns.run(&["ip", "route", "show", "type", "blackhole"]).unwrap().trim(), "blackhole 10.42.3.0/24 proto static metric 4242");
    assert_eq!(
        ns.run(&["ip", "-6", "route", "show", "type", "blackhole"]).unwrap().trim(),
        "blackhole fd42:0:0:9::/64 dev lo proto static metric 4242 pref medium"
    );
    let removed = ns.in_ns(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { blackhole::remove(&overlay_agent::host::netlink::connect().unwrap(), None).await.unwrap() })
    });
    assert_eq!(removed, ["10.42.3.0/24".parse::<ipnet::IpNet>().unwrap(), "fd42:0:0:9::/64".parse().unwrap()]);
}

/// EnableNFTables in a dual-stack network: `ip6 flannel-ipv6` holds
/// flanneld's chains for IPv6Network and our v6 lease (multicast ff00::/8),
/// next to the IPv4 table; the resync restores it when deleted; `cleanup`
/// deletes both tables.
#[test]
fn dual_stack_fills_flannel_ipv6_and_keeps_it() {
    let config = r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
    let mut c = Cluster::build(1, 0, 0, config)
        .prepare(overlay_tests::cluster::address_underlay6)
        .agent_flags(&["--ip-masq"])
        .start();
    let ns = c.tb.host(0).ns();
    let (subnet6, _) = c.agents[0].lease6().unwrap();
    let want6 = expected_table("ip6", "flannel-ipv6", "fd42::/48", &subnet6.to_string(), "ff00::/8", true);
    assert_eq!(table(ns, "ip6", "flannel-ipv6").unwrap(), want6);
    assert_eq!(table(ns, "ip", "flannel-ipv4").unwrap(), expected_v4(&c.subnet(0).to_string(), true));
    let log = c.agents[0].log_text();
    assert!(!log.contains("no IPv6 masquerade"), "{log}");

    ns.run(&["nft", "delete", "table", "ip6", "flannel-ipv6"]).unwrap();
    poll_until(Duration::from_secs(20), "the agent to restore flannel-ipv6", || match table(ns, "ip6", "flannel-ipv6") {
        Some(t) if t == want6 => Ok(()),
        other => anyhow::bail!("{other:?}"),
    })
    .unwrap();

    c.agents[0].stop();
    let said = cleanup(ns, &c.agents[0]);
    assert_eq!(table(ns, "ip6", "flannel-ipv6"), None, "{said}");
    assert_eq!(table(ns, "ip", "flannel-ipv4"), None, "{said}");
}
