//! Everyone's leases as typed events: one range request lists
//! `<prefix>/subnets/` ([`LeaseEvent::Snapshot`]), then a watch from the
//! list's revision + 1 streams [`LeaseEvent::Added`] / [`LeaseEvent::Removed`].
//! The agent's start hands over the listing it acquired its lease with
//! ([`spawn_lease_watch_from`]), so the first Snapshot costs no listing.
//!
//! Doing better than flannel:
//! - no per-lease RPC (flannel calls TimeToLive per lease on every list and
//!   watch event): leases carry `expiration: None`, expiry arrives as a DELETE;
//! - a watch that fell behind compaction (canceled with `compact_revision`)
//!   re-lists once and sends a fresh Snapshot, no hot loop (flannel #2470);
//! - a broken watch is resumed from the last revision seen when etcd is still
//!   there; when etcd is unreachable the task backs off exponentially (capped at
//!   about 5 s, with jitter; never a busy loop, flannel #2171) and re-lists with
//!   a fresh Snapshot when it is back;
//! - malformed keys/values (bad JSON, wrong types, not a subnet key, a subnet
//!   outside Network or of another length) are skipped with a warning naming
//!   the key; if the key held a valid lease before, its subnet is Removed.
//!
//! Semantic checks that need our own lease (overlaps with ours, our PublicIP)
//! are the caller's business.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, KeyValue, WatchOptions, WatchStream};
use tokio::sync::mpsc;

use crate::config::NetworkConfig;
use crate::etcd::backoff::Backoff;
use crate::etcd::client::{Conn, EtcdSettings, MAX_MESSAGE};
use crate::etcd::error::{describe, EtcdError};
use crate::etcd::lease::LeaseListing;
use crate::etcd::registry::{
    check_lease_against_config, subnets_prefix, Lease, LeaseAttrs, LeaseId, RegistryError,
};
use crate::etcd::status::EtcdStatus;

/// What the watch task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The full state: replace everything known with this.
    Snapshot(Vec<Lease>),
    /// A new lease, or a lease whose value changed.
    Added(Lease),
    /// A lease went away (deleted, expired, or replaced by an invalid value),
    /// named by its key's subnets (an IPv6-only lease's IPv4 subnet is the
    /// empty `0.0.0.0/0` they all share).
    Removed(LeaseId),
}

/// Events buffered between the task and the consumer.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;
/// Progress requests keep `last_sync` fresh on a quiet cluster.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// Starts the lease watch; see the module docs. The task ends when the
/// receiver is dropped.
pub fn spawn_lease_watch(s: EtcdSettings, cfg: NetworkConfig) -> mpsc::Receiver<LeaseEvent> {
    spawn_lease_watch_with_status(s, cfg, EtcdStatus::new())
}

/// [`spawn_lease_watch`], reporting the link state into `status`
/// (connected flag, last sync time, counters) for /readyz and metrics.
pub fn spawn_lease_watch_with_status(
    s: EtcdSettings,
    cfg: NetworkConfig,
    status: Arc<EtcdStatus>,
) -> mpsc::Receiver<LeaseEvent> {
    spawn(s, cfg, status, None)
}

/// [`spawn_lease_watch_with_status`], whose first Snapshot is `listing` (of
/// the same `<prefix>/subnets/`, made by the caller) instead of a listing of
/// its own. It watches from the listing's revision + 1, so a change made
/// after the listing still arrives, as an event. Later Snapshots (after
/// compaction or an outage) list afresh as usual.
pub fn spawn_lease_watch_from(
    s: EtcdSettings,
    cfg: NetworkConfig,
    status: Arc<EtcdStatus>,
    listing: LeaseListing,
) -> mpsc::Receiver<LeaseEvent> {
    spawn(s, cfg, status, Some(listing))
}

fn spawn(
    s: EtcdSettings,
    cfg: NetworkConfig,
    status: Arc<EtcdStatus>,
    handed_over: Option<LeaseListing>,
) -> mpsc::Receiver<LeaseEvent> {
    let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let w = Watcher {
        prefix: s.prefix.clone(),
        dir: subnets_prefix(&s.prefix),
        settings: s,
        cfg,
        status,
        tx,
        handed_over,
        known: HashMap::new(),
        warned: HashMap::new(),
    };
    tokio::spawn(w.run());
    rx
}

/// Why the watch loop stopped.
enum Break {
    /// The receiver is gone: end the task.
    Closed,
    /// Re-list now (compaction): no backoff.
    Relist,
}

struct Watcher {
    settings: EtcdSettings,
    prefix: String,
    /// `<prefix>/subnets/`, made once (a mass expiry is thousands of keys).
    dir: String,
    cfg: NetworkConfig,
    status: Arc<EtcdStatus>,
    tx: mpsc::Sender<LeaseEvent>,
    /// The start's listing, until the first session uses it.
    handed_over: Option<LeaseListing>,
    /// Valid leases as last reported (to report Removed only for those and
    /// to skip re-puts of identical values).
    known: HashMap<LeaseId, LeaseAttrs>,
    /// Bad keys already warned about, with the revision warned at.
    warned: HashMap<String, i64>,
}

impl Watcher {
    async fn run(mut self) {
        let mut backoff = Backoff::outage();
        let mut conn: Option<Conn> = None;
        let mut failures: u32 = 0;
        let mut last_relist: Option<Instant> = None;
        loop {
            if self.tx.is_closed() {
                return;
            }
            let outcome = match &conn {
                None => match Conn::connect(&self.settings).await {
                    Ok(c) => {
                        conn = Some(c);
                        continue;
                    }
                    Err(e) => Err(e),
                },
                Some(c) => {
                    let c = c.clone();
                    self.session(&c, &mut backoff, &mut failures).await
                }
            };
            match outcome {
                Ok(Break::Closed) => return,
                Ok(Break::Relist) => {
                    // Re-list at once, unless that is all we have been doing.
                    let hot = last_relist.is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                    last_relist = Some(Instant::now());
                    if hot {
                        tokio::select! {
                            _ = self.tx.closed() => return,
                            _ = backoff.wait() => {}
                        }
                    }
                    continue;
                }
                Err(e) => {
                    self.status.add_error();
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(10) {
                        log::warn!("etcd lease watch: {e} (attempt {failures}); retrying with backoff");
                    } else {
                        log::debug!("etcd lease watch: {e} (attempt {failures})");
                    }
                    // Several failures in a row: start over with a fresh client
                    // (e.g. a changed auth token or stale connections).
                    if failures.is_multiple_of(3) {
                        conn = None;
                    }
                }
            }
            self.status.set_connected(false);
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = backoff.wait() => {}
            }
        }
    }

    /// One list + watch. Returns how it ended.
    async fn session(&mut self, conn: &Conn, backoff: &mut Backoff, failures: &mut u32) -> Result<Break, EtcdError> {
        let dir = subnets_prefix(&self.prefix);
        let listing = self.listing(conn, &dir).await?;
        let rev = listing.revision;
        let mut leases = Vec::with_capacity(listing.entries.len());
        self.known.clear();
        for other in listing.others {
            self.skip(&other.key, other.mod_revision, &other.why);
        }
        for e in listing.entries {
            if let Some(l) = self.accept(&e.key, e.mod_revision, e.lease) {
                self.known.insert(l.id(), l.attrs.clone());
                leases.push(l);
            }
        }
        let n = leases.len();
        // Status first, so that whoever gets the Snapshot sees it counted.
        self.status.add_snapshot();
        self.status.touch();
        self.status.set_connected(true);
        if self.tx.send(LeaseEvent::Snapshot(leases)).await.is_err() {
            return Ok(Break::Closed);
        }
        if *failures > 0 {
            log::info!("etcd is back: listed {n} leases at revision {rev}");
        } else {
            log::info!("listed {n} leases under {dir} at revision {rev}");
        }
        *failures = 0;
        backoff.reset();

        let mut next_rev = rev + 1;
        let mut first = true;
        loop {
            // Open (or resume) the watch from next_rev.
            let budget = if first { Duration::from_secs(6) } else { Duration::from_secs(2) };
            first = false;
            let mut ws = match open_watch(conn, &dir, next_rev, budget).await {
                Ok(ws) => ws,
                Err(OpenError::Compacted(c)) => {
                    log::warn!(
                        "lease watch from revision {next_rev} is past compaction (compacted at {c}); re-listing"
                    );
                    return Ok(Break::Relist);
                }
                Err(OpenError::Etcd(e)) => return Err(e),
            };
            self.status.set_connected(true);
            let opened = Instant::now();
            let end = self.pump(&mut ws, &mut next_rev).await;
            match end {
                Pump::Closed => return Ok(Break::Closed),
                Pump::Compacted(c) => {
                    log::warn!(
                        "lease watch fell behind compaction (needed revision {next_rev}, compacted at {c}); \
                         re-listing"
                    );
                    return Ok(Break::Relist);
                }
                Pump::Broken(why) => {
                    self.status.add_error();
                    self.status.set_connected(false);
                    log::info!("lease watch broke ({why}); resuming from revision {next_rev}");
                    // A watch that dies right away must not turn into a loop.
                    if opened.elapsed() < Duration::from_secs(1) {
                        tokio::select! {
                            _ = self.tx.closed() => return Ok(Break::Closed),
                            _ = backoff.wait() => {}
                        }
                    } else {
                        backoff.reset();
                    }
                }
            }
        }
    }

    /// The keys to snapshot and their revision: the listing handed over at
    /// start for the first session, a fresh listing for every later one
    /// (they follow compaction or an outage, which the old one predates).
    async fn listing(&mut self, conn: &Conn, dir: &str) -> Result<LeaseListing, EtcdError> {
        match self.handed_over.take() {
            Some(l) => Ok(l),
            None => {
                let (kvs, rev) = conn.list_prefix(dir).await?;
                Ok(LeaseListing::decode(&self.prefix, kvs, rev))
            }
        }
    }

    /// Reads watch responses until the watch ends.
    async fn pump(&mut self, ws: &mut WatchStream, next_rev: &mut i64) -> Pump {
        let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
        progress.tick().await;
        loop {
            let msg = tokio::select! {
                _ = self.tx.closed() => return Pump::Closed,
                _ = progress.tick() => {
                    if let Err(e) = ws.request_progress().await {
                        return Pump::Broken(describe(&e));
                    }
                    continue;
                }
                m = ws.message() => m,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return Pump::Broken("stream closed".into()),
                Err(e) => return Pump::Broken(describe(&e)),
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return Pump::Compacted(resp.compact_revision());
                }
                return Pump::Broken(format!("canceled by etcd: {}", resp.cancel_reason()));
            }
            self.status.touch();
            if resp.events().is_empty() {
                // "created" notice or a progress report.
                if !resp.created() {
                    if let Some(h) = resp.header() {
                        *next_rev = (*next_rev).max(h.revision() + 1);
                    }
                }
                continue;
            }
            let mut out = Vec::new();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                *next_rev = (*next_rev).max(kv.mod_revision() + 1);
                match ev.event_type() {
                    EventType::Put => match self.parse_kv(kv) {
                        Some(l) => {
                            if self.known.get(&l.id()) != Some(&l.attrs) {
                                self.known.insert(l.id(), l.attrs.clone());
                                out.push(LeaseEvent::Added(l));
                            }
                        }
                        None => {
                            if let Some(id) = key_id(&self.dir, kv) {
                                if self.known.remove(&id).is_some() {
                                    out.push(LeaseEvent::Removed(id));
                                }
                            }
                        }
                    },
                    EventType::Delete => {
                        if let Some(id) = key_id(&self.dir, kv) {
                            if self.known.remove(&id).is_some() {
                                out.push(LeaseEvent::Removed(id));
                            }
                        }
                        if let Ok(k) = kv.key_str() {
                            self.warned.remove(k);
                        }
                    }
                }
            }
            self.status.add_events(out.len() as u64);
            // Permits for a whole chunk at once: one wake-up of the consumer
            // per chunk, not per event (a mass expiry is one response of
            // thousands of deletes).
            let mut out = out.into_iter().peekable();
            while out.peek().is_some() {
                let permits = match self.tx.reserve_many(out.len().min(EVENT_CHANNEL_CAPACITY)).await {
                    Ok(p) => p,
                    Err(_) => return Pump::Closed,
                };
                for (permit, ev) in permits.zip(&mut out) {
                    permit.send(ev);
                }
            }
        }
    }

    /// A valid lease from a listed/watched key, or `None` (with a warning
    /// naming the key, once per revision of that key).
    fn parse_kv(&mut self, kv: &KeyValue) -> Option<Lease> {
        let key = match kv.key_str() {
            Ok(k) => k,
            Err(_) => {
                self.skip(&String::from_utf8_lossy(kv.key()), kv.mod_revision(), "the key is not UTF-8");
                return None;
            }
        };
        let lease = Lease::from_kv(&self.prefix, key, kv.value(), kv.lease());
        self.accept(key, kv.mod_revision(), lease)
    }

    /// A decoded key's lease if it is valid for our network config, else
    /// `None` (with a warning naming the key, once per revision of it).
    fn accept(&mut self, key: &str, rev: i64, lease: Result<Lease, RegistryError>) -> Option<Lease> {
        match lease.and_then(|l| check_lease_against_config(key, l.subnet, &self.cfg).map(|_| l)) {
            Ok(l) => {
                if !self.warned.is_empty() {
                    self.warned.remove(key);
                }
                Some(l)
            }
            Err(e) => {
                self.skip(key, rev, &e.to_string());
                None
            }
        }
    }

    fn skip(&mut self, key: &str, rev: i64, why: &str) {
        self.status.add_skipped();
        if self.warned.get(key) == Some(&rev) {
            log::debug!("skipping {key:?}: {why}");
            return;
        }
        if self.warned.len() > 10_000 {
            self.warned.clear();
        }
        self.warned.insert(key.to_string(), rev);
        log::warn!("skipping {key:?}: {why}");
    }
}

enum Pump {
    Closed,
    Compacted(i64),
    Broken(String),
}

enum OpenError {
    Compacted(i64),
    Etcd(EtcdError),
}

/// The lease a key under `dir` (`<prefix>/subnets/`) names.
fn key_id(dir: &str, kv: &KeyValue) -> Option<LeaseId> {
    LeaseId::from_key_name(kv.key_str().ok()?.strip_prefix(dir)?)
}

/// Opens a prefix watch from `start` and waits for etcd's "created" notice.
async fn open_watch(conn: &Conn, dir: &str, start: i64, budget: Duration) -> Result<WatchStream, OpenError> {
    let r = conn
        .run_until("watch", dir, budget, move |c, k| async move {
            let mut ws = c
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .watch(k, Some(WatchOptions::new().with_prefix().with_start_revision(start)))
                .await?;
            // The first message is the "created" notice; a compacted start
            // revision may also come straight back as canceled.
            match ws.message().await? {
                Some(r) if r.canceled() => Ok(Err(r.compact_revision())),
                Some(_) => Ok(Ok(ws)),
                None => Err(etcd_client::Error::WatchError("watch stream closed".into())),
            }
        })
        .await;
    match r {
        Ok(Ok(ws)) => Ok(ws),
        Ok(Err(c)) if c > 0 => Err(OpenError::Compacted(c)),
        Ok(Err(_)) => Err(OpenError::Etcd(EtcdError::Request {
            op: "watch",
            key: dir.to_string(),
            source: etcd_client::Error::WatchError("watch canceled by etcd".into()),
        })),
        Err(e) => Err(OpenError::Etcd(e)),
    }
}
