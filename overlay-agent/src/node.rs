//! The daemon: acquire our lease, set up the tunnel device and the data
//! path, then follow etcd (leases) and the host (which bridge the pods are
//! on, and which pods). Lease events become whole map entries through
//! `datapath::maps`; nothing here parses etcd data or touches BPF directly.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net};
use log::{debug, error, info, warn};
use rtnetlink::Handle;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    cli::{RunArgs, XdpModeArg},
    config::{BackendType, NetworkConfig},
    datapath::{
        loader::{Datapath, DatapathOptions, XdpGuard},
        DatapathMaps, Mode, NodeConfig, Peer, PeerChanges, PinLayout, PodEndpoint, VXLAN_OVERHEAD,
    },
    etcd::{
        registry::format_mac, spawn_config_watch, spawn_lease_keeper, spawn_lease_watch_from, Backoff,
        EtcdSettings, Lease, LeaseAttrs, LeaseEvent, LeaseId, SubnetManager,
    },
    health::{self, condition, Health},
    host::{
        iface::{self, Families, IfaceError, IfaceSelection, Uplink},
        blackhole, leftovers,
        masquerade::{MasqOptions, Masquerade},
        netlink,
        pod_bridge::{self, BridgeScan},
        pods, sysctl,
        tunnel_device::{self, TunnelKind, TunnelPlan, TunnelPlan4, TUNNEL_DEVICE},
    },
    notify,
    subnet_env::{self, SubnetEnv},
};

mod v6;

/// How often the pod bridge, its pods and their veths are looked at again.
const ENDPOINT_SYNC: Duration = Duration::from_secs(1);
/// Every this many endpoint syncs, the cluster route is re-asserted.
const HOST_RESYNC_TICKS: u64 = 5;
/// Lease events taken from the watch at once: a mass expiry arrives as one
/// watch response of thousands of deletes, and taking them one by one cost
/// two thread wake-ups each (the removal of 32,767 peers spent a quarter of
/// its CPU there). Small enough that signals and timers wait at most a few
/// milliseconds.
const EVENT_BATCH: usize = 1024;

pub fn etcd_settings(etcd: &crate::cli::EtcdArgs) -> EtcdSettings {
    EtcdSettings {
        endpoints: etcd.endpoints.clone(),
        prefix: etcd.prefix.clone(),
        keyfile: etcd.keyfile.clone(),
        certfile: etcd.certfile.clone(),
        cafile: etcd.cafile.clone(),
        username: etcd.username.clone(),
        password: etcd.password.clone(),
    }
}

fn iface_selection(args: &RunArgs) -> IfaceSelection {
    IfaceSelection {
        iface: args.iface.clone(),
        iface_regex: args.iface_regex.clone(),
        iface_can_reach: match args.iface_can_reach {
            Some(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        },
        iface_can_reach_v6: match args.iface_can_reach {
            Some(IpAddr::V6(v6)) => Some(v6),
            _ => None,
        },
        public_ip: args.public_ip,
        public_ipv6: args.public_ipv6,
    }
}

/// Our lease's IPv4 subnet when this node runs IPv4: None on an IPv6-only
/// node (`EnableIPv4: false`), whose lease carries flannel's empty
/// `0.0.0.0/0` there, which must never be routed, configured or masqueraded.
fn own_ipv4(cfg: &NetworkConfig, own: &Lease) -> Option<Ipv4Net> {
    own.ipv4_subnet().filter(|_| cfg.enable_ipv4)
}

/// A locally administered, unicast MAC, like the kernel gives flannel.1.
fn random_vtep_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// A VtepMAC that survives restarts: the one our lease in etcd carries,
/// else the pinned data path's, else a new one unlike `other`. The one rule
/// for both of a node's VtepMACs: IPv4's (`BackendData`, from the pinned
/// config) and IPv6's (`BackendV6Data`, which must differ from IPv4's as
/// flannel's two devices' MACs do).
pub(crate) fn stable_vtep_mac(from_lease: Option<[u8; 6]>, pinned: Option<[u8; 6]>, other: Option<[u8; 6]>) -> [u8; 6] {
    from_lease.or(pinned).unwrap_or_else(|| loop {
        let mac = random_vtep_mac();
        if Some(mac) != other {
            break mac;
        }
    })
}

pub async fn run(args: RunArgs) -> Result<()> {
    let handle = netlink::connect()?;
    // Health first: /healthz answers (and /readyz says what it waits for)
    // while etcd is still unreachable, so probes do not kill a waiting agent.
    let pins = PinLayout::new(&args.bpf_pin_dir);
    let health = Health::new(&pins);
    if args.healthz_port != 0 {
        health::spawn(args.healthz_ip, args.healthz_port, health.clone()).await?;
    }
    // A wrong --iface fails the start at once, before etcd answers (a host
    // with only an IPv6 default route is judged once the config is read).
    let early = match iface::select_uplink(&handle, &iface_selection(&args)).await {
        Err(IfaceError::NoDefaultRoute) => None,
        // An uplink without IPv4 serves an IPv6-only config: judged then.
        Err(e @ (IfaceError::NoAddress(_) | IfaceError::NoneUsable { .. })) => {
            let v6_only = Families { ipv4: false, ipv6: true };
            match iface::select_uplink_for(&handle, &iface_selection(&args), v6_only).await {
                Ok(_) => None,
                Err(_) => return Err(anyhow::Error::new(e).context("choosing the uplink interface")),
            }
        }
        other => Some(other.context("choosing the uplink interface")?),
    };

    let settings = etcd_settings(&args.etcd);
    let mgr = Backoff::outage().retry("connecting to etcd", || SubnetManager::new(settings.clone())).await?;
    let cfg = Backoff::outage().retry("reading the network config", || mgr.network_config()).await?;
    // The config says which families the uplink must carry.
    let uplink = match early {
        Some(uplink) if cfg.ipv6.is_none() => uplink,
        _ => {
            let families = Families { ipv4: cfg.enable_ipv4, ipv6: cfg.enable_ipv6 };
            iface::select_uplink_for(&handle, &iface_selection(&args), families)
                .await
                .context("choosing the uplink interface")?
        }
    };
    info!(
        "uplink {} ({}/{}, MTU {}), public IP {}{}",
        uplink.name,
        uplink.iface_addr,
        uplink.prefix_len,
        uplink.mtu,
        uplink.public_ip,
        uplink.ipv6.map(|v| format!(", IPv6 {}/{}, public IPv6 {}", v.iface_addr, v.prefix_len, v.public_ip)).unwrap_or_default()
    );
    let backend = cfg.backend.kind;
    let underlay_mtu = cfg.backend.mtu.unwrap_or(uplink.mtu);
    // With IPv6 on, pods get the MTU a v6 underlay leaves (70 bytes of
    // headers, not 50), so one pod MTU fits both families.
    let overhead = if cfg.ipv6.is_some() { v6::VXLAN6_OVERHEAD } else { VXLAN_OVERHEAD };
    let pod_mtu = match backend {
        BackendType::Vxlan => underlay_mtu.checked_sub(overhead).with_context(|| format!("uplink MTU below {overhead}"))?,
        BackendType::HostGw => underlay_mtu,
    };
    let networks = [cfg.ipv4_network().map(|n| n.to_string()), cfg.ipv6.as_ref().map(|v6| v6.network.to_string())];
    info!("network {} backend {} (pod MTU {pod_mtu})", networks.into_iter().flatten().collect::<Vec<_>>().join(" + "), backend.as_str());
    check_network_against_uplink(&cfg, &uplink)?;

    // One listing of the leases serves the whole start: finding our lease,
    // acquiring it and the lease watch's first Snapshot (at 10,000 leases a
    // listing is ten range requests and ~2 MB).
    let listing_started = std::time::Instant::now();
    let listing = Backoff::outage().retry("listing the leases", || mgr.list()).await?;
    debug!("listed and decoded {} lease keys in {:.3?}", listing.len(), listing_started.elapsed());
    // Our VtepMAC survives restarts: from our lease in etcd, else from the
    // pinned data path, else new.
    let own = Backoff::outage()
        .retry("looking up our lease", || {
            mgr.find_own_lease_for(&listing, uplink.public_ip, uplink.ipv6.map(|v| v.public_ip))
        })
        .await?;
    let vtep_mac = stable_vtep_mac(
        own.as_ref().and_then(|l| l.attrs.vtep_mac),
        DatapathMaps::pinned_vtep_mac(&pins),
        None,
    );
    let vtep_mac6 = v6::NodeV6::stable_vtep_mac(own.as_ref(), &pins, vtep_mac);
    let attrs = LeaseAttrs::for_node(
        backend,
        cfg.backend.vni,
        // IPv6-only: no PublicIP (0.0.0.0) and no BackendData, as flanneld
        // makes no IPv4 device then.
        Some((uplink.public_ip, vtep_mac)).filter(|_| cfg.enable_ipv4),
        uplink.ipv6.filter(|_| cfg.ipv6.is_some()).map(|v| (v.public_ip, vtep_mac6)),
    );
    let previous = subnet_env::read_previous_subnets(&args.subnet_file);
    // A retry after an etcd failure lists afresh: the first attempt may have
    // changed our lease without our seeing the answer.
    let mut start_listing = Some(&listing);
    let lease = Backoff::outage()
        .retry("acquiring a subnet lease", || {
            mgr.acquire_from(start_listing.take(), &cfg, &attrs, previous)
        })
        .await?;
    match own_ipv4(&cfg, &lease) {
        Some(sn) => info!("lease {sn} (VtepMAC {})", format_mac(&vtep_mac)),
        None => info!("lease {} (IPv6-only)", lease.id()),
    }
    let node_v6 = v6::NodeV6::new(&cfg, &lease, &uplink, vtep_mac6, underlay_mtu)?;
    if let Some(sn) = lease.ipv6_subnet {
        info!("IPv6 lease {sn} (VtepMAC {})", format_mac(&vtep_mac6));
    }

    for name in leftovers::remove_flannel_devices(&handle).await? {
        info!("removed {name}");
    }
    let tunnel_plan = tunnel_plan(&cfg, &lease, pod_mtu, vtep_mac);
    tunnel_device::ensure(&handle, &tunnel_plan).await.with_context(|| format!("setting up {TUNNEL_DEVICE}"))?;
    sysctl::ensure_sysctls(&uplink.name)?;
    if node_v6.is_some() {
        sysctl::ensure_ipv6_forwarding()?;
    }

    let datapath = Datapath::install(&DatapathOptions {
        pins,
        uplink: uplink.name.clone(),
        tunnel: TUNNEL_DEVICE.to_string(),
        xdp_guard: match (args.xdp_guard || args.xdp_decap, args.xdp_mode) {
            (false, _) => XdpGuard::Off,
            (true, XdpModeArg::Native) => XdpGuard::Native,
            (true, XdpModeArg::Generic) => XdpGuard::Generic,
        },
        log_drops: args.bpf_log_drops,
    })
    .context("installing the BPF data path")?;

    let status = health.etcd.clone();

    let mut node = Node {
        handle,
        uplink,
        cfg: cfg.clone(),
        datapath,
        bridge: BridgeScan::default(),
        tunnel_plan,
        vtep_mac,
        underlay_mtu,
        pod_mtu,
        own: lease.clone(),
        leases: BTreeMap::new(),
        skipped: HashMap::new(),
        masq: None,
        reapply: None,
        args: args.clone(),
        health: health.clone(),
        v6: node_v6,
    };
    // The pod bridge before the config, so the first config names it.
    node.scan_pod_bridge().await;
    node.apply_own_lease(true).await?;

    let renew_margin = Duration::from_secs(args.subnet_lease_renew_margin as u64 * 60);
    let own_rx = spawn_lease_keeper(mgr, cfg.clone(), lease, renew_margin, attrs);
    // The watch starts from the listing's revision + 1, so what changed since
    // (our own lease included) arrives as events.
    let config_rx = spawn_config_watch(settings.clone(), cfg.clone());
    let events = spawn_lease_watch_from(settings, cfg, status, listing);
    health.set_lease(&node.own);
    health.datapath_ready();
    notify::ready();
    info!("ready");
    node.run(events, own_rx, config_rx).await
}

/// The cluster route (Network via the tunnel device) must not capture the
/// underlay: a Network holding the uplink's address or our public IP would
/// send VXLAN to peers into the tunnel itself. flanneld accepts such a
/// config and breaks the node's networking; refuse it before touching
/// anything.
fn check_network_against_uplink(cfg: &NetworkConfig, uplink: &Uplink) -> Result<()> {
    let mut checks: Vec<(&str, IpNet, &str, IpAddr)> = Vec::new();
    // IPv6-only: Network is flannel's empty 0.0.0.0/0, routed nowhere.
    if cfg.enable_ipv4 {
        checks.push(("Network", cfg.network.into(), "the uplink's address", uplink.iface_addr.into()));
        checks.push(("Network", cfg.network.into(), "the public IP", uplink.public_ip.into()));
    }
    // Dual stack: the same for the IPv6Network and the v6 underlay.
    if let (Some(v6), Some(up6)) = (&cfg.ipv6, &uplink.ipv6) {
        checks.push(("IPv6Network", v6.network.into(), "the uplink's IPv6 address", up6.iface_addr.into()));
        checks.push(("IPv6Network", v6.network.into(), "the public IPv6", up6.public_ip.into()));
    }
    for (field, network, what, ip) in checks {
        if network.contains(&ip) {
            bail!(
                "network config {field} {network} contains {what} {ip} (on {}): its route via {TUNNEL_DEVICE} \
                 would capture the underlay; choose a {field} that does not overlap the nodes' addresses",
                uplink.name
            );
        }
    }
    Ok(())
}

/// The one INFO line per installed lease (from a watch event or a resync).
fn log_installed(peer: &Peer, replaced: bool) {
    let verb = if replaced { "changed" } else { "added" };
    info!("peer {verb}: {} via {} ({}, VtepMAC {})", peer.subnet, peer.public_ip, peer.mode, format_mac(&peer.vtep_mac));
}

/// One of the two subnets contains the other.
fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

fn tunnel_plan(cfg: &NetworkConfig, own: &Lease, pod_mtu: u32, vtep_mac: [u8; 6]) -> TunnelPlan {
    TunnelPlan {
        kind: match cfg.backend.kind {
            BackendType::Vxlan => TunnelKind::Vxlan { port: cfg.backend.port },
            BackendType::HostGw => TunnelKind::Plain,
        },
        mtu: pod_mtu,
        mac: vtep_mac,
        ipv4: own_ipv4(cfg, own).map(|subnet| TunnelPlan4 { subnet, cluster: cfg.network }),
    }
}

struct Node {
    handle: Handle,
    uplink: Uplink,
    cfg: NetworkConfig,
    datapath: Datapath,
    /// The pod bridge as last found (and what is wrong with the host's
    /// bridges, if anything).
    bridge: BridgeScan,
    tunnel_plan: TunnelPlan,
    vtep_mac: [u8; 6],
    underlay_mtu: u32,
    pod_mtu: u32,
    own: Lease,
    /// Every lease etcd holds, as the lease watch last said, by its key's
    /// subnets (the IPv4 subnet alone is 0.0.0.0/0 for every IPv6-only
    /// lease): the peer maps are a function of these and `own` (see
    /// `peer_for`).
    leases: BTreeMap<LeaseId, Lease>,
    /// Leases we refused, with why (to warn once per change, not per resync).
    skipped: HashMap<LeaseId, String>,
    masq: Option<(Masquerade, tokio::task::JoinHandle<()>)>,
    /// While applying our moved lease fails: the backoff and the next try.
    reapply: Option<(Backoff, tokio::time::Instant)>,
    args: RunArgs,
    health: Arc<Health>,
    /// The IPv6 side (dual stack), None without IPv6 in the config.
    v6: Option<v6::NodeV6>,
}

impl Node {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<LeaseEvent>,
        mut own: watch::Receiver<Lease>,
        mut config: watch::Receiver<Option<String>>,
    ) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut endpoint_tick = tokio::time::interval(ENDPOINT_SYNC);
        endpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        let mut config_open = true;
        let mut batch = Vec::with_capacity(EVENT_BATCH);
        loop {
            // Each turn shows /readyz that the loop is not stuck; the
            // endpoint tick makes one at least every second.
            self.health.heartbeat();
            let reapply_at = self.reapply.as_ref().map(|(_, at)| *at);
            tokio::select! {
                n = events.recv_many(&mut batch, EVENT_BATCH) => {
                    if n == 0 {
                        bail!("the lease watch stopped");
                    }
                    self.apply_events(&mut batch).await;
                }
                changed = own.changed() => {
                    if changed.is_err() {
                        bail!("the lease keeper stopped");
                    }
                    let lease = own.borrow_and_update().clone();
                    // Either family's subnet may move (the v6 one alone
                    // when the keeper re-acquires a dual-stack lease).
                    if lease.id() != self.own.id() {
                        warn!("our lease moved from {} to {}", self.own.id(), lease.id());
                        self.own = lease;
                        self.health.set_lease(&self.own);
                        self.reapply = None;
                        self.reapply_own_lease().await;
                    } else {
                        self.own = lease;
                        self.health.set_lease(&self.own);
                    }
                }
                _ = sleep_until_opt(reapply_at) => self.reapply_own_lease().await,
                changed = config.changed(), if config_open => match changed {
                    Ok(()) => {
                        let change = config.borrow_and_update().clone();
                        self.config_changed(change);
                    }
                    Err(_) => {
                        warn!("the network config watch stopped: a change of the config in etcd is no longer noticed");
                        config_open = false;
                    }
                },
                _ = endpoint_tick.tick() => {
                    self.sync_endpoints().await;
                    ticks += 1;
                    if ticks.is_multiple_of(HOST_RESYNC_TICKS) {
                        self.resync_host().await;
                    }
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        info!("exiting: the data path, its pins and our lease stay in place for the next start");
        Ok(())
    }

    /// `CONFIG` for this node. IPv6-only: the IPv4 programs stay
    /// unconfigured (they pass every IPv4 packet to the kernel), whatever
    /// an earlier run left there.
    fn write_config(&mut self) -> Result<(), crate::datapath::DatapathError> {
        match own_ipv4(&self.cfg, &self.own) {
            Some(_) => self.datapath.maps.set_config(&self.node_config()),
            None => self.datapath.maps.clear_config(),
        }
    }

    /// This node as the programs see it.
    fn node_config(&self) -> NodeConfig {
        let bridge = self.bridge.bridge.as_ref();
        NodeConfig {
            local_ip: self.uplink.iface_addr,
            public_ip: self.uplink.public_ip,
            network: self.cfg.network,
            subnet: self.own.subnet,
            vni: self.cfg.backend.vni,
            port: self.cfg.backend.port,
            uplink_ifindex: self.uplink.index,
            uplink_mtu: self.underlay_mtu,
            bridge_ifindex: bridge.map_or(0, |b| b.index),
            vtep_mac: self.vtep_mac,
            bridge_mac: bridge.map_or([0; 6], |b| b.mac),
            kernel_forwarding: self.args.kernel_forwarding,
            xdp_decap: self.args.xdp_decap,
        }
    }

    /// Config map, tunnel device, subnet file and masquerading for our
    /// (possibly new) lease. At start (`first`) the first failure fails the
    /// start, as with flanneld. After a move every part is tried even when
    /// an earlier one failed (a full /run must not leave the old lease's
    /// iptables rules in place), and the failures are returned together.
    async fn apply_own_lease(&mut self, first: bool) -> Result<()> {
        let subnet = own_ipv4(&self.cfg, &self.own);
        let mut failed: Vec<anyhow::Error> = Vec::new();
        if let Err(e) = self.write_config() {
            failed.push(anyhow::Error::new(e).context("updating the config map"));
        }
        if !first {
            self.tunnel_plan = tunnel_plan(&self.cfg, &self.own, self.pod_mtu, self.vtep_mac);
            if let Err(e) = tunnel_device::ensure(&self.handle, &self.tunnel_plan).await {
                failed.push(anyhow::Error::new(e).context(format!("setting up {TUNNEL_DEVICE}")));
            }
        }
        // After overlay0 (re-)exists: its v6 address and route, CONFIG6.
        if let Err(e) = self.apply_own_lease_v6().await {
            failed.push(e);
        }
        if first {
            if let Err(e) = self.remove_v6_leftovers().await {
                failed.push(e);
            }
        }
        if !first {
            // Leases skipped as overlapping the old lease, and a peer entry
            // for what is now our own subnet, are looked at again.
            self.recheck_peers().await;
            self.recheck_peers_v6();
        }
        let env = SubnetEnv::for_lease(&self.cfg, &self.own, self.pod_mtu, self.args.ip_masq);
        match env.write_atomic(&self.args.subnet_file) {
            Ok(()) => info!("wrote {}", self.args.subnet_file.display()),
            Err(e) => failed.push(anyhow::Error::new(e).context(format!("writing {}", self.args.subnet_file.display()))),
        }
        if first && !failed.is_empty() {
            return combined(failed);
        }
        // flanneld installs its FORWARD accept rules whenever
        // --iptables-forward-rules is on (the default), masquerading or not;
        // net-conf EnableNFTables picks its nftables layout instead.
        let opts = MasqOptions {
            nftables: self.cfg.enable_nftables,
            ip_masq: self.args.ip_masq,
            fully_random: !self.args.ip_masq_fully_random_disable,
            forward: self.args.iptables_forward_rules,
        };
        if first {
            tokio::task::block_in_place(|| Masquerade::remove_other_layout(opts.nftables));
            if subnet.is_none() && !opts.nftables {
                // An earlier run's IPv4 rules (IPv4 is disabled now).
                // Without iptables there is nothing of it to remove.
                if let Err(e) = tokio::task::block_in_place(crate::host::masq::remove_all) {
                    warn!("removing the iptables rules of an earlier IPv4 run: {e:#}");
                }
            }
        }
        if let Some((_, task)) = self.masq.take() {
            task.abort();
        }
        if let Some(rules) =
            subnet.and_then(|subnet| Masquerade::new(opts, self.cfg.network, subnet)).map(|m| m.with_ipv6(self.nft_ipv6()))
        {
            // The resync follows the current lease's rules from now on,
            // whether or not this first attempt works: it keeps repairing.
            self.health.set_masq_installed(false);
            let health = self.health.clone();
            let task = rules.spawn_resync(Duration::from_secs(self.args.iptables_resync.max(1)), move |ok| {
                health.set_masq_installed(ok)
            });
            // ensure() rebuilds what still holds the old lease's rules.
            // iptables / nft are blocking subprocesses: keep them off the
            // async workers.
            match tokio::task::block_in_place(|| rules.ensure()) {
                Ok(_) => {
                    info!("{} rules installed", rules.layout());
                    self.health.set_masq_installed(true);
                }
                Err(e) => failed.push(e.context(format!("installing the {} rules", rules.layout()))),
            }
            self.masq = Some((rules, task));
        } else {
            self.health.set_masq_installed(true);
        }
        if let Err(e) = self.apply_masq_v6(opts) {
            failed.push(e);
        }
        if let (true, Some(subnet)) = (self.args.ip_blackhole_route, subnet) {
            if let Err(e) = blackhole::ensure(&self.handle, subnet).await.context("adding the blackhole route for our lease") {
                failed.push(e);
            }
        } else if first {
            // an earlier run with --ip-blackhole-route left it
            match blackhole::remove(&self.handle, None).await.context("removing an old blackhole route") {
                Ok(removed) => {
                    for old in removed {
                        info!("removed the blackhole route for {old} (no --ip-blackhole-route)");
                    }
                }
                Err(e) => failed.push(e),
            }
        }
        combined(failed)
    }

    /// Applies our lease after it moved; on failure /readyz says why and it
    /// is tried again with backoff (1 s doubling to a minute) until it
    /// works. flanneld logs the failure once and carries on with a half
    /// applied lease.
    async fn reapply_own_lease(&mut self) {
        let subnet = self.own.id();
        match self.apply_own_lease(false).await {
            Ok(()) => {
                if self.reapply.take().is_some() {
                    info!("lease {subnet} applied after earlier failures");
                }
                self.health.set_condition(condition::OWN_LEASE_APPLY, None);
            }
            Err(e) => {
                let (backoff, at) = self
                    .reapply
                    .get_or_insert_with(|| (Backoff::new(Duration::from_secs(1), Duration::from_secs(60)), tokio::time::Instant::now()));
                let d = backoff.next_delay();
                *at = tokio::time::Instant::now() + d;
                error!("applying our lease {subnet} failed: {e:#}; retrying in {d:.1?}");
                self.health.add_lease_apply_failure();
                self.health.set_condition(condition::OWN_LEASE_APPLY, Some(format!("applying lease {subnet}: {e:#}")));
            }
        }
    }

    /// The network config in etcd changed (Some: how it differs from the
    /// one we run with) or is back to ours (None). flanneld reads the config
    /// once and ignores changes silently; re-numbering a running node under
    /// its pods is not safe either, so the agent keeps its config, says so
    /// loudly and is not ready until restarted (or the change is undone).
    fn config_changed(&mut self, change: Option<String>) {
        match &change {
            Some(how) => error!(
                "the network config in etcd changed at run time ({how}); this agent keeps running \
                 with the config it started with (Network {}): restart it to use the new one",
                self.cfg.network
            ),
            None => info!("the network config in etcd is again the one this agent runs with"),
        }
        self.health.set_condition(condition::NETWORK_CONFIG_CHANGED, change);
    }

    /// Applies (and empties) a batch of lease events, then tells /readyz
    /// and the metrics the new peer count once.
    async fn apply_events(&mut self, batch: &mut Vec<LeaseEvent>) {
        let mut snapshot = false;
        for ev in batch.drain(..) {
            snapshot |= matches!(ev, LeaseEvent::Snapshot(_));
            self.apply_event(ev).await;
        }
        self.report_peers();
        if snapshot {
            release_free_memory();
        }
    }

    async fn apply_event(&mut self, ev: LeaseEvent) {
        match ev {
            LeaseEvent::Snapshot(leases) => {
                let mut wanted = BTreeMap::new();
                for lease in &leases {
                    if let Some(peer) = self.peer_for(lease).await {
                        wanted.insert(peer.subnet, peer);
                    }
                }
                self.snapshot_v6(&leases);
                self.leases = leases.into_iter().map(|l| (l.id(), l)).collect();
                self.skipped.retain(|id, _| self.leases.contains_key(id));
                // The maps become exactly what the leases say, whatever an
                // earlier run (or a SIGKILL between two writes) left in them.
                let before = self.datapath.maps.installed_peers().cloned().unwrap_or_default();
                match self.datapath.maps.reconcile_peers(&wanted) {
                    Ok(c) if c == PeerChanges::default() => {}
                    Ok(c) => {
                        // One line per lease change, as for watch events
                        // (and as flanneld logs each lease it handles).
                        for peer in wanted.values().filter(|p| before.get(&p.subnet) != Some(*p)) {
                            log_installed(peer, before.contains_key(&peer.subnet));
                        }
                        for (subnet, old) in before.iter().filter(|(s, _)| !wanted.contains_key(*s)) {
                            info!("peer removed: {subnet} (was via {})", old.public_ip);
                        }
                        info!(
                            "peers resynced: {} subnets written, {} removed, {} senders changed",
                            c.written, c.removed, c.senders
                        );
                    }
                    Err(e) => warn!("resyncing the peer maps: {e}"),
                }
                debug!("resynced: {} peers from {} leases", wanted.len(), self.leases.len());
            }
            LeaseEvent::Added(lease) => {
                self.leases.insert(lease.id(), lease.clone());
                self.apply_lease(&lease).await;
                self.apply_lease_v6(&lease);
            }
            LeaseEvent::Removed(id) => {
                self.leases.remove(&id);
                self.skipped.remove(&id);
                if let Some(subnet) = id.ipv4_subnet() {
                    // Another key with the same IPv4 subnet (its v6 part
                    // changed, the new key came first) keeps the entry.
                    match self.leases.range(LeaseId::ipv4_range(subnet)).next().map(|(_, l)| l.clone()) {
                        Some(other) => self.apply_lease(&other).await,
                        None => self.remove_peer(subnet),
                    }
                }
                self.remove_peer_v6(id);
            }
        }
    }

    /// Installs, changes or removes the peer entry of one lease.
    async fn apply_lease(&mut self, lease: &Lease) {
        match self.peer_for(lease).await {
            Some(peer) => self.upsert_peer(peer),
            // A lease that turned invalid no longer routes anywhere.
            None => {
                if let Some(subnet) = lease.ipv4_subnet() {
                    self.remove_peer(subnet);
                }
            }
        }
    }

    /// After our own lease moved: a lease refused for overlapping our old
    /// lease (or for being it: the node that took it over) may be valid
    /// now, and an installed one may overlap our new lease. flanneld exits
    /// when it loses its lease; we move, so we look again.
    async fn recheck_peers(&mut self) {
        let Some(own) = own_ipv4(&self.cfg, &self.own) else { return };
        let installed = match self.datapath.maps.installed_peers() {
            Ok(peers) => peers.keys().copied().collect::<std::collections::BTreeSet<_>>(),
            Err(e) => {
                warn!("reading the installed peers: {e}");
                Default::default()
            }
        };
        let affected: Vec<Lease> = self
            .leases
            .values()
            .filter(|l| l.ipv4_subnet().is_some_and(|s| !installed.contains(&s) || overlaps(s, own)))
            .cloned()
            .collect();
        for lease in &affected {
            self.apply_lease(lease).await;
        }
        // An entry overlapping our new lease with no lease behind it (left
        // from before the first Snapshot) goes too.
        let orphans: Vec<Ipv4Net> = installed
            .into_iter()
            .filter(|s| overlaps(*s, own) && self.leases.range(LeaseId::ipv4_range(*s)).next().is_none())
            .collect();
        for subnet in orphans {
            self.remove_peer(subnet);
        }
        self.report_peers();
    }

    fn report_peers(&mut self) {
        match self.datapath.maps.installed_peers() {
            Ok(peers) => self.health.set_peers(peers.len()),
            Err(e) => warn!("reading the installed peers: {e}"),
        }
    }

    /// The data path entry for a lease, or None (with a warning naming the
    /// lease) when it must not be installed.
    async fn peer_for(&mut self, lease: &Lease) -> Option<Peer> {
        // No IPv4 here (an IPv6-only node) or there (a lease's IPv4 half
        // is the empty 0.0.0.0/0): nothing for the IPv4 maps, no warning.
        let own = own_ipv4(&self.cfg, &self.own)?;
        lease.ipv4_subnet()?;
        if lease.id() == self.own.id() || lease.subnet == own {
            return None;
        }
        let backend = self.cfg.backend.kind.as_str();
        let problem = if overlaps(lease.subnet, own) {
            Some(format!("overlaps our lease {own}"))
        } else if lease.attrs.public_ip == self.uplink.public_ip {
            Some(format!("claims our PublicIP {}", self.uplink.public_ip))
        } else if lease.attrs.backend_type != backend {
            Some(format!("backend type {:?}, this network is {backend}", lease.attrs.backend_type))
        } else if self.cfg.backend.kind == BackendType::Vxlan && lease.attrs.vtep_mac.is_none() {
            Some("vxlan lease without a VtepMAC".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            if self.skipped.get(&lease.id()) != Some(&problem) {
                warn!("ignoring lease {} from {}: {problem}", lease.subnet, lease.attrs.public_ip);
                self.skipped.insert(lease.id(), problem);
            }
            return None;
        }
        self.skipped.remove(&lease.id());
        let mode = match self.cfg.backend.kind {
            BackendType::HostGw => Mode::Direct,
            BackendType::Vxlan if self.cfg.backend.direct_routing => {
                match iface::on_link(&self.handle, &self.uplink, lease.attrs.public_ip).await {
                    Ok(true) => Mode::Direct,
                    Ok(false) => Mode::Vxlan,
                    Err(e) => {
                        warn!("cannot tell whether {} is on-link ({e}); using VXLAN", lease.attrs.public_ip);
                        Mode::Vxlan
                    }
                }
            }
            BackendType::Vxlan => Mode::Vxlan,
        };
        Some(Peer {
            subnet: lease.subnet,
            public_ip: lease.attrs.public_ip,
            vtep_mac: lease.attrs.vtep_mac.unwrap_or([0; 6]),
            mode,
        })
    }

    fn upsert_peer(&mut self, peer: Peer) {
        let old = match self.datapath.maps.installed_peers() {
            Ok(peers) => peers.get(&peer.subnet).copied(),
            Err(e) => {
                warn!("installing peer {}: {e}", peer.subnet);
                return;
            }
        };
        if old == Some(peer) {
            return;
        }
        match self.datapath.maps.upsert_peer(&peer) {
            Ok(()) => log_installed(&peer, old.is_some()),
            Err(e) => warn!("installing peer {}: {e}", peer.subnet),
        }
    }

    /// Removes a subnet's peer entry, if there is one.
    fn remove_peer(&mut self, subnet: Ipv4Net) {
        let old = match self.datapath.maps.installed_peers() {
            Ok(peers) => peers.get(&subnet).copied(),
            Err(e) => {
                warn!("removing peer {subnet}: {e}");
                return;
            }
        };
        let Some(old) = old else { return };
        match self.datapath.maps.remove_peer(subnet) {
            Ok(()) => info!("peer removed: {} (was via {})", subnet, old.public_ip),
            Err(e) => warn!("removing peer {subnet}: {e}"),
        }
    }

    async fn resync_host(&mut self) {
        if let Err(e) = tunnel_device::resync_route(&self.handle, &self.tunnel_plan).await {
            warn!("re-asserting the cluster route via {TUNNEL_DEVICE}: {e}");
        }
        if let (true, Some(subnet)) = (self.args.ip_blackhole_route, own_ipv4(&self.cfg, &self.own)) {
            if let Err(e) = blackhole::ensure(&self.handle, subnet).await {
                warn!("re-asserting the blackhole route for {subnet}: {e}");
            }
        }
        self.resync_host_v6().await;
    }

    /// Finds the pod bridge again; when it changed (appeared, went away,
    /// was re-made, another bridge took the gateway address), the programs
    /// follow and the config names the new one.
    async fn scan_pod_bridge(&mut self) -> bool {
        // The bridge carrying our lease's first address: the IPv4 one, or
        // on an IPv6-only node the IPv6 one (FLANNEL_IPV6_SUBNET).
        let gateway: IpNet = match (own_ipv4(&self.cfg, &self.own), self.own_subnet_v6()) {
            (Some(sn), _) => subnet_env::first_usable(sn).into(),
            (None, Some(sn6)) => subnet_env::first_usable_v6(sn6).into(),
            (None, None) => return false,
        };
        let scan = match pod_bridge::scan(&self.handle, self.args.bridge.as_deref(), gateway).await {
            Ok(scan) => scan,
            Err(e) => {
                warn!("looking for the pod bridge: {e}");
                return false;
            }
        };
        for problem in scan.problems.difference(&self.bridge.problems) {
            warn!("{problem}");
        }
        self.health.set_bridge_problems(scan.problems.iter().map(|p| p.kind()));
        if scan.bridge == self.bridge.bridge {
            self.bridge.problems = scan.problems;
            return false;
        }
        match (&self.bridge.bridge, &scan.bridge) {
            (_, Some(new)) => info!(
                "pod bridge: {} (ifindex {}, MAC {}, gateway {gateway})",
                new.name,
                new.index,
                format_mac(&new.mac)
            ),
            (Some(old), None) => info!("pod bridge {} is gone: pods get the kernel path until one carries {gateway}", old.name),
            (None, None) => {}
        }
        self.bridge = scan;
        self.health.set_pod_bridge(self.bridge.bridge.as_ref().map(|b| b.name.as_str()));
        true
    }

    async fn sync_endpoints(&mut self) {
        if self.scan_pod_bridge().await {
            if let Err(e) = self.write_config() {
                warn!("updating the config for the pod bridge: {e}");
            }
            self.refresh_config6();
        }
        let found = match &self.bridge.bridge {
            Some(b) => match pods::discover(&self.handle, b.index, own_ipv4(&self.cfg, &self.own), self.own_subnet_v6()).await {
                Ok(found) => found,
                Err(e) => {
                    warn!("reading pod endpoints: {e}");
                    return;
                }
            },
            None => pods::BridgePods::default(),
        };
        let bridge = self.bridge.bridge.as_ref().map(|b| b.name.as_str());
        match self.datapath.sync_pod_side(bridge, &found.veths) {
            (0, 0) => {}
            (attached, detached) => debug!("pod side: {attached} programs attached, {detached} detached"),
        }
        let endpoints: Vec<PodEndpoint> =
            found.pods.iter().map(|p| PodEndpoint { ip: p.ip, ifindex: p.veth_ifindex, mac: p.mac }).collect();
        match self.datapath.maps.reconcile_endpoints(&endpoints) {
            Ok((0, 0)) => {}
            Ok((changed, removed)) => debug!("endpoints: {changed} added or changed, {removed} removed"),
            Err(e) => warn!("updating the endpoint map: {e}"),
        }
        self.sync_endpoints_v6(&found.pods6);
    }
}

/// Gives the heap's free pages back to the kernel. A Snapshot is built
/// from a listing of every lease (at a full /8, the raw etcd values, their
/// decoded form and the wanted peers at once: tens of MB); freed, that
/// memory stays in the allocator's arenas and in the agent's RSS until
/// trimmed. Snapshots are rare (start, compaction, an etcd outage), so one
/// trim each costs nothing that matters.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas; 0 keeps no pad.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Several independent failures as one error (all of them named).
fn combined(mut failed: Vec<anyhow::Error>) -> Result<()> {
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
        _ => bail!("{}", failed.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; ")),
    }
}
