//! Acquiring, renewing and releasing our own subnet lease (flannel's life
//! cycle, minus its weak points: a lost creation race is retried with another
//! subnet, and a deleted lease key is taken back instead of exiting, flannel
//! #904, by the keeper in [`crate::etcd::keeper`]).
//!
//! Life cycle:
//! - create: grant an etcd lease (86400 s), then put the key only if absent
//!   (`Compare::version(key, Equal, 0)`);
//! - on (re)start, in order: an existing lease whose PublicIP is ours (its
//!   value is updated if our attributes changed, its etcd lease kept and
//!   refreshed); the previous subnet (from the subnet file) if valid and free;
//!   else a random one among the first 100 free subnets from SubnetMin;
//! - dual stack: one lease holds both subnets (`10.5.52.0-24&fc00::-64`),
//!   each picked as above from its own range (flannel: both free); an
//!   IPv6-only node's lease is `0.0.0.0-0&fc00::-64` and is found by its
//!   PublicIPv6 (all of them carry PublicIP `0.0.0.0`). Better than flannel:
//!   a previous subnet is kept per family (flannel drops both when one does
//!   not fit), and a lease of ours whose IPv6 part no longer fits (IPv6 just
//!   enabled) keeps its IPv4 subnet (flannel takes a new one); and a
//!   subnet is never shared after a race: keys differ per pair (and mixed
//!   clusters hold IPv4-only keys too), so creating also requires that no
//!   key holds our IPv4 subnet, and a node that finds its IPv6 subnet
//!   created by another node first gives it up (flannel's put-if-absent
//!   lets both keep it);
//! - renew at expiry minus the renew margin (a keep-alive of the same etcd
//!   lease: the TTL goes back to the granted 86400 s);
//! - reservations (a key an administrator put without an etcd lease) are used
//!   as they are and never renewed, as flannel does.
//!
//! [`SubnetManager`]'s request methods take `&self` (the client handle is
//! shared and cheap to clone), so callers can wrap them in retry closures.

use std::collections::HashSet;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, WatchOptions, WatchStream};
use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;

use crate::config::NetworkConfig;
use crate::etcd::client::{Conn, EtcdSettings};
use crate::etcd::error::{is_lease_not_found, EtcdError};
use crate::etcd::registry::{
    config_key, lease_key, parse_lease_key, subnet_key, subnets_prefix, Lease, LeaseAttrs, RegistryError,
    EMPTY_IPV4_SUBNET,
};

/// flannel's lease TTL: 24 h.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How many list-and-create rounds [`SubnetManager::acquire`] makes before
/// giving up (each lost race re-lists and picks another subnet).
pub const MAX_ACQUIRE_ATTEMPTS: u32 = 16;
/// A new subnet is picked at random among this many first free ones.
const RANDOM_POOL: usize = 100;

/// One key under `<prefix>/subnets/` as listed: its subnets (the key parsed)
/// and its value (parsed, or why not).
struct Entry {
    key: String,
    subnet: Ipv4Net,
    ipv6_subnet: Option<Ipv6Net>,
    lease: Result<Lease, RegistryError>,
    mod_revision: i64,
    create_revision: i64,
}

/// The subnets this node held before (from the subnet file), to take again
/// when still free and valid. Each family on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreviousSubnets {
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
}

impl From<Option<Ipv4Net>> for PreviousSubnets {
    fn from(ipv4: Option<Ipv4Net>) -> Self {
        PreviousSubnets { ipv4, ipv6: None }
    }
}

/// Every key under `<prefix>/subnets/` as of one etcd revision, as etcd
/// returned them: made once at start by [`SubnetManager::list`] and shared
/// by finding our lease, acquiring it and the lease watch's first Snapshot.
pub struct LeaseListing {
    pub(crate) kvs: Vec<KeyValue>,
    /// The etcd revision the keys were read at: a watch from `revision + 1`
    /// misses nothing that changed since.
    pub(crate) revision: i64,
}

impl LeaseListing {
    /// How many keys were listed (valid leases or not).
    pub fn len(&self) -> usize {
        self.kvs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kvs.is_empty()
    }
}

/// The state of our own lease key, as read from etcd.
pub(super) enum Own {
    /// The key holds our PublicIP; attached to this etcd lease (0: none).
    Ours { etcd_lease: i64 },
    /// The key is gone or belongs to someone else.
    Lost(String),
}

/// Acquires, renews and releases this node's lease.
pub struct SubnetManager {
    conn: Conn,
    lease_ttl: Duration,
}

impl SubnetManager {
    /// Connects (see [`crate::etcd::connect`]); fails if etcd does not answer.
    pub async fn new(s: EtcdSettings) -> Result<SubnetManager, EtcdError> {
        let conn = Conn::connect(&s).await?;
        Ok(SubnetManager {
            conn,
            lease_ttl: DEFAULT_LEASE_TTL,
        })
    }

    /// TTL of the etcd leases granted for new subnet leases (default 24 h).
    /// etcd rounds tiny TTLs up to its minimum (about 2 s).
    pub fn set_lease_ttl(&mut self, ttl: Duration) {
        self.lease_ttl = ttl.max(Duration::from_secs(1));
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    pub fn settings(&self) -> &EtcdSettings {
        &self.conn.settings
    }

    /// `<prefix>` as used in keys.
    pub fn prefix(&self) -> String {
        self.conn.settings.normalized_prefix()
    }

    /// The key of `subnet`'s (IPv4-only) lease.
    pub fn lease_key(&self, subnet: Ipv4Net) -> String {
        subnet_key(&self.conn.settings.prefix, subnet)
    }

    /// The key of `lease` (dual-stack and IPv6-only keys included).
    pub fn key_of(&self, lease: &Lease) -> String {
        lease.key(&self.conn.settings.prefix)
    }

    /// A handle on the underlying client (cheap clone).
    pub fn client(&self) -> etcd_client::Client {
        self.conn.client.clone()
    }

    /// Replaces the connection with a fresh one (the old one is kept if
    /// connecting fails).
    pub async fn reconnect(&mut self) -> Result<(), EtcdError> {
        self.conn = Conn::connect(&self.conn.settings).await?;
        Ok(())
    }

    /// Reads and validates `<prefix>/config`. Logs when vxlan is assumed
    /// because the config has no Backend.
    pub async fn network_config(&self) -> Result<NetworkConfig, EtcdError> {
        let key = config_key(&self.conn.settings.prefix);
        let resp = self
            .conn
            .run("read", &key, |mut c, k| async move { c.get(k, None).await })
            .await?;
        let kv = match resp.kvs().first() {
            Some(kv) => kv,
            None => return Err(EtcdError::ConfigMissing { key }),
        };
        let text = String::from_utf8_lossy(kv.value());
        let cfg = NetworkConfig::parse(&text).map_err(|source| EtcdError::Config {
            key: key.clone(),
            source,
        })?;
        if cfg.backend_defaulted {
            log::warn!(
                "network config {key} names no Backend type: assuming vxlan (flannel's code would \
                 pick udp, which this agent does not implement)"
            );
        }
        Ok(cfg)
    }

    /// Lists `<prefix>/subnets/` (one range request per 1,000 keys). At start
    /// the agent lists once and hands the listing to
    /// [`find_own_lease_in`](Self::find_own_lease_in),
    /// [`acquire_from`](Self::acquire_from) and the lease watch
    /// ([`crate::etcd::spawn_lease_watch_from`]): at 10,000 leases each
    /// listing is ~2 MB.
    pub async fn list(&self) -> Result<LeaseListing, EtcdError> {
        let dir = subnets_prefix(&self.conn.settings.prefix);
        let (kvs, revision) = self.conn.list_prefix(&dir).await?;
        Ok(LeaseListing { kvs, revision })
    }

    /// Every lease under `<prefix>/subnets/` with a valid key and value (any
    /// subnet length), with the revision of the read.
    pub async fn list_leases(&self) -> Result<(Vec<Lease>, i64), EtcdError> {
        let listing = self.list().await?;
        let leases = self.entries(&listing).into_iter().filter_map(|e| e.lease.ok()).collect();
        Ok((leases, listing.revision))
    }

    /// The subnet lease keys of `listing`, parsed (other keys are skipped).
    fn entries(&self, listing: &LeaseListing) -> Vec<Entry> {
        let prefix = &self.conn.settings.prefix;
        let mut out = Vec::with_capacity(listing.kvs.len());
        for kv in &listing.kvs {
            let key = match kv.key_str() {
                Ok(k) => k.to_string(),
                Err(_) => continue,
            };
            let (subnet, ipv6_subnet) = match parse_lease_key(prefix, &key) {
                Some(s) => s,
                None => {
                    log::debug!("ignoring {key:?}: not a subnet lease key");
                    continue;
                }
            };
            let lease = Lease::from_kv(prefix, &key, kv.value(), kv.lease());
            out.push(Entry {
                key,
                subnet,
                ipv6_subnet,
                lease,
                mod_revision: kv.mod_revision(),
                create_revision: kv.create_revision(),
            });
        }
        out
    }

    /// The entries of `listing`, or of a fresh listing when there is none.
    async fn entries_of(&self, listing: Option<&LeaseListing>) -> Result<Vec<Entry>, EtcdError> {
        match listing {
            Some(l) => Ok(self.entries(l)),
            None => Ok(self.entries(&self.list().await?)),
        }
    }

    /// The lease whose PublicIP is `public_ip`, if any (for reusing the
    /// VtepMAC across restarts). Its expiration is filled in (one TimeToLive
    /// RPC for this one lease).
    pub async fn find_own_lease(&self, public_ip: Ipv4Addr) -> Result<Option<Lease>, EtcdError> {
        let listing = self.list().await?;
        self.find_own_lease_in(&listing, public_ip).await
    }

    /// [`find_own_lease`](Self::find_own_lease) in a listing already made.
    pub async fn find_own_lease_in(
        &self,
        listing: &LeaseListing,
        public_ip: Ipv4Addr,
    ) -> Result<Option<Lease>, EtcdError> {
        self.find_own_lease_for(listing, public_ip, None).await
    }

    /// The lease of the node with these public addresses (PublicIP, or
    /// PublicIPv6 for an IPv6-only node whose `public_ip` is `0.0.0.0`), as
    /// [`LeaseAttrs::same_node`] matches: where the agent reads the
    /// VtepMACs (IPv4's and IPv6's) it keeps across restarts.
    pub async fn find_own_lease_for(
        &self,
        listing: &LeaseListing,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<Option<Lease>, EtcdError> {
        let ours = LeaseAttrs {
            public_ipv6,
            ..LeaseAttrs::host_gw(public_ip)
        };
        let mut found = self
            .entries(listing)
            .into_iter()
            .filter_map(|e| e.lease.ok())
            .filter(|l| l.attrs.same_node(&ours));
        let mut lease = match found.next() {
            Some(l) => l,
            None => return Ok(None),
        };
        if lease.etcd_lease != 0 {
            let id = lease.etcd_lease;
            let key = self.key_of(&lease);
            let ttl = self
                .conn
                .run("lease time-to-live", &key, move |mut c, _| async move {
                    c.lease_time_to_live(id, None).await
                })
                .await?
                .ttl();
            lease.expiration = (ttl > 0).then(|| SystemTime::now() + Duration::from_secs(ttl as u64));
        }
        Ok(Some(lease))
    }

    /// Acquires our lease (see the module docs for the order of preference).
    /// A lost creation race re-lists and tries another subnet, up to
    /// [`MAX_ACQUIRE_ATTEMPTS`] times.
    pub async fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: impl Into<PreviousSubnets>,
    ) -> Result<Lease, EtcdError> {
        self.acquire_from(None, cfg, attrs, previous).await
    }

    /// [`acquire`](Self::acquire), whose first attempt decides from `listing`
    /// when given instead of listing again. A listing a little out of date
    /// is safe: creating is put-if-absent and updating compares the key's
    /// mod revision, so a change since the listing fails that attempt and
    /// the next one lists afresh.
    pub async fn acquire_from(
        &self,
        listing: Option<&LeaseListing>,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: impl Into<PreviousSubnets>,
    ) -> Result<Lease, EtcdError> {
        let mut granted: Option<(i64, i64)> = None;
        let result = self.acquire_inner(listing, cfg, attrs, previous.into(), &mut granted).await;
        if let Some((id, _)) = granted {
            let used = matches!(&result, Ok(l) if l.etcd_lease == id);
            if !used {
                self.revoke_quietly(id).await;
            }
        }
        result
    }

    async fn acquire_inner(
        &self,
        mut listing: Option<&LeaseListing>,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: PreviousSubnets,
        granted: &mut Option<(i64, i64)>,
    ) -> Result<Lease, EtcdError> {
        let value = attrs.to_json();
        let mut preferred = previous;
        for attempt in 1..=MAX_ACQUIRE_ATTEMPTS {
            // Only the first attempt may use the given listing: a retry
            // follows a change made since, which it must see.
            let entries = self.entries_of(listing.take()).await?;

            // 1. A lease that already carries our PublicIP (IPv6-only: PublicIPv6).
            let mut reuse: Option<&Entry> = None;
            let mut deleted: HashSet<&str> = HashSet::new();
            for e in &entries {
                let Ok(l) = &e.lease else { continue };
                if !l.attrs.same_node(attrs) {
                    continue;
                }
                if !cfg.is_compatible_subnet(l.subnet) || !cfg.is_compatible_ipv6_subnet(l.ipv6_subnet) {
                    log::info!(
                        "lease {} carries our {} but does not fit the network config ({}); deleting it",
                        e.key,
                        attrs.node_address(),
                        describe_ranges(cfg)
                    );
                    if self.delete_if_unchanged(&e.key, e.mod_revision).await? {
                        deleted.insert(&e.key);
                    }
                    // IPv6 just enabled (or disabled): keep the IPv4 subnet.
                    if cfg.enable_ipv4 && cfg.is_compatible_subnet(l.subnet) && preferred.ipv4.is_none() {
                        preferred.ipv4 = Some(l.subnet);
                    }
                } else if reuse.is_none() {
                    reuse = Some(e);
                } else {
                    log::warn!(
                        "lease {} also carries our {}; using {} and leaving it to expire",
                        e.key,
                        attrs.node_address(),
                        reuse.map(|r| r.key.as_str()).unwrap_or("")
                    );
                }
            }
            if let Some(e) = reuse {
                match self.reuse(e, attrs, &value).await? {
                    Some(lease) => return Ok(lease),
                    None => {
                        preferred = PreviousSubnets {
                            ipv4: cfg.enable_ipv4.then_some(e.subnet),
                            ipv6: e.ipv6_subnet,
                        };
                        continue;
                    }
                }
            }

            // 2. The previous subnets, 3. random free ones; per family.
            let live = || entries.iter().filter(|e| !deleted.contains(e.key.as_str()));
            let subnet = if cfg.enable_ipv4 {
                let taken = Taken::new(live().map(|e| e.subnet).filter(|s| *s != EMPTY_IPV4_SUBNET));
                let p = preferred.ipv4.take();
                let chosen = p.filter(|p| keep_previous(*p, cfg.is_compatible_subnet(*p), &taken, || describe_ranges(cfg)));
                preferred.ipv4 = chosen;
                match chosen {
                    Some(s) => s,
                    None => pick_random(cfg.candidate_subnets(), &taken).ok_or_else(|| EtcdError::OutOfSubnets {
                        network: cfg.network,
                        subnet_len: cfg.subnet_len,
                        subnet_min: cfg.subnet_min,
                        subnet_max: cfg.subnet_max,
                        total: cfg.subnet_count(),
                        subnets: subnets_prefix(&self.conn.settings.prefix),
                    })?,
                }
            } else {
                EMPTY_IPV4_SUBNET
            };
            let ipv6_subnet = match &cfg.ipv6 {
                None => None,
                Some(v6) => {
                    let taken = Taken::new(live().filter_map(|e| e.ipv6_subnet));
                    let p = preferred.ipv6.take();
                    let chosen = p.filter(|p| keep_previous(*p, v6.is_compatible_subnet(*p), &taken, || describe_ranges(cfg)));
                    preferred.ipv6 = chosen;
                    Some(match chosen {
                        Some(s) => s,
                        None => pick_random(v6.candidate_subnets(), &taken).ok_or_else(|| EtcdError::OutOfIpv6Subnets {
                            network: v6.network,
                            subnet_len: v6.subnet_len,
                            subnet_min: v6.subnet_min,
                            subnet_max: v6.subnet_max,
                            subnets: subnets_prefix(&self.conn.settings.prefix),
                        })?,
                    })
                }
            };

            // Create: grant once (reused across attempts), then put-if-absent.
            let (lease_id, ttl) = match *granted {
                Some(g) => g,
                None => {
                    let g = self.grant().await?;
                    *granted = Some(g);
                    g
                }
            };
            let key = lease_key(&self.conn.settings.prefix, subnet, ipv6_subnet);
            let created = match self.create(&key, &value, lease_id, subnet).await? {
                // The IPv4 half was guarded by the transaction; the IPv6
                // half cannot be (it is not a key prefix): of two nodes that
                // took it at once, the later one gives it up.
                Some(rev) => match ipv6_subnet {
                    Some(sn) if self.ipv6_taken_before(&key, sn, rev).await? => {
                        log::info!("IPv6 subnet {sn} was taken by another node at the same time; trying another");
                        self.delete_if_unchanged(&key, rev).await?;
                        preferred.ipv6 = None;
                        continue;
                    }
                    _ => true,
                },
                None => false,
            };
            if created {
                log::info!(
                    "acquired lease {key} for {} (etcd lease {lease_id:x}, TTL {ttl} s)",
                    attrs.node_address()
                );
                return Ok(Lease {
                    subnet,
                    ipv6_subnet,
                    attrs: attrs.clone(),
                    etcd_lease: lease_id,
                    expiration: Some(SystemTime::now() + Duration::from_secs(ttl.max(0) as u64)),
                });
            }
            // The key exists: another node took this pair (or its IPv6-only
            // twin) meanwhile. Keys differ per pair, so a half taken by a
            // key with another other half shows up in the next listing.
            log::info!("{key} was taken by another node meanwhile (attempt {attempt}); trying another");
            if preferred.ipv4 == Some(subnet) || !cfg.enable_ipv4 {
                preferred.ipv4 = None;
            }
            if preferred.ipv6 == ipv6_subnet {
                preferred.ipv6 = None;
            }
        }
        Err(EtcdError::TooManyConflicts {
            attempts: MAX_ACQUIRE_ATTEMPTS,
            subnets: subnets_prefix(&self.conn.settings.prefix),
        })
    }

    /// Reuses an existing lease of ours: updates its value if our attributes
    /// changed (keeping its etcd lease) and refreshes its TTL. `None` when it
    /// changed or vanished meanwhile (the caller re-lists).
    async fn reuse(&self, e: &Entry, attrs: &LeaseAttrs, value: &str) -> Result<Option<Lease>, EtcdError> {
        let Ok(old) = &e.lease else { return Ok(None) };
        let etcd_lease = old.etcd_lease;
        if old.attrs != *attrs {
            let mod_rev = e.mod_revision;
            let val = value.to_string();
            let put_opts = (etcd_lease != 0).then(|| PutOptions::new().with_lease(etcd_lease));
            let r = self
                .conn
                .run("update", &e.key, move |mut c, k| {
                    let txn = Txn::new()
                        .when(vec![Compare::mod_revision(k.clone(), CompareOp::Equal, mod_rev)])
                        .and_then(vec![TxnOp::put(k, val.clone(), put_opts.clone())]);
                    async move { c.txn(txn).await }
                })
                .await;
            match r {
                Ok(resp) if resp.succeeded() => {
                    log::info!("updated the attributes of our lease {}", e.key);
                }
                Ok(_) => return Ok(None),
                Err(EtcdError::Request { ref source, .. }) if is_lease_not_found(source) => return Ok(None),
                Err(err) => return Err(err),
            }
        }
        let expiration = if etcd_lease != 0 {
            match self.keep_alive_once(&e.key, etcd_lease).await? {
                Some(ttl) => Some(SystemTime::now() + Duration::from_secs(ttl as u64)),
                None => return Ok(None),
            }
        } else {
            None
        };
        log::info!(
            "reusing lease {} (found with our {}{})",
            e.key,
            attrs.node_address(),
            if etcd_lease == 0 { ", a reservation" } else { "" }
        );
        Ok(Some(Lease {
            subnet: e.subnet,
            ipv6_subnet: e.ipv6_subnet,
            attrs: attrs.clone(),
            etcd_lease,
            expiration,
        }))
    }

    /// Extends our lease to its full TTL again. [`EtcdError::LeaseLost`] when
    /// the key was deleted, now carries another PublicIP, or its etcd lease
    /// expired: the caller should acquire again.
    pub async fn renew(&self, lease: &Lease) -> Result<Lease, EtcdError> {
        let key = self.key_of(lease);
        let (own, _) = self.check_own(lease).await?;
        let etcd_lease = match own {
            Own::Lost(reason) => return Err(EtcdError::LeaseLost { key, reason }),
            Own::Ours { etcd_lease } => etcd_lease,
        };
        if etcd_lease != lease.etcd_lease {
            log::info!(
                "our lease {key} is now attached to etcd lease {etcd_lease:x} (was {:x})",
                lease.etcd_lease
            );
        }
        if etcd_lease == 0 {
            return Ok(Lease {
                etcd_lease: 0,
                expiration: None,
                ..lease.clone()
            });
        }
        match self.keep_alive_once(&key, etcd_lease).await? {
            Some(ttl) => Ok(Lease {
                etcd_lease,
                expiration: Some(SystemTime::now() + Duration::from_secs(ttl as u64)),
                ..lease.clone()
            }),
            None => Err(EtcdError::LeaseLost {
                key,
                reason: format!("its etcd lease {etcd_lease:x} expired"),
            }),
        }
    }

    /// Gives our lease up (`cleanup --release-lease`): deletes the key if it
    /// is still ours and revokes its etcd lease.
    pub async fn release(&self, lease: &Lease) -> Result<(), EtcdError> {
        let key = self.key_of(lease);
        let resp = self
            .conn
            .run("read", &key, |mut c, k| async move { c.get(k, None).await })
            .await?;
        let mut ids: Vec<i64> = Vec::new();
        if lease.etcd_lease != 0 {
            ids.push(lease.etcd_lease);
        }
        if let Some(kv) = resp.kvs().first() {
            let ours = LeaseAttrs::from_json(&String::from_utf8_lossy(kv.value()))
                .map(|a| a.same_node(&lease.attrs))
                .unwrap_or(false);
            if ours {
                if kv.lease() != 0 && !ids.contains(&kv.lease()) {
                    ids.push(kv.lease());
                }
                self.delete_if_unchanged(&key, kv.mod_revision()).await?;
                log::info!("released lease {key}");
            } else {
                log::warn!("lease {key} no longer carries our {}; leaving it", lease.attrs.node_address());
                ids.retain(|id| *id != kv.lease());
            }
        }
        for id in ids {
            self.revoke_quietly(id).await;
        }
        Ok(())
    }

    // ---- helpers ----

    /// Reads our key: is it still ours? Also returns the header revision.
    pub(super) async fn check_own(&self, lease: &Lease) -> Result<(Own, i64), EtcdError> {
        let key = self.key_of(lease);
        let resp = self
            .conn
            .run("read", &key, |mut c, k| async move { c.get(k, None).await })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let kv = match resp.kvs().first() {
            None => return Ok((Own::Lost("the key was deleted".into()), rev)),
            Some(kv) => kv,
        };
        match LeaseAttrs::from_json(&String::from_utf8_lossy(kv.value())) {
            Ok(a) if a.same_node(&lease.attrs) => Ok((Own::Ours { etcd_lease: kv.lease() }, rev)),
            Ok(a) => Ok((Own::Lost(format!("the key now carries {}", a.node_address())), rev)),
            Err(e) => Ok((Own::Lost(format!("the key now holds an invalid value ({e})")), rev)),
        }
    }

    async fn grant(&self) -> Result<(i64, i64), EtcdError> {
        let ttl = self.lease_ttl.as_secs() as i64;
        let dir = subnets_prefix(&self.conn.settings.prefix);
        let resp = self
            .conn
            .run("lease grant", &dir, move |mut c, _| async move { c.lease_grant(ttl, None).await })
            .await?;
        Ok((resp.id(), resp.ttl()))
    }

    /// Put-if-absent, and only if no other key holds `subnet` (IPv4): the
    /// IPv4-only key `…/A-L` and every dual-stack key `…/A-L&…` (a mixed
    /// cluster has both kinds). The revision of the put, `None` when any of
    /// them exists.
    async fn create(&self, key: &str, value: &str, lease_id: i64, subnet: Ipv4Net) -> Result<Option<i64>, EtcdError> {
        let val = value.to_string();
        let v4_guard = (subnet != EMPTY_IPV4_SUBNET).then(|| subnet_key(&self.conn.settings.prefix, subnet));
        let resp = self
            .conn
            .run("create", key, move |mut c, k| {
                let mut when = vec![Compare::version(k.clone(), CompareOp::Equal, 0)];
                if let Some(v4) = &v4_guard {
                    when.push(Compare::version(v4.clone(), CompareOp::Equal, 0));
                    when.push(Compare::version(format!("{v4}&"), CompareOp::Equal, 0).with_prefix());
                }
                let txn = Txn::new()
                    .when(when)
                    .and_then(vec![TxnOp::put(k, val.clone(), Some(PutOptions::new().with_lease(lease_id)))]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded().then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Whether a key other than `key` (ours, created at `revision`) holds an
    /// IPv6 subnet overlapping `sn` and was created first.
    async fn ipv6_taken_before(&self, key: &str, sn: Ipv6Net, revision: i64) -> Result<bool, EtcdError> {
        let entries = self.entries(&self.list().await?);
        Ok(entries.iter().any(|e| {
            e.key != key && e.create_revision < revision && e.ipv6_subnet.is_some_and(|t| Subnet::overlaps(&t, &sn))
        }))
    }

    async fn delete_if_unchanged(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        let resp = self
            .conn
            .run("delete", key, move |mut c, k| {
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(k.clone(), CompareOp::Equal, mod_revision)])
                    .and_then(vec![TxnOp::delete(k, None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// One keep-alive of `id`; its remaining TTL, or `None` if it is gone.
    async fn keep_alive_once(&self, key: &str, id: i64) -> Result<Option<i64>, EtcdError> {
        let alive = self
            .conn
            .run("lease keep-alive", key, move |mut c, _| async move {
                match c.lease_keep_alive(id).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_lease_not_found(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        if !alive {
            return Ok(None);
        }
        let ttl = self
            .conn
            .run("lease time-to-live", key, move |mut c, _| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?
            .ttl();
        Ok((ttl > 0).then_some(ttl))
    }

    pub(super) async fn revoke_quietly(&self, id: i64) {
        let dir = subnets_prefix(&self.conn.settings.prefix);
        if let Err(e) = self
            .conn
            .run("lease revoke", &dir, move |mut c, _| async move { c.lease_revoke(id).await })
            .await
        {
            match &e {
                EtcdError::Request { source, .. } if is_lease_not_found(source) => {}
                _ => log::debug!("revoking etcd lease {id:x}: {e}"),
            }
        }
    }

    /// A watch on our key from `start_revision`, once etcd confirmed it.
    pub(super) async fn watch_key(&self, key: &str, start_revision: i64) -> Result<WatchStream, EtcdError> {
        self.conn
            .run_until("watch", key, Duration::from_secs(3), move |mut c, k| async move {
                let mut ws = c
                    .watch(k, Some(WatchOptions::new().with_start_revision(start_revision)))
                    .await?;
                match ws.message().await? {
                    Some(r) if r.created() && !r.canceled() => Ok(ws),
                    Some(r) => Err(etcd_client::Error::WatchError(format!(
                        "watch not created: {}",
                        r.cancel_reason()
                    ))),
                    None => Err(etcd_client::Error::WatchError("watch stream closed".into())),
                }
            })
            .await
    }
}

/// A subnet of either family, for [`Taken`] and [`pick_random`].
trait Subnet: Copy + Eq + Hash + std::fmt::Display {
    fn overlaps(&self, other: &Self) -> bool;
}

impl Subnet for Ipv4Net {
    fn overlaps(&self, other: &Self) -> bool {
        self.contains(&other.network()) || other.contains(&self.network())
    }
}

impl Subnet for Ipv6Net {
    fn overlaps(&self, other: &Self) -> bool {
        self.contains(&other.network()) || other.contains(&self.network())
    }
}

/// The subnets in use, for overlap checks: same-length ones hashed, the
/// (rare) others scanned.
struct Taken<S> {
    by_net: HashSet<S>,
    all: Vec<S>,
}

impl<S: Subnet> Taken<S> {
    fn new(subnets: impl Iterator<Item = S>) -> Taken<S> {
        let all: Vec<S> = subnets.collect();
        Taken {
            by_net: all.iter().copied().collect(),
            all,
        }
    }

    fn overlaps(&self, sn: S) -> bool {
        self.by_net.contains(&sn) || self.all.iter().any(|t| t.overlaps(&sn))
    }
}

/// Whether a previous subnet may be taken again (it fits the config and no
/// lease holds it); says why not when not.
fn keep_previous<S: Subnet>(p: S, compatible: bool, taken: &Taken<S>, ranges: impl Fn() -> String) -> bool {
    if !compatible {
        log::warn!("previous subnet {p} does not fit the network config ({}); ignoring it", ranges());
        false
    } else if taken.overlaps(p) {
        log::info!("previous subnet {p} is leased by another node; picking another");
        false
    } else {
        true
    }
}

/// A random one among the first [`RANDOM_POOL`] free candidates (flannel's
/// choice), `None` when none is free.
fn pick_random<S: Subnet>(candidates: impl Iterator<Item = S>, taken: &Taken<S>) -> Option<S> {
    let free: Vec<S> = candidates.filter(|s| !taken.overlaps(*s)).take(RANDOM_POOL).collect();
    (!free.is_empty()).then(|| free[rand::rng().random_range(0..free.len())])
}

/// The ranges leases are taken from, for messages.
fn describe_ranges(cfg: &NetworkConfig) -> String {
    let mut parts = Vec::new();
    if cfg.enable_ipv4 {
        parts.push(format!(
            "Network {}, /{} between {} and {}",
            cfg.network, cfg.subnet_len, cfg.subnet_min, cfg.subnet_max
        ));
    }
    if let Some(v6) = &cfg.ipv6 {
        parts.push(format!(
            "IPv6Network {}, /{} between {} and {}",
            v6.network, v6.subnet_len, v6.subnet_min, v6.subnet_max
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_overlaps() {
        let t: Taken<Ipv4Net> = Taken::new(["10.0.1.0/24", "10.0.8.0/22"].iter().map(|s| s.parse().unwrap()));
        assert!(t.overlaps("10.0.1.0/24".parse().unwrap()));
        assert!(t.overlaps("10.0.9.0/24".parse().unwrap()));
        assert!(t.overlaps("10.0.0.0/16".parse().unwrap()));
        assert!(!t.overlaps("10.0.2.0/24".parse().unwrap()));
    }
}
