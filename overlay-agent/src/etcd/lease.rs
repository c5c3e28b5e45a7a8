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
//! - renew at expiry minus the renew margin (a keep-alive of the same etcd
//!   lease: the TTL goes back to the granted 86400 s);
//! - reservations (a key an administrator put without an etcd lease) are used
//!   as they are and never renewed, as flannel does.
//!
//! [`SubnetManager`]'s request methods take `&self` (the client handle is
//! shared and cheap to clone), so callers can wrap them in retry closures.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, WatchOptions, WatchStream};
use ipnet::Ipv4Net;
use rand::Rng;

use crate::config::NetworkConfig;
use crate::etcd::client::{Conn, EtcdSettings};
use crate::etcd::error::{is_lease_not_found, EtcdError};
use crate::etcd::registry::{
    config_key, parse_subnet_key_name, subnet_key, subnets_prefix, Lease, LeaseAttrs, RegistryError,
};

/// flannel's lease TTL: 24 h.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How many list-and-create rounds [`SubnetManager::acquire`] makes before
/// giving up (each lost race re-lists and picks another subnet).
pub const MAX_ACQUIRE_ATTEMPTS: u32 = 16;
/// A new subnet is picked at random among this many first free ones.
const RANDOM_POOL: usize = 100;

/// One lease key under `<prefix>/subnets/` as listed: its subnet (the key
/// parsed) and its value (parsed, or why not).
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) subnet: Ipv4Net,
    pub(crate) lease: Result<Lease, RegistryError>,
    pub(crate) mod_revision: i64,
}

/// A listed key that is no lease key, and why.
pub(crate) struct OtherKey {
    pub(crate) key: String,
    pub(crate) mod_revision: i64,
    pub(crate) why: String,
}

/// Every key under `<prefix>/subnets/` as of one etcd revision, decoded
/// once: made at start by [`SubnetManager::list`] and shared by finding our
/// lease, acquiring it and the lease watch's first Snapshot. (Decoding is
/// most of a start's CPU at a full /8: 65,534 JSON values; the raw values
/// are dropped as they are decoded.)
pub struct LeaseListing {
    pub(crate) entries: Vec<Entry>,
    pub(crate) others: Vec<OtherKey>,
    /// The etcd revision the keys were read at: a watch from `revision + 1`
    /// misses nothing that changed since.
    pub(crate) revision: i64,
}

impl LeaseListing {
    /// Decodes the keys of a listing of `<prefix>/subnets/`.
    pub(crate) fn decode(prefix: &str, kvs: Vec<KeyValue>, revision: i64) -> LeaseListing {
        let dir = subnets_prefix(prefix);
        let mut entries = Vec::with_capacity(kvs.len());
        let mut others = Vec::new();
        for kv in kvs {
            let mod_revision = kv.mod_revision();
            let key = match kv.key_str() {
                Ok(k) => k,
                Err(_) => {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    others.push(OtherKey { key, mod_revision, why: "the key is not UTF-8".into() });
                    continue;
                }
            };
            let subnet = match key.strip_prefix(dir.as_str()).and_then(parse_subnet_key_name) {
                Some(s) => s,
                None => {
                    let why = RegistryError::NotASubnetKey { key: key.to_string() }.to_string();
                    others.push(OtherKey { key: key.to_string(), mod_revision, why });
                    continue;
                }
            };
            let lease = Lease::from_kv(prefix, key, kv.value(), kv.lease());
            entries.push(Entry { key: key.to_string(), subnet, lease, mod_revision });
        }
        LeaseListing { entries, others, revision }
    }

    /// How many keys were listed (valid leases or not).
    pub fn len(&self) -> usize {
        self.entries.len() + self.others.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// The key of `subnet`'s lease.
    pub fn lease_key(&self, subnet: Ipv4Net) -> String {
        subnet_key(&self.conn.settings.prefix, subnet)
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
        Ok(LeaseListing::decode(&self.conn.settings.prefix, kvs, revision))
    }

    /// Every lease under `<prefix>/subnets/` with a valid key and value (any
    /// subnet length), with the revision of the read.
    pub async fn list_leases(&self) -> Result<(Vec<Lease>, i64), EtcdError> {
        let listing = self.list().await?;
        let leases = listing.entries.into_iter().filter_map(|e| e.lease.ok()).collect();
        Ok((leases, listing.revision))
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
        let mut found = listing
            .entries
            .iter()
            .filter_map(|e| e.lease.as_ref().ok())
            .filter(|l| l.attrs.public_ip == public_ip);
        let mut lease = match found.next() {
            Some(l) => l.clone(),
            None => return Ok(None),
        };
        if lease.etcd_lease != 0 {
            let id = lease.etcd_lease;
            let key = self.lease_key(lease.subnet);
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
        previous_subnet: Option<Ipv4Net>,
    ) -> Result<Lease, EtcdError> {
        self.acquire_from(None, cfg, attrs, previous_subnet).await
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
        previous_subnet: Option<Ipv4Net>,
    ) -> Result<Lease, EtcdError> {
        let mut granted: Option<(i64, i64)> = None;
        let result = self.acquire_inner(listing, cfg, attrs, previous_subnet, &mut granted).await;
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
        previous_subnet: Option<Ipv4Net>,
        granted: &mut Option<(i64, i64)>,
    ) -> Result<Lease, EtcdError> {
        let value = attrs.to_json();
        let mut preferred = previous_subnet;
        for attempt in 1..=MAX_ACQUIRE_ATTEMPTS {
            // Only the first attempt may use the given listing: a retry
            // follows a change made since, which it must see.
            let fresh;
            let entries = match listing.take() {
                Some(l) => &l.entries,
                None => {
                    fresh = self.list().await?;
                    &fresh.entries
                }
            };

            // 1. A lease that already carries our PublicIP.
            let mut reuse: Option<&Entry> = None;
            for e in entries {
                let Ok(l) = &e.lease else { continue };
                if l.attrs.public_ip != attrs.public_ip {
                    continue;
                }
                if !cfg.is_compatible_subnet(l.subnet) {
                    log::info!(
                        "lease {} carries our PublicIP {} but does not fit the network config \
                         (Network {}, /{} between {} and {}); deleting it",
                        e.key,
                        attrs.public_ip,
                        cfg.network,
                        cfg.subnet_len,
                        cfg.subnet_min,
                        cfg.subnet_max
                    );
                    self.delete_if_unchanged(&e.key, e.mod_revision).await?;
                } else if reuse.is_none() {
                    reuse = Some(e);
                } else {
                    log::warn!(
                        "lease {} also carries our PublicIP {}; using {} and leaving it to expire",
                        e.key,
                        attrs.public_ip,
                        reuse.map(|r| r.key.as_str()).unwrap_or("")
                    );
                }
            }
            if let Some(e) = reuse {
                match self.reuse(e, attrs, &value).await? {
                    Some(lease) => return Ok(lease),
                    None => {
                        preferred = Some(e.subnet);
                        continue;
                    }
                }
            }

            // 2. The previous subnet, 3. a random free one.
            let taken = Taken::new(entries.iter().map(|e| e.subnet));
            let mut chosen = None;
            if let Some(p) = preferred {
                if !cfg.is_compatible_subnet(p) {
                    log::warn!(
                        "previous subnet {p} does not fit the network config (Network {}, /{} \
                         between {} and {}); ignoring it",
                        cfg.network,
                        cfg.subnet_len,
                        cfg.subnet_min,
                        cfg.subnet_max
                    );
                    preferred = None;
                } else if taken.overlaps(p) {
                    log::info!("previous subnet {p} is leased by another node; picking another");
                    preferred = None;
                } else {
                    chosen = Some(p);
                }
            }
            let subnet = match chosen {
                Some(s) => s,
                None => {
                    let free: Vec<Ipv4Net> = cfg
                        .candidate_subnets()
                        .filter(|s| !taken.overlaps(*s))
                        .take(RANDOM_POOL)
                        .collect();
                    if free.is_empty() {
                        return Err(EtcdError::OutOfSubnets {
                            network: cfg.network,
                            subnet_len: cfg.subnet_len,
                            subnet_min: cfg.subnet_min,
                            subnet_max: cfg.subnet_max,
                            total: cfg.subnet_count(),
                            subnets: subnets_prefix(&self.conn.settings.prefix),
                        });
                    }
                    free[rand::rng().random_range(0..free.len())]
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
            let key = self.lease_key(subnet);
            if self.create(&key, &value, lease_id).await? {
                log::info!(
                    "acquired lease {key} for PublicIP {} (etcd lease {lease_id:x}, TTL {ttl} s)",
                    attrs.public_ip
                );
                return Ok(Lease {
                    subnet,
                    attrs: attrs.clone(),
                    etcd_lease: lease_id,
                    expiration: Some(SystemTime::now() + Duration::from_secs(ttl.max(0) as u64)),
                });
            }
            log::info!("subnet {subnet} was taken by another node meanwhile (attempt {attempt}); trying another");
            if preferred == Some(subnet) {
                preferred = None;
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
            "reusing lease {} (found with our PublicIP {}{})",
            e.key,
            attrs.public_ip,
            if etcd_lease == 0 { ", a reservation" } else { "" }
        );
        Ok(Some(Lease {
            subnet: e.subnet,
            attrs: attrs.clone(),
            etcd_lease,
            expiration,
        }))
    }

    /// Extends our lease to its full TTL again. [`EtcdError::LeaseLost`] when
    /// the key was deleted, now carries another PublicIP, or its etcd lease
    /// expired: the caller should acquire again.
    pub async fn renew(&self, lease: &Lease) -> Result<Lease, EtcdError> {
        let key = self.lease_key(lease.subnet);
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
        let key = self.lease_key(lease.subnet);
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
                .map(|a| a.public_ip == lease.attrs.public_ip)
                .unwrap_or(false);
            if ours {
                if kv.lease() != 0 && !ids.contains(&kv.lease()) {
                    ids.push(kv.lease());
                }
                self.delete_if_unchanged(&key, kv.mod_revision()).await?;
                log::info!("released lease {key}");
            } else {
                log::warn!("lease {key} no longer carries our PublicIP {}; leaving it", lease.attrs.public_ip);
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
        let key = self.lease_key(lease.subnet);
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
            Ok(a) if a.public_ip == lease.attrs.public_ip => Ok((Own::Ours { etcd_lease: kv.lease() }, rev)),
            Ok(a) => Ok((Own::Lost(format!("the key now carries PublicIP {}", a.public_ip)), rev)),
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

    /// Put-if-absent. `Ok(false)` when the key exists.
    async fn create(&self, key: &str, value: &str, lease_id: i64) -> Result<bool, EtcdError> {
        let val = value.to_string();
        let resp = self
            .conn
            .run("create", key, move |mut c, k| {
                let txn = Txn::new()
                    .when(vec![Compare::version(k.clone(), CompareOp::Equal, 0)])
                    .and_then(vec![TxnOp::put(
                        k,
                        val.clone(),
                        Some(PutOptions::new().with_lease(lease_id)),
                    )]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
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

/// The subnets in use, for overlap checks: same-length ones hashed, the
/// (rare) others scanned.
struct Taken {
    by_net: HashSet<Ipv4Net>,
    all: Vec<Ipv4Net>,
}

impl Taken {
    fn new(subnets: impl Iterator<Item = Ipv4Net>) -> Taken {
        let all: Vec<Ipv4Net> = subnets.collect();
        Taken {
            by_net: all.iter().copied().collect(),
            all,
        }
    }

    fn overlaps(&self, sn: Ipv4Net) -> bool {
        if self.by_net.contains(&sn) {
            return true;
        }
        self.all
            .iter()
            .any(|t| t.contains(&sn.network()) || sn.contains(&t.network()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_overlaps() {
        let t = Taken::new(["10.0.1.0/24", "10.0.8.0/22"].iter().map(|s| s.parse().unwrap()));
        assert!(t.overlaps("10.0.1.0/24".parse().unwrap()));
        assert!(t.overlaps("10.0.9.0/24".parse().unwrap()));
        assert!(t.overlaps("10.0.0.0/16".parse().unwrap()));
        assert!(!t.overlaps("10.0.2.0/24".parse().unwrap()));
    }
}
