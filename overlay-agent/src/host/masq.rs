//! `--ip-masq` / `--iptables-forward-rules`: flanneld's iptables rules,
//! byte for byte (same chains, same order, same comments), so a node that
//! switches from flanneld finds its rules in place and nothing is duplicated.
//!
//! nat table (`CLUSTER` = the flannel network, `POD` = this node's lease):
//! ```text
//! -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
//! -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
//! -A FLANNEL-POSTRTG -s POD -d CLUSTER -m comment --comment "flanneld masq" -j RETURN
//! -A FLANNEL-POSTRTG -s CLUSTER -d POD -m comment --comment "flanneld masq" -j RETURN
//! -A FLANNEL-POSTRTG ! -s CLUSTER -d POD -m comment --comment "flanneld masq" -j RETURN
//! -A FLANNEL-POSTRTG -s CLUSTER ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
//! -A FLANNEL-POSTRTG ! -s CLUSTER -d CLUSTER -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
//! ```
//! filter table (with `--iptables-forward-rules`, flanneld's default):
//! ```text
//! -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
//! -A FLANNEL-FWD -s CLUSTER -m comment --comment "flanneld forward" -j ACCEPT
//! -A FLANNEL-FWD -d CLUSTER -m comment --comment "flanneld forward" -j ACCEPT
//! ```
//! `--random-fully` is left out with `--ip-masq-fully-random-disable`, or
//! when the iptables binary is older than 1.6.2 (as flanneld does).
//!
//! Everything shells out to the `iptables` binary with `-w` (wait for the
//! xtables lock), so the legacy and nft backends both work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// flanneld's comment on the nat rules.
pub const MASQ_COMMENT: &str = "flanneld masq";
/// flanneld's comment on the filter rules.
pub const FORWARD_COMMENT: &str = "flanneld forward";
/// nat chain holding the masquerade rules.
pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
/// filter chain holding the forward-accept rules.
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";
/// kube-proxy's masquerade mark: such packets are left to kube-proxy.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// One rule: table, chain and the rule spec (iptables arguments after
/// `-A CHAIN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub spec: Vec<String>,
}

impl Rule {
    fn new(table: &'static str, chain: &'static str, spec: &[&str]) -> Rule {
        Rule {
            table,
            chain,
            spec: spec.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The rule as `iptables-save` / `iptables -S` print it.
    pub fn save_line(&self) -> String {
        let mut s = format!("-A {}", self.chain);
        for t in &self.spec {
            s.push(' ');
            s.push_str(&quote(t));
        }
        s
    }
}

/// iptables-save's quoting of one argument.
fn quote(t: &str) -> String {
    if t.is_empty() || t.contains([' ', '\t', '"', '\'']) {
        format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        t.to_owned()
    }
}

/// Split an `iptables -S` line into arguments (undoing [`quote`]).
fn split_save_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        c => cur.push(c),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// A chain of ours, the jump into it and the rules in it.
#[derive(Debug, Clone)]
struct Group {
    table: &'static str,
    /// built-in chain holding the jump (POSTROUTING / FORWARD)
    parent: &'static str,
    chain: &'static str,
    comment: &'static str,
    jump: Rule,
    rules: Vec<Rule>,
}

/// flanneld's masquerade (and forward) rules for one network and lease.
#[derive(Debug, Clone)]
pub struct MasqRules {
    cluster: IpNet,
    pod_subnet: IpNet,
    fully_random: bool,
    forward: bool,
    /// the nat rules (off for a forward-rules-only instance)
    masq: bool,
    iptables: Vec<String>,
    random_fully_supported: Arc<OnceLock<bool>>,
    /// set when `iptables -S` prints our rules differently from
    /// [`Rule::save_line`] even right after a rebuild: order can then not be
    /// judged from the listing, and only presence (-C) is checked.
    listing_unreliable: Arc<AtomicBool>,
}

impl MasqRules {
    /// `cluster` = the flannel network, `pod_subnet` = this node's lease
    /// (host bits are ignored), `fully_random` = MASQUERADE with
    /// --random-fully (i.e. not --ip-masq-fully-random-disable),
    /// `forward` = also the FORWARD accept rules (--iptables-forward-rules).
    pub fn new(
        cluster: Ipv4Net,
        pod_subnet: Ipv4Net,
        fully_random: bool,
        forward: bool,
    ) -> MasqRules {
        MasqRules {
            cluster: IpNet::V4(cluster.trunc()),
            pod_subnet: IpNet::V4(pod_subnet.trunc()),
            fully_random,
            forward,
            iptables: vec!["iptables".to_owned()],
            random_fully_supported: Arc::new(OnceLock::new()),
            listing_unreliable: Arc::new(AtomicBool::new(false)),
            masq: true,
        }
    }

    /// `false`: manage only the FORWARD rules, not the nat ones. flanneld
    /// installs the FORWARD rules whenever --iptables-forward-rules is on
    /// (its default), with or without --ip-masq, so the daemon wants
    /// `MasqRules::new(net, lease, fully_random, forward).with_masq(ip_masq)`
    /// whenever `ip_masq || iptables_forward_rules`.
    /// flanneld's IPv6 rules (dual stack): the same chains and rules
    /// through `ip6tables`, for the IPv6Network and our v6 lease, with
    /// ff00::/8 where IPv4 has 224.0.0.0/4.
    pub fn new_v6(cluster: Ipv6Net, pod_subnet: Ipv6Net, fully_random: bool, forward: bool) -> MasqRules {
        MasqRules {
            cluster: IpNet::V6(cluster.trunc()),
            pod_subnet: IpNet::V6(pod_subnet.trunc()),
            iptables: vec!["ip6tables".to_owned()],
            ..MasqRules::new(Ipv4Net::default(), Ipv4Net::default(), fully_random, forward)
        }
    }

    pub fn with_masq(mut self, masq: bool) -> MasqRules {
        self.masq = masq;
        self
    }

    /// Run iptables through this argv instead of plain `iptables`, e.g.
    /// `["nsenter", "--net=/var/run/netns/x", "--", "iptables"]` or
    /// `["iptables-legacy"]`. `-w` and the rule arguments are appended.
    pub fn with_iptables_command<S: Into<String>>(mut self, argv: Vec<S>) -> MasqRules {
        self.iptables = argv.into_iter().map(Into::into).collect();
        self
    }

    pub fn cluster(&self) -> IpNet {
        self.cluster
    }

    pub fn pod_subnet(&self) -> IpNet {
        self.pod_subnet
    }

    /// Whether the MASQUERADE rules carry --random-fully (asked for and
    /// supported by the iptables binary).
    pub fn uses_random_fully(&self) -> bool {
        self.fully_random && self.random_fully_supported()
    }

    fn random_fully_supported(&self) -> bool {
        *self.random_fully_supported.get_or_init(|| {
            let supported = match self.output(&["--version"]) {
                Ok(out) => iptables_version(&out).is_none_or(|v| v >= (1, 6, 2)),
                Err(_) => true,
            };
            if !supported && self.fully_random {
                log::warn!("iptables is older than 1.6.2: MASQUERADE rules without --random-fully");
            }
            supported
        })
    }

    fn groups(&self) -> Vec<Group> {
        let cluster = self.cluster.to_string();
        let pod = self.pod_subnet.to_string();
        let multicast = match self.cluster {
            IpNet::V4(_) => "224.0.0.0/4",
            IpNet::V6(_) => "ff00::/8",
        };
        let c = MASQ_COMMENT;
        let masq_tail: &[&str] = if self.uses_random_fully() {
            &["-j", "MASQUERADE", "--random-fully"]
        } else {
            &["-j", "MASQUERADE"]
        };
        let with_tail = |head: &[&str]| -> Vec<String> {
            head.iter()
                .chain(masq_tail.iter())
                .map(|s| s.to_string())
                .collect()
        };
        let nat = "nat";
        let mut groups = Vec::new();
        groups.push(Group {
            table: nat,
            parent: "POSTROUTING",
            chain: MASQ_CHAIN,
            comment: MASQ_COMMENT,
            jump: Rule::new(
                nat,
                "POSTROUTING",
                &["-m", "comment", "--comment", c, "-j", MASQ_CHAIN],
            ),
            rules: vec![
                Rule::new(
                    nat,
                    MASQ_CHAIN,
                    &[
                        "-m",
                        "mark",
                        "--mark",
                        KUBE_PROXY_MARK,
                        "-m",
                        "comment",
                        "--comment",
                        c,
                        "-j",
                        "RETURN",
                    ],
                ),
                Rule::new(
                    nat,
                    MASQ_CHAIN,
                    &[
                        "-s",
                        &pod,
                        "-d",
                        &cluster,
                        "-m",
                        "comment",
                        "--comment",
                        c,
                        "-j",
                        "RETURN",
                    ],
                ),
                Rule::new(
                    nat,
                    MASQ_CHAIN,
                    &[
                        "-s",
                        &cluster,
                        "-d",
                        &pod,
                        "-m",
                        "comment",
                        "--comment",
                        c,
                        "-j",
                        "RETURN",
                    ],
                ),
                Rule::new(
                    nat,
                    MASQ_CHAIN,
                    &[
                        "!",
                        "-s",
                        &cluster,
                        "-d",
                        &pod,
                        "-m",
                        "comment",
                        "--comment",
                        c,
                        "-j",
                        "RETURN",
                    ],
                ),
                Rule {
                    table: nat,
                    chain: MASQ_CHAIN,
                    spec: with_tail(&[
                        "-s",
                        &cluster,
                        "!",
                        "-d",
                        multicast,
                        "-m",
                        "comment",
                        "--comment",
                        c,
                    ]),
                },
                Rule {
                    table: nat,
                    chain: MASQ_CHAIN,
                    spec: with_tail(&[
                        "!",
                        "-s",
                        &cluster,
                        "-d",
                        &cluster,
                        "-m",
                        "comment",
                        "--comment",
                        c,
                    ]),
                },
            ],
        });
        if !self.masq {
            groups.clear();
        }
        if self.forward {
            let f = FORWARD_COMMENT;
            let filter = "filter";
            groups.push(Group {
                table: filter,
                parent: "FORWARD",
                chain: FORWARD_CHAIN,
                comment: FORWARD_COMMENT,
                jump: Rule::new(
                    filter,
                    "FORWARD",
                    &["-m", "comment", "--comment", f, "-j", FORWARD_CHAIN],
                ),
                rules: vec![
                    Rule::new(
                        filter,
                        FORWARD_CHAIN,
                        &[
                            "-s",
                            &cluster,
                            "-m",
                            "comment",
                            "--comment",
                            f,
                            "-j",
                            "ACCEPT",
                        ],
                    ),
                    Rule::new(
                        filter,
                        FORWARD_CHAIN,
                        &[
                            "-d",
                            &cluster,
                            "-m",
                            "comment",
                            "--comment",
                            f,
                            "-j",
                            "ACCEPT",
                        ],
                    ),
                ],
            });
        }
        groups
    }

    /// Every rule, in the order they are installed (per table: the jump,
    /// then the chain's rules).
    pub fn rules(&self) -> Vec<Rule> {
        self.groups()
            .into_iter()
            .flat_map(|g| std::iter::once(g.jump).chain(g.rules))
            .collect()
    }

    /// `(table, line)` for every rule as `iptables-save` prints it.
    pub fn expected_save_lines(&self) -> Vec<(&'static str, String)> {
        self.rules()
            .iter()
            .map(|r| (r.table, r.save_line()))
            .collect()
    }

    /// Make the rules be there, once and in order. Idempotent. Returns a
    /// description of each repair made (empty when everything was in place).
    ///
    /// Per table: the chain is created if missing; each rule is checked with
    /// `iptables -C`; if the chain holds exactly a leading part of the rules,
    /// the missing ones are appended in order, otherwise (wrong order,
    /// foreign or stale rules such as an old lease's) the chain is flushed
    /// and rebuilt. The jump from POSTROUTING / FORWARD is appended when
    /// missing; duplicate jumps and older flanneld rules carrying the same
    /// comment directly in POSTROUTING / FORWARD are deleted.
    pub fn ensure(&self) -> Result<Vec<String>> {
        let mut repairs = Vec::new();
        for g in self.groups() {
            self.ensure_group(&g, &mut repairs)?;
        }
        Ok(repairs)
    }

    fn ensure_group(&self, g: &Group, repairs: &mut Vec<String>) -> Result<()> {
        let t = g.table;
        // 1. the chain
        let mut listing = match self.list_chain(t, g.chain)? {
            Some(l) => l,
            None => {
                self.run(&["-t", t, "-N", g.chain]).or_else(|e| {
                    if self.list_chain(t, g.chain)?.is_some() {
                        Ok(String::new())
                    } else {
                        Err(e)
                    }
                })?;
                repairs.push(format!("created chain {t}/{}", g.chain));
                Vec::new()
            }
        };

        // 2. its rules
        let expected: Vec<String> = g.rules.iter().map(Rule::save_line).collect();
        let mut exists = Vec::with_capacity(g.rules.len());
        for r in &g.rules {
            exists.push(self.check(r)?);
        }
        let unreliable = self.listing_unreliable.load(Ordering::Relaxed);
        let present = exists.iter().take_while(|e| **e).count();
        let prefix_only = exists[present..].iter().all(|e| !*e);
        let listing_is_prefix = if unreliable {
            listing.len() == present
        } else {
            listing.len() == present && listing[..] == expected[..present]
        };
        if present == g.rules.len() && listing_is_prefix {
            // all there, nothing else, in order
        } else if prefix_only && listing_is_prefix {
            for r in &g.rules[present..] {
                self.append(r)?;
            }
            repairs.push(format!(
                "appended {} missing rule(s) to {t}/{}",
                g.rules.len() - present,
                g.chain
            ));
        } else {
            self.run(&["-t", t, "-F", g.chain])?;
            for r in &g.rules {
                self.append(r)?;
            }
            repairs.push(format!(
                "rebuilt {t}/{} (found {} rule(s), {} of ours, out of order or mixed with others)",
                g.chain,
                listing.len(),
                exists.iter().filter(|e| **e).count()
            ));
            listing = self.list_chain(t, g.chain)?.unwrap_or_default();
            if listing != expected && !unreliable {
                log::debug!(
                    "iptables -S prints {t}/{} differently from what we expect ({listing:?} vs {expected:?}); \
                     checking rule presence only from now on",
                    g.chain
                );
                self.listing_unreliable.store(true, Ordering::Relaxed);
            }
        }

        // 3. the jump, once; older flanneld rules with our comment go
        let jump_line = g.jump.save_line();
        let marker = format!("--comment {}", quote(g.comment));
        let parent_lines = self.list_chain(t, g.parent)?.unwrap_or_default();
        let mut jumps = 0;
        for line in parent_lines.iter().filter(|l| l.contains(&marker)) {
            if *line == jump_line {
                jumps += 1;
                if jumps == 1 {
                    continue;
                }
            }
            let words = split_save_line(line);
            // words: -A PARENT spec...
            if words.len() > 2 {
                let mut args = vec!["-t", t, "-D", g.parent];
                args.extend(words[2..].iter().map(String::as_str));
                self.run(&args)?;
                repairs.push(format!("deleted {t}: {line}"));
            }
        }
        if jumps == 0 && !self.check(&g.jump)? {
            self.append(&g.jump)?;
            repairs.push(format!("appended {t}: {jump_line}"));
        }
        Ok(())
    }

    /// Delete the jumps (and any other rule with flanneld's comments in
    /// POSTROUTING / FORWARD) and both chains. Fine when they are absent.
    /// Covers the forward rules too, even if this instance has `forward`
    /// off, since an earlier run may have installed them.
    pub fn remove(&self) -> Result<()> {
        remove_all_with(&self.iptables)
    }

    /// Re-ensure every `interval` on the tokio runtime, logging repairs (a
    /// warning naming what was missing or wrong) and failures. Call
    /// [`MasqRules::ensure`] once first to install the rules and see errors.
    pub fn spawn_resync(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_resync_reporting(interval, |_| {})
    }

    /// [`MasqRules::spawn_resync`], telling `on_result` whether each pass
    /// succeeded (readiness follows it).
    pub fn spawn_resync_reporting<F>(&self, interval: Duration, on_result: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(bool) + Send + Sync + 'static,
    {
        super::masquerade::spawn_resync_loop("iptables", interval, self.clone(), MasqRules::ensure, on_result)
    }

    fn check(&self, r: &Rule) -> Result<bool> {
        let mut args = vec!["-t", r.table, "-C", r.chain];
        args.extend(r.spec.iter().map(String::as_str));
        let out = self.exec(&args)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!(
                "iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    fn append(&self, r: &Rule) -> Result<()> {
        let mut args = vec!["-t", r.table, "-A", r.chain];
        args.extend(r.spec.iter().map(String::as_str));
        self.run(&args).map(drop)
    }

    /// The chain's rules as `-S` lines (without the `-N`/`-P` line), None
    /// if the chain does not exist.
    fn list_chain(&self, table: &str, chain: &str) -> Result<Option<Vec<String>>> {
        list_chain_with(&self.iptables, table, chain)
    }

    fn exec(&self, args: &[&str]) -> Result<std::process::Output> {
        exec_with(&self.iptables, args)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        run_with(&self.iptables, args)
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        let out = self.exec(args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Remove flanneld's / our masquerade and forward rules and chains without
/// knowing the network (for `cleanup`): every rule with flanneld's comments
/// in POSTROUTING and FORWARD, then FLANNEL-POSTRTG and FLANNEL-FWD.
/// `iptables` is the command argv (normally `["iptables"]`).
pub fn remove_all_with<S: AsRef<str>>(iptables: &[S]) -> Result<()> {
    let argv: Vec<String> = iptables.iter().map(|s| s.as_ref().to_owned()).collect();
    for (table, parent, chain, comment) in [
        ("nat", "POSTROUTING", MASQ_CHAIN, MASQ_COMMENT),
        ("filter", "FORWARD", FORWARD_CHAIN, FORWARD_COMMENT),
    ] {
        let marker = format!("--comment {}", quote(comment));
        for line in list_chain_with(&argv, table, parent)?
            .unwrap_or_default()
            .iter()
            .filter(|l| l.contains(&marker))
        {
            let words = split_save_line(line);
            if words.len() > 2 {
                let mut args = vec!["-t", table, "-D", parent];
                args.extend(words[2..].iter().map(String::as_str));
                // gone already (another cleaner) is fine
                let _ = exec_with(&argv, &args)?;
            }
        }
        if list_chain_with(&argv, table, chain)?.is_some() {
            run_with(&argv, &["-t", table, "-F", chain])?;
            run_with(&argv, &["-t", table, "-X", chain])?;
        }
    }
    Ok(())
}

/// [`remove_all_with`] using the `iptables` binary.
pub fn remove_all() -> Result<()> {
    remove_all_with(&["iptables"])
}

fn list_chain_with(iptables: &[String], table: &str, chain: &str) -> Result<Option<Vec<String>>> {
    let out = exec_with(iptables, &["-t", table, "-S", chain])?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Some(
        text.lines()
            .filter(|l| l.starts_with("-A "))
            .map(|l| l.trim_end().to_owned())
            .collect(),
    ))
}

fn exec_with(iptables: &[String], args: &[&str]) -> Result<std::process::Output> {
    let (prog, pre) = iptables
        .split_first()
        .ok_or_else(|| anyhow!("empty iptables command"))?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(pre);
    if args.first() != Some(&"--version") {
        cmd.arg("-w");
    }
    cmd.args(args).stdin(std::process::Stdio::null());
    cmd.output()
        .with_context(|| format!("running {} {}", iptables.join(" "), args.join(" ")))
}

fn run_with(iptables: &[String], args: &[&str]) -> Result<String> {
    let out = exec_with(iptables, args)?;
    if !out.status.success() {
        bail!(
            "{} -w {} failed ({}): {}",
            iptables.join(" "),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables v1.8.9 (nf_tables)` → (1, 8, 9).
fn iptables_version(s: &str) -> Option<(u32, u32, u32)> {
    let v = s.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_flannel() {
        let m = MasqRules::new(
            "10.42.0.0/16".parse().unwrap(),
            "10.42.3.1/24".parse().unwrap(),
            true,
            true,
        );
        // don't ask the binary in a unit test
        m.random_fully_supported.set(true).unwrap();
        let lines: Vec<String> = m
            .expected_save_lines()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(
            lines,
            vec![
                "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
                "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.42.3.0/24 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.42.0.0/16 -d 10.42.3.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
                "-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.3.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
                "-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
                "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
                "-A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
                "-A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
            ]
        );
    }

    #[test]
    fn save_line_round_trip() {
        let l = "-A POSTROUTING -s 10.0.0.0/8 -m comment --comment \"flanneld masq\" -j RETURN";
        let w = split_save_line(l);
        assert_eq!(w[7], "flanneld masq");
        assert_eq!(w.len(), 10);
        assert_eq!(
            iptables_version("iptables v1.8.9 (nf_tables)"),
            Some((1, 8, 9))
        );
        assert_eq!(iptables_version("iptables v1.6.1"), Some((1, 6, 1)));
    }
}
