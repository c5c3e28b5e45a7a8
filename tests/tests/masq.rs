//! `--ip-masq` rules, exercised with the real iptables binary inside a
//! testbed network namespace (the machine's own tables are never touched).
//! Needs root.

use std::time::Duration;

use ipnet::Ipv4Net;
use overlay_agent::host::masq::{remove_all_with, MasqRules};
use overlay_tests::netns::{Netns, Testbed};
use overlay_tests::poll_until;

fn iptables_in(ns: &Netns) -> Vec<String> {
    vec![
        "nsenter".into(),
        format!("--net={}", ns.path().display()),
        "--".into(),
        "iptables".into(),
    ]
}

fn rules(ns: &Netns, cluster: &str, pod: &str, fully_random: bool, forward: bool) -> MasqRules {
    let c: Ipv4Net = cluster.parse().unwrap();
    let p: Ipv4Net = pod.parse().unwrap();
    MasqRules::new(c, p, fully_random, forward).with_iptables_command(iptables_in(ns))
}

/// The `-A`/`:CHAIN` lines of iptables-save that are flannel's, per table,
/// in order.
fn ours(ns: &Netns) -> Vec<String> {
    let save = ns.run(&["iptables-save"]).unwrap();
    let mut table = String::new();
    let mut out = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_owned();
        } else if line.contains("flanneld") || line.contains("FLANNEL-") {
            let line = if line.starts_with(':') {
                // ":FLANNEL-FWD - [0:0]": drop the counters
                line.split_whitespace().next().unwrap().to_owned()
            } else {
                line.to_owned()
            };
            out.push(format!("{table} {line}"));
        }
    }
    out
}

const EXPECTED: &[&str] = &[
    "filter :FLANNEL-FWD",
    "filter -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
    "filter -A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
    "filter -A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
    "nat :FLANNEL-POSTRTG",
    "nat -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
    "nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN",
    "nat -A FLANNEL-POSTRTG -s 10.42.3.0/24 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN",
    "nat -A FLANNEL-POSTRTG -s 10.42.0.0/16 -d 10.42.3.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
    "nat -A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.3.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
    "nat -A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
    "nat -A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
];

fn expected() -> Vec<String> {
    EXPECTED.iter().map(|s| s.to_string()).collect()
}

#[test]
fn ensure_twice_gives_each_rule_once() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    assert!(ours(ns).is_empty());
    // the lease given as FLANNEL_SUBNET (host bits) works too
    let m = rules(ns, "10.42.0.0/16", "10.42.3.1/24", true, true);
    let first = m.ensure().unwrap();
    assert!(!first.is_empty(), "first ensure installs everything");
    assert_eq!(ours(ns), expected());
    let second = m.ensure().unwrap();
    assert!(second.is_empty(), "nothing to repair: {second:?}");
    assert_eq!(ours(ns), expected());
    // the library's own view agrees with iptables-save
    let lines: Vec<String> = m
        .expected_save_lines()
        .into_iter()
        .map(|(t, l)| format!("{t} {l}"))
        .collect();
    let mut from_save = ours(ns);
    from_save.retain(|l| !l.contains(" :"));
    let mut lib = lines.clone();
    lib.sort();
    from_save.sort();
    assert_eq!(lib, from_save);
}

#[test]
fn rules_left_by_flanneld_are_adopted_without_duplicates() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    // what flanneld itself leaves behind
    ns.sh(
        "set -e
         iptables -w -t nat -N FLANNEL-POSTRTG
         iptables -w -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG
         iptables -w -t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment 'flanneld masq' -j RETURN
         iptables -w -t nat -A FLANNEL-POSTRTG -s 10.42.3.0/24 -d 10.42.0.0/16 -m comment --comment 'flanneld masq' -j RETURN
         iptables -w -t nat -A FLANNEL-POSTRTG -s 10.42.0.0/16 -d 10.42.3.0/24 -m comment --comment 'flanneld masq' -j RETURN
         iptables -w -t nat -A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.3.0/24 -m comment --comment 'flanneld masq' -j RETURN
         iptables -w -t nat -A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment 'flanneld masq' -j MASQUERADE --random-fully
         iptables -w -t nat -A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment 'flanneld masq' -j MASQUERADE --random-fully
         iptables -w -t filter -N FLANNEL-FWD
         iptables -w -t filter -A FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD
         iptables -w -t filter -A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT
         iptables -w -t filter -A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT",
    )
    .unwrap();
    assert_eq!(ours(ns), expected());
    let m = rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true);
    assert_eq!(m.ensure().unwrap(), Vec::<String>::new());
    assert_eq!(ours(ns), expected());
}

#[test]
fn deleted_rules_are_restored_in_order() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    let m = rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true);
    m.ensure().unwrap();

    // a rule in the middle: the chain is rebuilt in order
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-D",
        "FLANNEL-POSTRTG",
        "-s",
        "10.42.0.0/16",
        "-d",
        "10.42.3.0/24",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "RETURN",
    ])
    .unwrap();
    let r = m.ensure().unwrap();
    assert!(!r.is_empty());
    assert_eq!(ours(ns), expected());

    // the last two: appended
    ns.run(&["iptables", "-w", "-t", "nat", "-D", "FLANNEL-POSTRTG", "6"])
        .unwrap();
    ns.run(&["iptables", "-w", "-t", "nat", "-D", "FLANNEL-POSTRTG", "5"])
        .unwrap();
    let r = m.ensure().unwrap();
    assert!(r.iter().any(|s| s.contains("appended 2")), "{r:?}");
    assert_eq!(ours(ns), expected());

    // wrong order: rebuilt
    ns.run(&["iptables", "-w", "-t", "nat", "-D", "FLANNEL-POSTRTG", "1"])
        .unwrap();
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "FLANNEL-POSTRTG",
        "-m",
        "mark",
        "--mark",
        "0x4000/0x4000",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "RETURN",
    ])
    .unwrap();
    let r = m.ensure().unwrap();
    assert!(r.iter().any(|s| s.contains("rebuilt")), "{r:?}");
    assert_eq!(ours(ns), expected());

    // a foreign rule inside our chain: rebuilt without it
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "filter",
        "-I",
        "FLANNEL-FWD",
        "1",
        "-s",
        "1.2.3.4",
        "-j",
        "DROP",
    ])
    .unwrap();
    m.ensure().unwrap();
    assert_eq!(ours(ns), expected());

    // the jumps
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-D",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "FLANNEL-POSTRTG",
    ])
    .unwrap();
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "filter",
        "-D",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "FLANNEL-FWD",
    ])
    .unwrap();
    assert_eq!(m.ensure().unwrap().len(), 2);
    assert_eq!(ours(ns), expected());

    // a whole chain gone (flush + delete, jump removed first)
    ns.sh("iptables -w -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG; iptables -w -t nat -F FLANNEL-POSTRTG; iptables -w -t nat -X FLANNEL-POSTRTG").unwrap();
    m.ensure().unwrap();
    assert_eq!(ours(ns), expected());

    // a duplicate jump is removed
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "FLANNEL-POSTRTG",
    ])
    .unwrap();
    m.ensure().unwrap();
    assert_eq!(ours(ns), expected());
}

#[test]
fn lease_change_and_old_flanneld_rules_are_cleaned() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    // previous lease 10.42.9.0/24, and pre-FLANNEL-POSTRTG flanneld rules in POSTROUTING / FORWARD
    rules(ns, "10.42.0.0/16", "10.42.9.0/24", true, true)
        .ensure()
        .unwrap();
    ns.sh(
        "set -e
         iptables -w -t nat -A POSTROUTING -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment 'flanneld masq' -j RETURN
         iptables -w -t nat -A POSTROUTING -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment 'flanneld masq' -j MASQUERADE --random-fully
         iptables -w -t filter -A FORWARD -s 10.42.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT
         iptables -w -t nat -A POSTROUTING -s 172.16.0.0/12 -j MASQUERADE",
    )
    .unwrap();
    let m = rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true);
    let r = m.ensure().unwrap();
    assert!(
        r.iter().filter(|s| s.starts_with("deleted")).count() == 3,
        "{r:?}"
    );
    assert_eq!(ours(ns), expected());
    // somebody else's rule stays
    let save = ns.run(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(
        save.contains("-A POSTROUTING -s 172.16.0.0/12 -j MASQUERADE"),
        "{save}"
    );
}

#[test]
fn options_change_the_rules() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    let m = rules(ns, "10.42.0.0/16", "10.42.3.0/24", false, false);
    assert!(!m.uses_random_fully());
    m.ensure().unwrap();
    let want: Vec<String> = expected()
        .into_iter()
        .filter(|l| l.starts_with("nat "))
        .map(|l| l.replace(" --random-fully", ""))
        .collect();
    assert_eq!(ours(ns), want);
    assert_eq!(m.ensure().unwrap(), Vec::<String>::new());
    // switching --random-fully back on rebuilds the chain
    let m2 = rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, false);
    assert!(m2.uses_random_fully());
    assert!(!m2.ensure().unwrap().is_empty());
    let want2: Vec<String> = expected()
        .into_iter()
        .filter(|l| l.starts_with("nat "))
        .collect();
    assert_eq!(ours(ns), want2);
}

#[test]
fn forward_rules_without_masquerading() {
    // flanneld's default: no --ip-masq, --iptables-forward-rules=true
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    let m = rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true).with_masq(false);
    m.ensure().unwrap();
    let want: Vec<String> = expected()
        .into_iter()
        .filter(|l| l.starts_with("filter "))
        .collect();
    assert_eq!(ours(ns), want);
    assert_eq!(m.ensure().unwrap(), Vec::<String>::new());
    m.remove().unwrap();
    assert_eq!(ours(ns), Vec::<String>::new());
}

#[test]
fn remove_leaves_nothing_and_is_idempotent() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    let before = ns.run(&["iptables-save"]).unwrap();
    let m = rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true);
    m.remove().unwrap(); // nothing there yet: fine
    m.ensure().unwrap();
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.42.0.0/16",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "RETURN",
    ])
    .unwrap();
    m.remove().unwrap();
    assert_eq!(ours(ns), Vec::<String>::new());
    m.remove().unwrap();
    // without knowing the network (cleanup), including forward rules of a forward=false instance
    m.ensure().unwrap();
    remove_all_with(&iptables_in(ns)).unwrap();
    assert_eq!(ours(ns), Vec::<String>::new());
    rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true)
        .ensure()
        .unwrap();
    rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, false)
        .remove()
        .unwrap();
    assert_eq!(ours(ns), Vec::<String>::new());
    // no rule at all is left (the namespace had none before)
    assert!(!before.contains("-A "), "{before}");
    let after = ns.run(&["iptables-save"]).unwrap();
    assert!(
        !after.contains("-A ") && !after.contains("FLANNEL"),
        "{after}"
    );
}

#[test]
fn resync_repairs_in_the_background() {
    let tb = Testbed::new(1).unwrap();
    let ns = tb.host(0).ns();
    let m = rules(ns, "10.42.0.0/16", "10.42.3.0/24", true, true);
    m.ensure().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = {
        let _in_runtime = rt.enter();
        m.spawn_resync(Duration::from_millis(200))
    };
    ns.run(&["iptables", "-w", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3"])
        .unwrap();
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "filter",
        "-D",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "FLANNEL-FWD",
    ])
    .unwrap();
    assert_ne!(ours(ns), expected());
    poll_until(
        Duration::from_secs(10),
        "resync to restore the rules",
        || {
            if ours(ns) == expected() {
                Ok(())
            } else {
                anyhow::bail!("{:#?}", ours(ns))
            }
        },
    )
    .unwrap();
    handle.abort();
    drop(rt);
}
