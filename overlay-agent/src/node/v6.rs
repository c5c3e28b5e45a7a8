//! The IPv6 half of the daemon (dual stack, flannel's `EnableIPv6`): the
//! same points of the lease and endpoint handling as IPv4's in `node.rs`,
//! writing the v6 maps (`datapath::maps6`) and overlay0's v6 address and
//! route (`host::tunnel_v6`). A node without IPv6 in its config has no
//! [`NodeV6`] and nothing here runs.
//!
//! Leases are keyed by their key's subnets ([`LeaseId`]) as in `node.rs`
//! (an IPv6-only lease's IPv4 subnet is the empty `0.0.0.0/0` they all
//! share); [`NodeV6::installed`] remembers which v6 subnet each one put
//! into the maps, so a removal or a lease losing its v6 half removes
//! exactly that. On an IPv6-only node (`EnableIPv4: false`) this is the
//! whole data path; `node.rs` leaves the IPv4 side unconfigured.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv6Addr,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use ipnet::Ipv6Net;
use log::{debug, info, warn};

use super::{combined, Node};
use crate::{
    config::{BackendType, NetworkConfig},
    datapath::{loader, DatapathMaps6, Mode, NodeConfig6, Peer6, PodEndpoint6, PinLayout},
    etcd::{registry::format_mac, Lease, LeaseId},
    host::{
        blackhole,
        iface::{Uplink, UplinkV6},
        masq::{self, MasqRules},
        masquerade::MasqOptions,
        pods::Pod6,
        tunnel_device::{self, Family, TUNNEL_DEVICE},
        tunnel_v6::{self, TunnelPlan6},
    },
};

/// The outer IPv6 + UDP + VXLAN + inner Ethernet headers.
pub(super) const VXLAN6_OVERHEAD: u32 = overlay_common::VXLAN6_OVERHEAD as u32;

/// This node's IPv6 side.
pub(super) struct NodeV6 {
    uplink: UplinkV6,
    /// `BackendV6Data`'s VtepMAC.
    vtep_mac: [u8; 6],
    plan: TunnelPlan6,
    /// The v6 subnet each lease put into the maps.
    installed: BTreeMap<LeaseId, Ipv6Net>,
    /// v6 halves refused, with why (one warning per change).
    skipped: HashMap<LeaseId, String>,
    /// flanneld's ip6tables rules for our v6 lease and their resync.
    masq: Option<(MasqRules, tokio::task::JoinHandle<()>)>,
}

impl NodeV6 {
    /// The v6 side for our lease, or None without IPv6 in the config.
    pub(super) fn new(cfg: &NetworkConfig, own: &Lease, uplink: &Uplink, vtep_mac: [u8; 6], underlay_mtu: u32) -> Result<Option<NodeV6>> {
        let Some(v6) = &cfg.ipv6 else { return Ok(None) };
        let (Some(up6), Some(subnet)) = (uplink.ipv6, own.ipv6_subnet) else {
            bail!("IPv6 is enabled but our lease {} or the uplink {} has no IPv6 part", own.id(), uplink.name);
        };
        let route_mtu = underlay_mtu.checked_sub(VXLAN6_OVERHEAD).context("uplink MTU below 70 for VXLAN over IPv6")?;
        Ok(Some(NodeV6 {
            uplink: up6,
            vtep_mac,
            plan: TunnelPlan6 { subnet, cluster: v6.network, route_mtu },
            installed: BTreeMap::new(),
            skipped: HashMap::new(),
            masq: None,
        }))
    }

    /// The v6 VtepMAC that survives restarts (see `stable_vtep_mac`): our
    /// lease's `BackendV6Data`, else the pinned `CONFIG6`'s, else a new one
    /// unlike the v4 VtepMAC.
    pub(super) fn stable_vtep_mac(own: Option<&Lease>, pins: &PinLayout, v4_mac: [u8; 6]) -> [u8; 6] {
        let pinned = DatapathMaps6::open_pinned(pins).ok().and_then(|m| m.config().ok().flatten()).map(|c| c.vtep_mac);
        super::stable_vtep_mac(own.and_then(|l| l.attrs.v6_vtep_mac), pinned, Some(v4_mac))
    }
}

impl Node {
    /// This node's v6 side as the programs see it.
    fn node_config6(&self, v6: &NodeV6) -> Result<NodeConfig6> {
        let tunnel = loader::ifindex(TUNNEL_DEVICE).with_context(|| format!("{TUNNEL_DEVICE} has no ifindex"))?;
        let bridge = self.bridge.bridge.as_ref();
        Ok(NodeConfig6 {
            local_ip: v6.uplink.iface_addr,
            public_ip: v6.uplink.public_ip,
            network: v6.plan.cluster,
            subnet: v6.plan.subnet,
            vni: self.cfg.backend.vni,
            port: self.cfg.backend.port,
            tunnel_ifindex: tunnel,
            uplink_ifindex: self.uplink.index,
            uplink_mtu: self.underlay_mtu,
            bridge_ifindex: bridge.map_or(0, |b| b.index),
            vtep_mac: v6.vtep_mac,
            bridge_mac: bridge.map_or([0; 6], |b| b.mac),
            kernel_forwarding: self.args.kernel_forwarding,
        })
    }

    /// overlay0's v6 address and route and `CONFIG6` for our (possibly
    /// moved) lease; called where the IPv4 config is written.
    pub(super) async fn apply_own_lease_v6(&mut self) -> Result<()> {
        let Some(mut v6) = self.v6.take() else { return Ok(()) };
        let result = self.try_apply_own_lease_v6(&mut v6).await;
        self.v6 = Some(v6);
        result
    }

    async fn try_apply_own_lease_v6(&mut self, v6: &mut NodeV6) -> Result<()> {
        let Some(subnet) = self.own.ipv6_subnet else {
            bail!("our lease {} lost its IPv6 subnet", self.own.id());
        };
        let mut failed = Vec::new();
        v6.plan.subnet = subnet;
        match loader::ifindex(TUNNEL_DEVICE) {
            Some(index) => {
                if let Err(e) = tunnel_v6::ensure(&self.handle, index, &v6.plan).await {
                    failed.push(anyhow::Error::new(e).context(format!("setting up {TUNNEL_DEVICE} for IPv6")));
                }
            }
            None => failed.push(anyhow::anyhow!("{TUNNEL_DEVICE} is missing: no IPv6 address or route on it")),
        }
        if self.args.ip_blackhole_route {
            if let Err(e) = blackhole::ensure(&self.handle, subnet).await {
                failed.push(anyhow::Error::new(e).context("adding the blackhole route for our IPv6 lease"));
            }
        }
        match self.node_config6(v6) {
            Ok(c) => {
                if let Err(e) = self.datapath.maps6.set_config(&c) {
                    failed.push(anyhow::Error::new(e).context("updating the IPv6 config map"));
                }
            }
            Err(e) => failed.push(e),
        }
        combined(failed)
    }

    /// A node without IPv6 in its config: what an earlier dual-stack run
    /// left goes (overlay0's v6 address and IPv6Network route, the v6
    /// peers, endpoints and `CONFIG6`, the ip6tables rules), so the v6
    /// programs pass everything to the kernel and the host no longer
    /// routes the old IPv6Network into overlay0.
    pub(super) async fn remove_v6_leftovers(&mut self) -> Result<()> {
        if self.v6.is_some() {
            return Ok(());
        }
        let mut failed = Vec::new();
        if let Some(index) = loader::ifindex(TUNNEL_DEVICE) {
            match tunnel_device::clear_family(&self.handle, index, Family::V6).await {
                Ok(removed) => {
                    for gone in removed {
                        info!("removed {gone} from {TUNNEL_DEVICE} (IPv6 is disabled)");
                    }
                }
                Err(e) => failed.push(anyhow::Error::new(e).context(format!("removing IPv6 leftovers from {TUNNEL_DEVICE}"))),
            }
        }
        let maps6 = &mut self.datapath.maps6;
        match maps6.reconcile_peers(&BTreeMap::new()) {
            Ok(c) if c.removed > 0 => info!("removed {} IPv6 peers of an earlier run (IPv6 is disabled)", c.removed),
            Ok(_) => {}
            Err(e) => failed.push(anyhow::Error::new(e).context("emptying the IPv6 peer maps")),
        }
        if let Err(e) = maps6.reconcile_endpoints(&[]).and_then(|_| maps6.clear_config()) {
            failed.push(anyhow::Error::new(e).context("emptying the IPv6 endpoints and config"));
        }
        // Without ip6tables there is nothing of it to remove.
        if let Err(e) = tokio::task::block_in_place(|| masq::remove_all_with(&["ip6tables"])) {
            warn!("removing the ip6tables rules of an earlier IPv6 run: {e:#}");
        }
        combined(failed)
    }

    /// `--ip-masq` and `--iptables-forward-rules` for IPv6, as flanneld's
    /// iptables layout has them: the same FLANNEL-POSTRTG / FLANNEL-FWD
    /// rules through ip6tables for the IPv6Network and our v6 lease
    /// (re-made when the lease moves, then kept in place by a resync).
    pub(super) fn apply_masq_v6(&mut self, opts: MasqOptions) -> Result<()> {
        let interval = Duration::from_secs(self.args.iptables_resync.max(1));
        let Some(v6) = self.v6.as_mut() else { return Ok(()) };
        if let Some((_, task)) = v6.masq.take() {
            task.abort();
        }
        self.health.set_masq6_installed(true);
        if opts.nftables {
            // flannel-ipv6 is built with flannel-ipv4 (`nft_ipv6`).
            return Ok(());
        }
        if !opts.ip_masq && !opts.forward {
            return Ok(());
        }
        let rules = MasqRules::new_v6(v6.plan.cluster, v6.plan.subnet, opts.fully_random, opts.forward).with_masq(opts.ip_masq);
        // /readyz follows the ip6tables rules as it follows iptables'.
        self.health.set_masq6_installed(false);
        let health = self.health.clone();
        let task = rules.spawn_resync_reporting(interval, move |ok| health.set_masq6_installed(ok));
        let result = tokio::task::block_in_place(|| rules.ensure());
        v6.masq = Some((rules, task));
        match result {
            Ok(_) => {
                info!("ip6tables rules installed");
                self.health.set_masq6_installed(true);
                Ok(())
            }
            Err(e) => Err(e.context("installing the ip6tables rules")),
        }
    }

    /// IPv6Network and our v6 lease for the nftables layout's `flannel-ipv6`
    /// table (None without IPv6: the table stays empty).
    pub(super) fn nft_ipv6(&self) -> Option<(Ipv6Net, Ipv6Net)> {
        self.v6.as_ref().map(|v6| (v6.plan.cluster, v6.plan.subnet))
    }

    /// The bridge changed: `CONFIG6` names the new one.
    pub(super) fn refresh_config6(&mut self) {
        let Some(v6) = &self.v6 else { return };
        if let Err(e) = self.node_config6(v6).and_then(|c| Ok(self.datapath.maps6.set_config(&c)?)) {
            warn!("updating the IPv6 config for the pod bridge: {e:#}");
        }
    }

    /// Re-asserts overlay0's v6 route (with the cluster route's resync).
    pub(super) async fn resync_host_v6(&mut self) {
        let (Some(v6), Some(index)) = (&self.v6, loader::ifindex(TUNNEL_DEVICE)) else { return };
        if let Err(e) = tunnel_v6::ensure(&self.handle, index, &v6.plan).await {
            warn!("re-asserting the IPv6 route via {TUNNEL_DEVICE}: {e}");
        }
        if self.args.ip_blackhole_route {
            if let Err(e) = blackhole::ensure(&self.handle, v6.plan.subnet).await {
                warn!("re-asserting the blackhole route for {}: {e}", v6.plan.subnet);
            }
        }
    }

    /// The v6 map entry for a lease's v6 half, or None (with a warning
    /// naming the lease when it is refused rather than just v4-only).
    fn peer6_for(&mut self, lease: &Lease) -> Option<Peer6> {
        let v6 = self.v6.as_mut()?;
        if lease.id() == self.own.id() {
            return None;
        }
        let (Some(subnet), Some(public_ip)) = (lease.ipv6_subnet, lease.attrs.public_ipv6) else {
            v6.skipped.remove(&lease.id());
            return None;
        };
        let backend = self.cfg.backend.kind.as_str();
        let vxlan = self.cfg.backend.kind == BackendType::Vxlan;
        let problem = if !v6.plan.cluster.contains(&subnet) {
            Some(format!("IPv6 subnet outside IPv6Network {}", v6.plan.cluster))
        } else if v6.plan.subnet.contains(&subnet) || subnet.contains(&v6.plan.subnet) {
            Some(format!("overlaps our IPv6 lease {}", v6.plan.subnet))
        } else if public_ip == v6.uplink.public_ip {
            Some(format!("claims our PublicIPv6 {public_ip}"))
        } else if lease.attrs.backend_type != backend {
            Some(format!("backend type {:?}, this network is {backend}", lease.attrs.backend_type))
        } else if vxlan && lease.attrs.v6_vtep_mac.is_none() {
            Some("vxlan lease without a BackendV6Data VtepMAC".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            if v6.skipped.get(&lease.id()) != Some(&problem) {
                warn!("ignoring the IPv6 half {subnet} of lease {} from {public_ip}: {problem}", lease.id());
                v6.skipped.insert(lease.id(), problem);
            }
            return None;
        }
        v6.skipped.remove(&lease.id());
        let mode = match self.cfg.backend.kind {
            BackendType::HostGw => Mode::Direct,
            BackendType::Vxlan if self.cfg.backend.direct_routing && on_uplink_prefix(&v6.uplink, public_ip) => Mode::Direct,
            BackendType::Vxlan => Mode::Vxlan,
        };
        Some(Peer6 { subnet, public_ip, vtep_mac: lease.attrs.v6_vtep_mac.unwrap_or([0; 6]), mode })
    }

    /// A Snapshot: the v6 maps become exactly what the leases' v6 halves say.
    pub(super) fn snapshot_v6(&mut self, leases: &[Lease]) {
        if self.v6.is_none() {
            return;
        }
        let mut wanted = BTreeMap::new();
        let mut installed = BTreeMap::new();
        for lease in leases {
            if let Some(peer) = self.peer6_for(lease) {
                installed.insert(lease.id(), peer.subnet);
                wanted.insert(peer.subnet, peer);
            }
        }
        let Some(v6) = self.v6.as_mut() else { return };
        v6.installed = installed;
        if !v6.skipped.is_empty() {
            let ids: std::collections::HashSet<LeaseId> = leases.iter().map(Lease::id).collect();
            v6.skipped.retain(|id, _| ids.contains(id));
        }
        let before: BTreeMap<Ipv6Net, Peer6> = match self.datapath.maps6.peers() {
            Ok(peers) => peers.into_iter().map(|p| (p.subnet, p)).collect(),
            Err(e) => {
                warn!("reading the installed IPv6 peers: {e}");
                BTreeMap::new()
            }
        };
        match self.datapath.maps6.reconcile_peers(&wanted) {
            Ok(c) if c == Default::default() => {}
            Ok(c) => {
                for peer in wanted.values().filter(|p| before.get(&p.subnet) != Some(*p)) {
                    log_installed6(peer, before.contains_key(&peer.subnet));
                }
                for (subnet, old) in before.iter().filter(|(s, _)| !wanted.contains_key(*s)) {
                    info!("IPv6 peer removed: {subnet} (was via {})", old.public_ip);
                }
                info!("IPv6 peers resynced: {} subnets written, {} removed, {} senders changed", c.written, c.removed, c.senders);
            }
            Err(e) => warn!("resyncing the IPv6 peer maps: {e}"),
        }
    }

    /// A lease added or changed: its v6 half installed, changed or removed.
    pub(super) fn apply_lease_v6(&mut self, lease: &Lease) {
        let Some(peer) = self.peer6_for(lease) else {
            self.remove_peer_v6(lease.id());
            return;
        };
        let Some(v6) = self.v6.as_mut() else { return };
        // The lease's v6 subnet changed: the old one goes.
        if let Some(old) = v6.installed.insert(lease.id(), peer.subnet).filter(|old| *old != peer.subnet) {
            remove6(&mut self.datapath.maps6, old);
        }
        // The index, not a walk of SUBNETS6: this runs for every lease event.
        let old = match self.datapath.maps6.installed_peers() {
            Ok(peers) => peers.get(&peer.subnet).cloned(),
            Err(e) => {
                warn!("installing IPv6 peer {}: {e}", peer.subnet);
                return;
            }
        };
        if old == Some(peer) {
            return;
        }
        match self.datapath.maps6.upsert_peer(&peer) {
            Ok(()) => log_installed6(&peer, old.is_some()),
            Err(e) => warn!("installing IPv6 peer {}: {e}", peer.subnet),
        }
    }

    /// The lease `id` is gone (or has no valid v6 half).
    pub(super) fn remove_peer_v6(&mut self, id: LeaseId) {
        let Some(v6) = self.v6.as_mut() else { return };
        if let Some(old) = v6.installed.remove(&id) {
            remove6(&mut self.datapath.maps6, old);
        }
    }

    /// After our lease moved: every lease's v6 half is looked at again
    /// (one refused as overlapping our old v6 lease may be valid now).
    pub(super) fn recheck_peers_v6(&mut self) {
        if self.v6.is_none() {
            return;
        }
        let leases: Vec<Lease> = self.leases.values().cloned().collect();
        for lease in &leases {
            self.apply_lease_v6(lease);
        }
    }

    /// Our pods' v6 addresses into `ENDPOINTS6`.
    pub(super) fn sync_endpoints_v6(&mut self, pods: &[Pod6]) {
        if self.v6.is_none() {
            return;
        }
        let endpoints: Vec<PodEndpoint6> =
            pods.iter().map(|p| PodEndpoint6 { ip: p.ip, ifindex: p.veth_ifindex, mac: p.mac }).collect();
        match self.datapath.maps6.reconcile_endpoints(&endpoints) {
            Ok((0, 0)) => {}
            Ok((changed, removed)) => debug!("IPv6 endpoints: {changed} added or changed, {removed} removed"),
            Err(e) => warn!("updating the IPv6 endpoint map: {e}"),
        }
    }

    /// Our v6 lease, for the pod scan.
    pub(super) fn own_subnet_v6(&self) -> Option<Ipv6Net> {
        self.v6.as_ref().map(|v6| v6.plan.subnet)
    }
}

fn remove6(maps6: &mut DatapathMaps6, subnet: Ipv6Net) {
    // The index, not a walk of SUBNETS6: a mass expiry removes thousands.
    let old: Option<Ipv6Addr> = match maps6.installed_peers() {
        Ok(peers) => peers.get(&subnet).map(|p| p.public_ip),
        Err(e) => {
            warn!("removing IPv6 peer {subnet}: {e}");
            return;
        }
    };
    let Some(old) = old else { return };
    match maps6.remove_peer(subnet) {
        Ok(()) => info!("IPv6 peer removed: {subnet} (was via {old})"),
        Err(e) => warn!("removing IPv6 peer {subnet}: {e}"),
    }
}

/// DirectRouting for an IPv6 peer: its PublicIPv6 is inside our uplink's
/// own IPv6 prefix, so it is on our link and reachable without a router.
/// flannel asks the kernel instead (`ip.DirectRouting`: one route to the
/// address, no gateway); the two agree unless a more specific route sends
/// part of the uplink's prefix through a router. Deciding from the prefix
/// keeps this synchronous: a lease event needs no netlink round trip.
fn on_uplink_prefix(uplink: &UplinkV6, peer: Ipv6Addr) -> bool {
    Ipv6Net::new(uplink.iface_addr, uplink.prefix_len).is_ok_and(|net| net.trunc().contains(&peer))
}

fn log_installed6(peer: &Peer6, replaced: bool) {
    let verb = if replaced { "changed" } else { "added" };
    info!(
        "IPv6 peer {verb}: {} via {} ({}, VtepMAC {})",
        peer.subnet,
        peer.public_ip,
        peer.mode,
        format_mac(&peer.vtep_mac)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_direct_only_inside_the_uplinks_own_prefix() {
        let uplink = UplinkV6 { iface_addr: "fd00:77::10".parse().unwrap(), prefix_len: 64, public_ip: "fd00:77::10".parse().unwrap() };
        assert!(on_uplink_prefix(&uplink, "fd00:77::11".parse().unwrap()));
        assert!(on_uplink_prefix(&uplink, "fd00:77::ffff:1".parse().unwrap()));
        assert!(!on_uplink_prefix(&uplink, "fd00:78::11".parse().unwrap()));
        assert!(!on_uplink_prefix(&uplink, "fd00:77:0:1::11".parse().unwrap()));
        // A /128 on the uplink: nothing else is on the link by prefix.
        let lone = UplinkV6 { prefix_len: 128, ..uplink };
        assert!(!on_uplink_prefix(&lone, "fd00:77::11".parse().unwrap()));
    }
}
