//! net-conf `"EnableNFTables": true`: flanneld's nftables layout instead of
//! its iptables chains (flannel v0.26+, `pkg/trafficmngr/nftables`).
//!
//! ```text
//! table ip flannel-ipv4 {
//!   chain postrtg {            # with --ip-masq
//!     type nat hook postrouting priority srcnat; policy accept;
//!     meta mark 0x00004000 return
//!     ip saddr POD ip daddr CLUSTER return
//!     ip saddr CLUSTER ip daddr POD return
//!     ip saddr != POD ip daddr CLUSTER return
//!     ip saddr CLUSTER ip daddr != 224.0.0.0/4 masquerade fully-random
//!     ip saddr != CLUSTER ip daddr CLUSTER masquerade fully-random
//!   }
//!   chain forward {            # with --iptables-forward-rules
//!     type filter hook forward priority filter; policy accept;
//!     ip saddr CLUSTER accept
//!     ip daddr CLUSTER accept
//!   }
//! }
//! table ip6 flannel-ipv6 {     # the same chains with ip6 matches for
//!   ...                        # IPv6Network and our v6 lease (multicast
//! }                            # ff00::/8); empty without IPv6
//! ```
//! The rules, their order and the chains' hooks are flanneld's, rule for
//! rule (its fourth rule reads `saddr != POD`, not iptables' `! -s CLUSTER
//! -d POD`: kept, so both agents install the same table). flanneld never
//! sets a drop policy; neither do we. `fully-random` is left out with
//! `--ip-masq-fully-random-disable` or when the kernel refuses it.
//!
//! flanneld's tables carry comments ("rules for flannel-ipv4"); nft's JSON
//! input (what the `nftables` crate speaks) has no comments on tables and
//! chains, so ours have none. Nothing reads them.
//!
//! Both tables are built in one transaction by one [`NftRules`]: the IPv6
//! half comes with [`NftRules::with_ipv6`] (dual stack), as flanneld fills
//! `flannel-ipv6` for an `EnableIPv6` network and leaves it empty otherwise.
//!
//! Unlike flanneld, which writes the table once, the tables are also checked
//! every `--iptables-resync` seconds: when it was deleted, flushed or
//! changed, it is rebuilt in one nft transaction (delete and re-add), so
//! there is never a moment without the rules.

use std::borrow::Cow;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::{
    batch::Batch,
    expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix},
    schema::{Chain, NfListObject, Nftables, Rule, Table},
    stmt::{Match, NATFlag, Operator, Statement, NAT},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

/// flanneld's IPv4 table.
pub const TABLE_V4: &str = "flannel-ipv4";
/// flanneld's IPv6 table (empty unless the network is dual stack).
pub const TABLE_V6: &str = "flannel-ipv6";
/// The nat chain (hook postrouting, priority srcnat).
pub const POSTRTG_CHAIN: &str = "postrtg";
/// The filter chain (hook forward, priority filter).
pub const FORWARD_CHAIN: &str = "forward";
/// kube-proxy's masquerade mark, matched exactly as flanneld's nft rule does.
const KUBE_PROXY_MARK: u32 = 0x4000;
/// nft's `srcnat` and `filter` priorities.
const PRIO_SRCNAT: i32 = 100;
const PRIO_FILTER: i32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program}: {source} (is the nft binary installed? EnableNFTables needs it)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("nft printed JSON this agent cannot read: {0}")]
    Json(#[from] serde_json::Error),
}

/// flanneld's nftables tables for one network and lease.
#[derive(Debug, Clone)]
pub struct NftRules {
    cluster: Ipv4Net,
    pod_subnet: Ipv4Net,
    fully_random: bool,
    forward: bool,
    masq: bool,
    /// IPv6Network and our v6 lease (dual stack): flannel-ipv6's rules.
    v6: Option<(Ipv6Net, Ipv6Net)>,
    nft: Vec<String>,
    fully_random_supported: Arc<OnceLock<bool>>,
    /// The table as nft listed it right after our last rebuild (rules and
    /// chains without handles): a listing that differs means someone
    /// changed it. Read back rather than predicted, since nft prints some
    /// expressions differently from how they were written.
    installed: Arc<Mutex<Option<serde_json::Value>>>,
}

impl NftRules {
    /// Same meaning as [`super::masq::MasqRules::new`]: `fully_random` =
    /// not --ip-masq-fully-random-disable, `forward` =
    /// --iptables-forward-rules.
    pub fn new(cluster: Ipv4Net, pod_subnet: Ipv4Net, fully_random: bool, forward: bool) -> NftRules {
        NftRules {
            cluster: cluster.trunc(),
            pod_subnet: pod_subnet.trunc(),
            fully_random,
            forward,
            masq: true,
            v6: None,
            nft: vec!["nft".to_owned()],
            fully_random_supported: Arc::new(OnceLock::new()),
            installed: Arc::new(Mutex::new(None)),
        }
    }

    /// `false`: no postrtg chain (no --ip-masq).
    pub fn with_masq(mut self, masq: bool) -> NftRules {
        self.masq = masq;
        self
    }

    /// Dual stack: `flannel-ipv6` gets the same chains for IPv6Network
    /// `cluster` and our v6 lease `pod_subnet` (None: it stays empty).
    pub fn with_ipv6(mut self, v6: Option<(Ipv6Net, Ipv6Net)>) -> NftRules {
        self.v6 = v6.map(|(cluster, pod)| (cluster.trunc(), pod.trunc()));
        self
    }

    /// Run nft through this argv, e.g. `["nsenter", "--net=...", "--", "nft"]`.
    pub fn with_nft_command<S: Into<String>>(mut self, argv: Vec<S>) -> NftRules {
        self.nft = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the masquerade rules say `fully-random`.
    pub fn uses_fully_random(&self) -> bool {
        self.fully_random && *self.fully_random_supported.get_or_init(|| self.probe_fully_random())
    }

    /// flanneld asks the kernel (a check-only transaction); so do we.
    fn probe_fully_random(&self) -> bool {
        if !self.fully_random {
            return false;
        }
        let ok = run_batch(&self.nft, &self.batch(true), true).is_ok();
        if !ok {
            log::warn!("nftables: the kernel refuses 'masquerade fully-random': masquerading without it");
        }
        ok
    }

    /// The transaction that (re)builds both tables: add (so that delete
    /// cannot fail), delete, add with everything in it.
    fn batch(&self, fully_random: bool) -> Nftables<'static> {
        let mut b = Batch::new();
        for (family, name) in [(NfFamily::IP, TABLE_V4), (NfFamily::IP6, TABLE_V6)] {
            let t = table(family, name);
            b.add(NfListObject::Table(t.clone()));
            b.delete(NfListObject::Table(t.clone()));
            b.add(NfListObject::Table(t));
        }
        let mut families = vec![(TableRef::V4, IpNet::V4(self.cluster), IpNet::V4(self.pod_subnet))];
        if let Some((cluster, pod)) = self.v6 {
            families.push((TableRef::V6, IpNet::V6(cluster), IpNet::V6(pod)));
        }
        for (t, cluster, pod) in families {
            if self.masq {
                b.add(NfListObject::Chain(base_chain(t, POSTRTG_CHAIN, NfChainType::NAT, NfHook::Postrouting, PRIO_SRCNAT)));
                for expr in postrtg_rules(cluster, pod, fully_random) {
                    b.add(NfListObject::Rule(rule(t, POSTRTG_CHAIN, expr)));
                }
            }
            if self.forward {
                b.add(NfListObject::Chain(base_chain(t, FORWARD_CHAIN, NfChainType::Filter, NfHook::Forward, PRIO_FILTER)));
                for expr in [
                    vec![ip_match("saddr", Operator::EQ, cluster), Statement::Accept(None)],
                    vec![ip_match("daddr", Operator::EQ, cluster), Statement::Accept(None)],
                ] {
                    b.add(NfListObject::Rule(rule(t, FORWARD_CHAIN, expr)));
                }
            }
        }
        b.to_nftables()
    }

    /// Make the tables be as they should, rebuilding them atomically when
    /// they are missing or differ from what we installed last. Returns what
    /// was repaired (empty when nothing was).
    pub fn ensure(&self) -> Result<Vec<String>, NftError> {
        let now = self.list_tables()?;
        let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        let why = match (&now, installed.as_ref()) {
            (Some(now), Some(want)) if now == want => return Ok(Vec::new()),
            (None, _) => format!("table ip {TABLE_V4} or ip6 {TABLE_V6} was missing"),
            (Some(_), None) => format!("tables ip {TABLE_V4} and ip6 {TABLE_V6} (re)built at start"),
            (Some(now), Some(want)) => format!("the tables had changed: {}", describe_change(want, now)),
        };
        let fully_random = self.uses_fully_random();
        run_batch(&self.nft, &self.batch(fully_random), false)?;
        // The read-back is what later passes compare with, so it must be
        // our layout: someone flushing or adding a rule between our
        // transaction and this listing would otherwise be taken as the
        // layout and never repaired. A listing with other counts than the
        // batch built is not recorded, and the next pass rebuilds.
        *installed = self.list_tables()?.filter(|now| object_counts(now) == self.expected_counts());
        Ok(vec![why])
    }

    /// (chains, rules) that [`Self::batch`] puts into the two tables.
    fn expected_counts(&self) -> (usize, usize) {
        let families = 1 + usize::from(self.v6.is_some());
        let (masq, forward) = (usize::from(self.masq), usize::from(self.forward));
        (families * (masq + forward), families * (POSTRTG_RULES * masq + FORWARD_RULES * forward))
    }

    /// Both tables' chains and rules, one list; None when either is missing.
    fn list_tables(&self) -> Result<Option<serde_json::Value>, NftError> {
        let (Some(v4), Some(v6)) = (list_table(&self.nft, "ip", TABLE_V4)?, list_table(&self.nft, "ip6", TABLE_V6)?) else {
            return Ok(None);
        };
        let mut all = v4.as_array().cloned().unwrap_or_default();
        all.extend(v6.as_array().cloned().unwrap_or_default());
        Ok(Some(serde_json::Value::Array(all)))
    }

    /// Delete both tables (what flanneld does on exit and `cleanup` does).
    pub fn remove(&self) -> Result<(), NftError> {
        remove_all_with(&self.nft)
    }

    /// Re-ensure every `interval` on the tokio runtime; `on_result(true)`
    /// after every good pass, `(false)` after a failed one.
    pub fn spawn_resync<F>(&self, interval: Duration, on_result: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(bool) + Send + Sync + 'static,
    {
        super::masquerade::spawn_resync_loop("nftables", interval, self.clone(), NftRules::ensure, on_result)
    }
}

/// flanneld's postrtg rules for one family: `cluster` (Network or
/// IPv6Network) and our lease `pod` in it.
fn postrtg_rules(cluster: IpNet, pod: IpNet, fully_random: bool) -> Vec<Vec<Statement<'static>>> {
    let (c, p) = (cluster, pod);
    let multicast: IpNet = match cluster {
        IpNet::V4(_) => "224.0.0.0/4",
        IpNet::V6(_) => "ff00::/8",
    }
    .parse()
    .expect("constant");
    let masquerade = || {
        Statement::Masquerade(fully_random.then(|| NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some(HashSet::from([NATFlag::FullyRandom])),
        }))
    };
    let ret = || Statement::Return(None);
    use Operator::{EQ, NEQ};
    vec![
        vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark })),
                right: Expression::Number(KUBE_PROXY_MARK),
                op: EQ,
            }),
            ret(),
        ],
        vec![ip_match("saddr", EQ, p), ip_match("daddr", EQ, c), ret()],
        vec![ip_match("saddr", EQ, c), ip_match("daddr", EQ, p), ret()],
        vec![ip_match("saddr", NEQ, p), ip_match("daddr", EQ, c), ret()],
        vec![ip_match("saddr", EQ, c), ip_match("daddr", NEQ, multicast), masquerade()],
        vec![ip_match("saddr", NEQ, c), ip_match("daddr", EQ, c), masquerade()],
    ]
}

/// Delete flanneld's / our nftables tables (both families). Fine when they
/// are absent. `nft` is the command argv (normally `["nft"]`).
pub fn remove_all_with<S: AsRef<str>>(nft: &[S]) -> Result<(), NftError> {
    let argv: Vec<String> = nft.iter().map(|s| s.as_ref().to_owned()).collect();
    let mut b = Batch::new();
    for (family, name) in [(NfFamily::IP, TABLE_V4), (NfFamily::IP6, TABLE_V6)] {
        b.add(NfListObject::Table(table(family, name)));
        b.delete(NfListObject::Table(table(family, name)));
    }
    run_batch(&argv, &b.to_nftables(), false)
}

/// [`remove_all_with`] using the `nft` binary.
pub fn remove_all() -> Result<(), NftError> {
    remove_all_with(&["nft"])
}

/// Whether the table exists (for callers that want to say so).
pub fn table_exists<S: AsRef<str>>(nft: &[S], family: &str, name: &str) -> Result<bool, NftError> {
    let argv: Vec<String> = nft.iter().map(|s| s.as_ref().to_owned()).collect();
    Ok(list_table(&argv, family, name)?.is_some())
}

fn table(family: NfFamily, name: &'static str) -> Table<'static> {
    Table { family, name: Cow::Borrowed(name), handle: None }
}

/// One of the two tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TableRef {
    V4,
    V6,
}

impl TableRef {
    fn family(self) -> NfFamily {
        match self {
            TableRef::V4 => NfFamily::IP,
            TableRef::V6 => NfFamily::IP6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TableRef::V4 => TABLE_V4,
            TableRef::V6 => TABLE_V6,
        }
    }
}

fn base_chain(t: TableRef, name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: t.family(),
        table: Cow::Borrowed(t.name()),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

fn rule(t: TableRef, chain: &'static str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: t.family(),
        table: Cow::Borrowed(t.name()),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        ..Rule::default()
    }
}

/// `ip <field> [!=] <net>` (`ip6 ...` for an IPv6 net)
fn ip_match(field: &'static str, op: Operator, net: IpNet) -> Statement<'static> {
    let protocol = if net.addr().is_ipv4() { "ip" } else { "ip6" };
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        }))),
        right: Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
            len: u32::from(net.prefix_len()),
        })),
        op,
    })
}

fn command_line(argv: &[String], extra: &[&str]) -> String {
    argv.iter().map(String::as_str).chain(extra.iter().copied()).collect::<Vec<_>>().join(" ")
}

/// Run one JSON transaction (`-c`: only check it).
fn run_batch(argv: &[String], batch: &Nftables, check_only: bool) -> Result<(), NftError> {
    let mut extra = vec![];
    if check_only {
        extra.push("-c");
    }
    extra.extend(["-j", "-f", "-"]);
    let payload = serde_json::to_string(batch)?;
    // The nftables crate's apply helper lets nft's stderr through to ours
    // and reports only "failed"; run nft here to keep the reason.
    let (program, pre) = argv.split_first().expect("nft argv is never empty");
    let mut child = Command::new(program)
        .args(pre)
        .args(&extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn { program: program.clone(), source })?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(payload.as_bytes())
            .map_err(|source| NftError::Spawn { program: program.clone(), source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NftError::Spawn { program: program.clone(), source })?;
    if !out.status.success() {
        return Err(NftError::Failed {
            command: command_line(argv, &extra),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// The table's chains and rules as nft lists them, handles left out; None
/// when the table does not exist.
fn list_table(argv: &[String], family: &str, name: &str) -> Result<Option<serde_json::Value>, NftError> {
    let extra = ["-j", "list", "table", family, name];
    let (program, pre) = argv.split_first().expect("nft argv is never empty");
    let out = Command::new(program)
        .args(pre)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NftError::Spawn { program: program.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // "Error: No such file or directory" / "Could not process rule: ..."
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(NftError::Failed {
            command: command_line(argv, &extra),
            status: out.status,
            stderr: stderr.trim().to_owned(),
        });
    }
    // Compared as plain JSON rather than the crate's types: a rule someone
    // else put in our table may use an expression the crate cannot parse,
    // and it must still be seen (and then replaced).
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut items = Vec::new();
    for obj in doc["nftables"].as_array().into_iter().flatten() {
        let Some((kind, inner)) = obj.as_object().and_then(|o| o.iter().next()) else { continue };
        if kind == "metainfo" || kind == "table" {
            continue;
        }
        let mut inner = inner.clone();
        if let Some(o) = inner.as_object_mut() {
            o.remove("handle");
        }
        items.push(serde_json::json!({ kind.clone(): inner }));
    }
    Ok(Some(serde_json::Value::Array(items)))
}

/// Rules in each family's postrtg chain ([`postrtg_rules`]) and forward chain.
const POSTRTG_RULES: usize = 6;
const FORWARD_RULES: usize = 2;

/// (chains, rules) in a listing of [`list_table`]s.
fn object_counts(listing: &serde_json::Value) -> (usize, usize) {
    let count = |kind: &str| listing.as_array().map_or(0, |a| a.iter().filter(|o| o.get(kind).is_some()).count());
    (count("chain"), count("rule"))
}

/// "3 of 8 objects" style summary for the repair log.
fn describe_change(want: &serde_json::Value, now: &serde_json::Value) -> String {
    let len = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
    let rules = |v: &serde_json::Value| {
        v.as_array().map_or(0, |a| a.iter().filter(|o| o.get("rule").is_some()).count())
    };
    format!(
        "{} chain(s)/rule(s) with {} rule(s), expected {} with {}",
        len(now),
        rules(now),
        len(want),
        rules(want)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_has_flannels_rules_in_order() {
        let r = NftRules::new("10.42.0.0/16".parse().unwrap(), "10.42.3.1/24".parse().unwrap(), true, true);
        let json = serde_json::to_value(r.batch(true)).unwrap();
        let text = json.to_string();
        // postrtg before forward, as flanneld creates them
        let p = text.find("\"postrtg\"").unwrap();
        let f = text.find("\"forward\"").unwrap();
        assert!(p < f);
        assert!(text.contains("\"fully-random\""));
        assert!(text.contains("\"10.42.3.0\""), "lease host bits cleared: {text}");
        let rules: Vec<_> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["add"].get("rule").is_some())
            .collect();
        assert_eq!(rules.len(), 8);
        let no_masq = NftRules::new("10.42.0.0/16".parse().unwrap(), "10.42.3.0/24".parse().unwrap(), false, true)
            .with_masq(false);
        let text = serde_json::to_string(&no_masq.batch(false)).unwrap();
        assert!(!text.contains("postrtg") && !text.contains("fully-random"));
    }

    #[test]
    fn dual_stack_fills_the_ip6_table_with_the_same_rules() {
        let r = NftRules::new("10.42.0.0/16".parse().unwrap(), "10.42.3.1/24".parse().unwrap(), true, true)
            .with_ipv6(Some(("fd42::/48".parse().unwrap(), "fd42:0:0:3::1/64".parse().unwrap())));
        let json = serde_json::to_value(r.batch(true)).unwrap();
        let rules: Vec<&serde_json::Value> =
            json["nftables"].as_array().unwrap().iter().filter_map(|o| o["add"].get("rule")).collect();
        let v6: Vec<&&serde_json::Value> = rules.iter().filter(|r| r["table"] == TABLE_V6).collect();
        assert_eq!((rules.len(), v6.len()), (16, 8));
        assert!(v6.iter().all(|r| r["family"] == "ip6"));
        let text = serde_json::to_string(&v6).unwrap();
        assert!(text.contains("\"ff00::\"") && !text.contains("224.0.0.0"), "{text}");
        assert!(text.contains("\"fd42:0:0:3::\"") && text.contains("\"ip6\""), "{text}");
    }

    /// What `ensure` accepts as a read-back is what `batch` builds, for
    /// every combination of options.
    #[test]
    fn expected_counts_are_what_the_batch_adds() {
        for (masq, forward, v6) in [(true, true, false), (true, false, true), (false, true, true), (true, true, true)] {
            let r = NftRules::new("10.42.0.0/16".parse().unwrap(), "10.42.3.1/24".parse().unwrap(), true, forward)
                .with_masq(masq)
                .with_ipv6(v6.then(|| ("fd42::/48".parse().unwrap(), "fd42:0:0:3::1/64".parse().unwrap())));
            let json = serde_json::to_value(r.batch(false)).unwrap();
            let adds = |kind: &str| json["nftables"].as_array().unwrap().iter().filter(|o| o["add"].get(kind).is_some()).count();
            assert_eq!((adds("chain"), adds("rule")), r.expected_counts(), "masq {masq} forward {forward} v6 {v6}");
        }
    }

    #[test]
    fn a_listing_is_counted_by_chains_and_rules() {
        let listing = serde_json::json!([{"chain": {"name": "postrtg"}}, {"rule": {}}, {"rule": {}}, {"set": {}}]);
        assert_eq!(object_counts(&listing), (1, 2));
        assert_eq!(object_counts(&serde_json::json!([])), (0, 0));
    }
}
