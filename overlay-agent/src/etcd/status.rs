//! A small shared status of the etcd link, for /readyz and metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Updated by the lease watch task; read by anyone (lock-free).
#[derive(Debug, Default)]
pub struct EtcdStatus {
    connected: AtomicBool,
    /// Unix time in ms of the last moment we knew we were in sync (0: never).
    last_sync_ms: AtomicU64,
    snapshots: AtomicU64,
    events: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
}

impl EtcdStatus {
    pub fn new() -> Arc<EtcdStatus> {
        Arc::new(EtcdStatus::default())
    }

    /// True while the watch is established and the last list succeeded.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The last time a list or a watch response arrived from etcd.
    pub fn last_sync(&self) -> Option<SystemTime> {
        match self.last_sync_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Snapshots sent (1 at start, +1 per resync after compaction or outage).
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Added/Removed events sent.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// etcd errors seen (failed lists, broken watches).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Malformed keys/values skipped.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, c: bool) {
        self.connected.store(c, Ordering::Relaxed);
    }

    pub(crate) fn touch(&self) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1)
            .max(1);
        self.last_sync_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn add_snapshot(&self) {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }
}
