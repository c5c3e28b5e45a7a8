//! The lease keeper: keeps our lease for as long as the agent runs. It
//! renews the lease before it expires and watches its key; a key deleted by
//! someone, taken over, or whose etcd lease expired is taken back (flannel
//! exits instead, flannel #904).
//!
//! Renewal times are on the monotonic clock: the lease's expiration is wall
//! clock time (`now + TTL` when etcd answered), turned into a deadline once,
//! right after each renewal. Recomputing it from the wall clock later would
//! let a backward clock step (NTP, a VM resume) push the renewal past the
//! real expiry in etcd, which counts its TTL monotonically.

use std::time::{Duration, Instant, SystemTime};

use etcd_client::{EventType, WatchStream};
use tokio::sync::watch;

use crate::config::NetworkConfig;
use crate::etcd::backoff::Backoff;
use crate::etcd::error::{describe, EtcdError};
use crate::etcd::lease::{Own, PreviousSubnets, SubnetManager};
use crate::etcd::registry::{Lease, LeaseAttrs};

/// Background task keeping our lease. Renews at expiry minus `renew_margin`
/// (or halfway through when the TTL is shorter than the margin); when the key
/// is deleted by someone, taken over, or its etcd lease expired, logs it and
/// takes a lease back (the same subnet if still free, else a new one).
/// Publishes the current lease: receivers are notified when the subnet,
/// attributes or etcd lease change (not on plain renewals, which only update
/// the expiration). The task ends when every receiver is dropped.
pub fn spawn_lease_keeper(
    mgr: SubnetManager,
    cfg: NetworkConfig,
    lease: Lease,
    renew_margin: Duration,
    attrs: LeaseAttrs,
) -> watch::Receiver<Lease> {
    let (tx, rx) = watch::channel(lease.clone());
    tokio::spawn(Keeper { mgr, cfg, attrs, renew_margin, tx }.run(lease));
    rx
}

struct Keeper {
    mgr: SubnetManager,
    cfg: NetworkConfig,
    attrs: LeaseAttrs,
    renew_margin: Duration,
    tx: watch::Sender<Lease>,
}

/// What to do after keeping a lease stopped.
enum Next {
    /// Every receiver is gone: end the task.
    Closed,
    /// Read our key again and watch it from there.
    Recheck,
    /// The lease is lost: take one back.
    Reacquire,
}

/// Our key as read, and watched from just after that read.
enum Checked {
    Ours { etcd_lease: i64, watch: Box<WatchStream> },
    Lost(String),
}

impl Keeper {
    async fn run(self, mut lease: Lease) {
        let mut backoff = Backoff::outage();
        loop {
            match self.keep(&mut lease, &mut backoff).await {
                Next::Closed => return,
                Next::Recheck => {}
                Next::Reacquire => match self.reacquire(&lease).await {
                    Some(l) => lease = l,
                    None => return,
                },
            }
        }
    }

    /// Keeps `lease` (renewing it, watching its key) until that needs
    /// something else.
    async fn keep(&self, lease: &mut Lease, backoff: &mut Backoff) -> Next {
        let key = self.mgr.key_of(lease);
        let checked = tokio::select! {
            _ = self.tx.closed() => return Next::Closed,
            c = backoff.retry_all(format!("checking our lease {key}"), || self.check_and_watch(lease, &key)) => c,
        };
        let mut ws = match checked {
            Checked::Lost(reason) => {
                log::warn!("our lease {key} is lost: {reason}; taking a lease back");
                return Next::Reacquire;
            }
            Checked::Ours { etcd_lease, watch } => {
                lease.etcd_lease = etcd_lease;
                watch
            }
        };
        let mut retry_at: Option<Instant> = None;
        let mut renew_at = renew_deadline(lease, self.renew_margin, SystemTime::now(), Instant::now());
        let mut renew_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            let due = retry_at.or(renew_at);
            tokio::select! {
                _ = self.tx.closed() => return Next::Closed,
                _ = sleep_until_opt(due) => {
                    match self.mgr.renew(lease).await {
                        Ok(l) => {
                            log::debug!("renewed lease {key} (expires {:?})", l.expiration);
                            let changed = l.etcd_lease != lease.etcd_lease;
                            *lease = l;
                            self.publish(lease, changed);
                            renew_at = renew_deadline(lease, self.renew_margin, SystemTime::now(), Instant::now());
                            retry_at = None;
                            renew_backoff.reset();
                        }
                        Err(EtcdError::LeaseLost { reason, .. }) => {
                            log::warn!("our lease {key} is lost: {reason}; taking a lease back");
                            return Next::Reacquire;
                        }
                        // Not a retry loop of its own: the key's watch must
                        // be read while the renewal waits for etcd.
                        Err(e) => {
                            let d = renew_backoff.next_delay();
                            log::warn!("renewing lease {key} failed: {e}; retrying in {d:?}");
                            retry_at = Some(Instant::now() + d);
                        }
                    }
                }
                msg = ws.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) | Err(_) => {
                            let why = match msg { Err(e) => describe(&e), _ => "closed".into() };
                            log::info!("watch on our lease {key} broke ({why}); re-establishing");
                            return self.pause(backoff).await;
                        }
                    };
                    if resp.canceled() {
                        log::info!("watch on our lease {key} canceled ({}); re-establishing", resp.cancel_reason());
                        // Compaction: start over at once; anything else
                        // (e.g. permission denied) must not loop hot.
                        if resp.compact_revision() == 0 {
                            return self.pause(backoff).await;
                        }
                        return Next::Recheck;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        match ev.event_type() {
                            EventType::Delete => {
                                log::warn!(
                                    "our lease key {key} was deleted (by someone, or its etcd lease \
                                     expired); taking a lease back"
                                );
                                return Next::Reacquire;
                            }
                            EventType::Put => {
                                match LeaseAttrs::from_json(&String::from_utf8_lossy(kv.value())) {
                                    Ok(a) if a.same_node(&self.attrs) => {
                                        if kv.lease() != lease.etcd_lease {
                                            lease.etcd_lease = kv.lease();
                                            self.publish(lease, true);
                                        }
                                    }
                                    other => {
                                        let what = match other {
                                            Ok(a) => a.node_address(),
                                            Err(e) => format!("an invalid value ({e})"),
                                        };
                                        log::warn!(
                                            "our lease key {key} was overwritten with {what}; \
                                             taking another lease"
                                        );
                                        return Next::Reacquire;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reads our key, then watches it from just after that read.
    async fn check_and_watch(&self, lease: &Lease, key: &str) -> Result<Checked, EtcdError> {
        let (own, rev) = self.mgr.check_own(lease).await?;
        let etcd_lease = match own {
            Own::Lost(reason) => return Ok(Checked::Lost(reason)),
            Own::Ours { etcd_lease } => etcd_lease,
        };
        if etcd_lease != lease.etcd_lease {
            // Published before the watch is opened, as it is already true.
            // Not forced: when opening the watch fails and this runs again,
            // receivers have seen it already.
            self.publish(&Lease { etcd_lease, ..lease.clone() }, false);
        }
        let watch = self.mgr.watch_key(key, rev + 1).await?;
        Ok(Checked::Ours {
            etcd_lease,
            watch: Box::new(watch),
        })
    }

    /// Acquires until it works (backing off between failures, whatever they
    /// are: there is no one to give up to); `None` when every receiver is
    /// gone.
    async fn reacquire(&self, old: &Lease) -> Option<Lease> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let l = tokio::select! {
            _ = self.tx.closed() => return None,
            l = backoff.retry_all("acquiring a lease", || self.mgr.acquire(&self.cfg, &self.attrs, previous(old))) => l,
        };
        if l.subnet == old.subnet && l.ipv6_subnet == old.ipv6_subnet {
            log::info!("took lease {} back", self.mgr.key_of(&l));
        } else {
            log::warn!(
                "lease {} could not be taken back; now using {}",
                self.mgr.key_of(old),
                self.mgr.key_of(&l)
            );
        }
        if old.etcd_lease != 0 && old.etcd_lease != l.etcd_lease {
            self.mgr.revoke_quietly(old.etcd_lease).await;
        }
        self.publish(&l, true);
        Some(l)
    }

    /// Makes `lease` the current one; receivers are notified when `notify`
    /// or when it differs from the current one in more than its expiration.
    fn publish(&self, lease: &Lease, notify: bool) {
        let l = lease.clone();
        self.tx.send_if_modified(|cur| {
            let changed = notify
                || cur.subnet != l.subnet
                || cur.ipv6_subnet != l.ipv6_subnet
                || cur.attrs != l.attrs
                || cur.etcd_lease != l.etcd_lease;
            *cur = l;
            changed
        });
    }

    /// Sleeps one backoff step (the client re-dials by itself), then has our
    /// key read again.
    async fn pause(&self, backoff: &mut Backoff) -> Next {
        tokio::select! {
            _ = self.tx.closed() => Next::Closed,
            _ = backoff.wait() => Next::Recheck,
        }
    }
}

/// The subnets of a lost lease, to take back first.
fn previous(old: &Lease) -> PreviousSubnets {
    PreviousSubnets {
        ipv4: old.ipv4_subnet(),
        ipv6: old.ipv6_subnet,
    }
}

/// When to renew, on the monotonic clock: `expiration - margin`, or halfway
/// through the remaining time when that is already past. `wall_now` and
/// `now` are the same moment on the wall and the monotonic clock (taken just
/// after etcd gave the expiration). `None` for reservations.
fn renew_deadline(lease: &Lease, margin: Duration, wall_now: SystemTime, now: Instant) -> Option<Instant> {
    let exp = lease.expiration?;
    if lease.etcd_lease == 0 {
        return None;
    }
    let left = exp.duration_since(wall_now).unwrap_or(Duration::ZERO);
    let wait = if left > margin { left - margin } else { left / 2 };
    Some(now + wait.max(Duration::from_millis(200)))
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn renew_deadline_uses_margin_or_half() {
        let attrs = LeaseAttrs::host_gw(Ipv4Addr::LOCALHOST);
        let mut l = Lease {
            subnet: "10.0.1.0/24".parse().unwrap(),
            ipv6_subnet: None,
            attrs,
            etcd_lease: 1,
            expiration: None,
        };
        let (wall, now) = (SystemTime::now(), Instant::now());
        l.expiration = Some(wall + Duration::from_secs(3600));
        let d = renew_deadline(&l, Duration::from_secs(600), wall, now).unwrap() - now;
        assert_eq!(d, Duration::from_secs(3000));
        let d = renew_deadline(&l, Duration::from_secs(7200), wall, now).unwrap() - now;
        assert_eq!(d, Duration::from_secs(1800));
        l.etcd_lease = 0;
        assert!(renew_deadline(&l, Duration::from_secs(1), wall, now).is_none());
    }

    /// The deadline is a monotonic instant: whatever the wall clock does
    /// after a renewal (here: steps back an hour, then forward a day), the
    /// renewal stays `TTL - margin` after the moment etcd answered. The
    /// keeper takes the deadline once per renewal and never re-reads the
    /// wall clock for it.
    #[test]
    fn renewal_time_ignores_later_wall_clock_steps() {
        let attrs = LeaseAttrs::host_gw(Ipv4Addr::LOCALHOST);
        let (wall, now) = (SystemTime::now(), Instant::now());
        let l = Lease {
            subnet: "10.0.1.0/24".parse().unwrap(),
            ipv6_subnet: None,
            attrs,
            etcd_lease: 1,
            expiration: Some(wall + Duration::from_secs(24 * 3600)),
        };
        let margin = Duration::from_secs(3600);
        let due = renew_deadline(&l, margin, wall, now).unwrap();
        assert_eq!(due - now, Duration::from_secs(23 * 3600));
        // tokio's sleep_until takes the same Instant: the wall clock is not
        // consulted again.
        let tokio_due: tokio::time::Instant = due.into();
        assert_eq!(tokio_due.into_std(), due);
        // What recomputing from the wall clock would have given after a
        // backward step of an hour: the renewal an hour later than the
        // lease allows (the fault this module's schedule avoids).
        let stepped = renew_deadline(&l, margin, wall - Duration::from_secs(3600), now).unwrap();
        assert_eq!(stepped - due, Duration::from_secs(3600));
    }
}
