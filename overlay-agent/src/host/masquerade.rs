//! Which of flanneld's two rule layouts the node gets: iptables chains
//! ([`super::masq`], the default) or nftables tables ([`super::nftables`],
//! net-conf `"EnableNFTables": true`). The daemon picks one here and only
//! talks to [`Masquerade`].
//!
//! Switching layouts on a node (flanneld's or ours, in either direction)
//! leaves the other layout's rules behind; they are removed at start, as
//! flanneld's newer releases do, so a node never masquerades through two
//! sets of rules (one of them for a lease it no longer holds).
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{masq, nftables};

/// The rules for one network and lease, in the layout the config asks for.
#[derive(Debug, Clone)]
pub enum Masquerade {
    Iptables(masq::MasqRules),
    Nftables(nftables::NftRules),
}

/// What the daemon's flags and the net-conf say about the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqOptions {
    /// net-conf EnableNFTables
    pub nftables: bool,
    /// --ip-masq
    pub ip_masq: bool,
    /// not --ip-masq-fully-random-disable
    pub fully_random: bool,
    /// --iptables-forward-rules
    pub forward: bool,
}

impl Masquerade {
    /// The rules for `cluster` and our lease `pod_subnet`, or None when
    /// there is nothing to install (iptables mode with neither --ip-masq
    /// nor forward rules; nftables mode always has its tables, as
    /// flanneld creates them at start whatever the flags).
    pub fn new(opts: MasqOptions, cluster: Ipv4Net, pod_subnet: Ipv4Net) -> Option<Masquerade> {
        if opts.nftables {
            Some(Masquerade::Nftables(
                nftables::NftRules::new(cluster, pod_subnet, opts.fully_random, opts.forward).with_masq(opts.ip_masq),
            ))
        } else if opts.ip_masq || opts.forward {
            Some(Masquerade::Iptables(
                masq::MasqRules::new(cluster, pod_subnet, opts.fully_random, opts.forward).with_masq(opts.ip_masq),
            ))
        } else {
            None
        }
    }

    /// Dual stack in the nftables layout: `flannel-ipv6` gets the rules for
    /// IPv6Network and our v6 lease (`v6`), built with the IPv4 table. The
    /// iptables layout's IPv6 rules are separate (ip6tables, `node::v6`).
    pub fn with_ipv6(self, v6: Option<(Ipv6Net, Ipv6Net)>) -> Masquerade {
        match self {
            Masquerade::Nftables(r) => Masquerade::Nftables(r.with_ipv6(v6)),
            other => other,
        }
    }

    /// Remove the other layout's rules (see the module doc). A missing
    /// binary for the other layout means there is nothing of it to remove.
    pub fn remove_other_layout(nftables_mode: bool) {
        if nftables_mode {
            match masq::remove_all() {
                Ok(()) => {}
                Err(e) => log::warn!("removing flannel's iptables rules from an iptables-mode run: {e:#}"),
            }
        } else {
            match nftables::remove_all() {
                Ok(()) => {}
                Err(nftables::NftError::Spawn { .. }) => {
                    log::debug!("no nft binary: no nftables-mode tables to remove")
                }
                Err(e) => log::warn!("removing flannel's nftables tables from an nftables-mode run: {e}"),
            }
        }
    }

    /// Install or repair; returns what was repaired.
    pub fn ensure(&self) -> Result<Vec<String>> {
        match self {
            Masquerade::Iptables(r) => r.ensure().context("installing the iptables rules"),
            Masquerade::Nftables(r) => r.ensure().context("installing the nftables tables"),
        }
    }

    /// Keep them in place every `interval`; `on_result` hears whether each
    /// pass succeeded (readiness follows it).
    pub fn spawn_resync<F>(&self, interval: Duration, on_result: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(bool) + Send + Sync + 'static,
    {
        match self {
            Masquerade::Iptables(r) => r.spawn_resync_reporting(interval, on_result),
            Masquerade::Nftables(r) => r.spawn_resync(interval, on_result),
        }
    }

    pub fn layout(&self) -> &'static str {
        match self {
            Masquerade::Iptables(_) => "iptables",
            Masquerade::Nftables(_) => "nftables",
        }
    }
}

/// The resync loop both layouts share: `ensure` every `interval` (the
/// first run is the caller's), off the async workers since it runs a
/// binary; repairs are logged as warnings naming what was wrong.
pub(crate) fn spawn_resync_loop<T, E, R>(
    what: &'static str,
    interval: Duration,
    rules: T,
    ensure: fn(&T) -> Result<Vec<String>, E>,
    on_result: R,
) -> tokio::task::JoinHandle<()>
where
    T: Clone + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    R: Fn(bool) + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tick.tick().await;
            let r = rules.clone();
            let ok = match tokio::task::spawn_blocking(move || ensure(&r)).await {
                Ok(Ok(repairs)) => {
                    if !repairs.is_empty() {
                        log::warn!("{what} rules had to be repaired: {}", repairs.join("; "));
                    }
                    true
                }
                Ok(Err(e)) => {
                    log::error!("{what} resync failed: {e:#}");
                    false
                }
                Err(e) => {
                    log::error!("{what} resync task failed: {e}");
                    false
                }
            };
            on_result(ok);
        }
    })
}
