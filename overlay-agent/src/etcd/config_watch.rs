//! Follows `<prefix>/config` while the agent runs. flanneld reads the
//! network config once at start and silently ignores later changes, so a
//! changed Network leaves nodes disagreeing without anyone being told. The
//! agent does not apply a change either (re-numbering a node under its
//! running pods breaks them; a restart does it properly), but it reports
//! whether etcd's config still is the one the agent runs with.

use std::time::Duration;

use etcd_client::EventType;
use tokio::sync::watch;

use crate::config::NetworkConfig;
use crate::etcd::backoff::Backoff;
use crate::etcd::client::EtcdSettings;
use crate::etcd::error::describe;
use crate::etcd::lease::SubnetManager;
use crate::etcd::registry::config_key;

/// Starts following the config key. The receiver holds `None` while etcd's
/// config is `running`, else `Some(how it differs)`. Connection trouble is
/// waited out (with backoff) and does not count as a change; the lease
/// watch reports etcd's health. The task ends when the receiver is dropped.
pub fn spawn_config_watch(settings: EtcdSettings, running: NetworkConfig) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let key = config_key(&settings.prefix);
        let mut backoff = Backoff::outage();
        let mut mgr: Option<SubnetManager> = None;
        loop {
            let outcome = match &mgr {
                None => match SubnetManager::new(settings.clone()).await {
                    Ok(m) => {
                        mgr = Some(m);
                        continue;
                    }
                    Err(e) => Err(e.to_string()),
                },
                Some(m) => tokio::select! {
                    _ = tx.closed() => return,
                    r = follow(m, &key, &running, &tx) => r,
                },
            };
            match outcome {
                Err(e) => log::debug!("watching the network config {key}: {e}"),
                Ok(()) => backoff.reset(),
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = backoff.wait() => {}
            }
        }
    });
    rx
}

/// Reads the key, then watches it from just after that read, publishing
/// each difference. Returns when the watch breaks.
async fn follow(
    mgr: &SubnetManager,
    key: &str,
    running: &NetworkConfig,
    tx: &watch::Sender<Option<String>>,
) -> Result<(), String> {
    let resp = tokio::time::timeout(Duration::from_secs(10), mgr.client().get(key, None))
        .await
        .map_err(|_| format!("reading {key} timed out"))?
        .map_err(|e| format!("reading {key}: {}", describe(&e)))?;
    let rev = resp.header().map_or(0, |h| h.revision());
    tx.send_if_modified(|cur| replace(cur, difference(running, resp.kvs().first().map(|kv| kv.value()))));
    let mut ws = mgr.watch_key(key, rev + 1).await.map_err(|e| e.to_string())?;
    loop {
        let resp = match ws.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(format!("the watch on {key} closed")),
            Err(e) => return Err(format!("the watch on {key} broke: {}", describe(&e))),
        };
        if resp.canceled() {
            return Err(format!("the watch on {key} was canceled: {}", resp.cancel_reason()));
        }
        for ev in resp.events() {
            let value = match ev.event_type() {
                EventType::Put => ev.kv().map(|kv| kv.value()),
                EventType::Delete => None,
            };
            tx.send_if_modified(|cur| replace(cur, difference(running, value)));
        }
    }
}

fn replace(cur: &mut Option<String>, new: Option<String>) -> bool {
    let changed = *cur != new;
    *cur = new;
    changed
}

/// How etcd's config (`value`, None when the key is gone) differs from
/// `running`, or None when it does not.
pub fn difference(running: &NetworkConfig, value: Option<&[u8]>) -> Option<String> {
    let Some(value) = value else {
        return Some("the config key was deleted: a restart would wait for it".into());
    };
    let new = match NetworkConfig::parse(&String::from_utf8_lossy(value)) {
        Ok(c) => c,
        Err(e) => return Some(format!("it is no longer valid ({e}): a restart would fail")),
    };
    let mut diffs = Vec::new();
    let mut field = |name: &str, old: String, new: String| {
        if old != new {
            diffs.push(format!("{name} {old} -> {new}"));
        }
    };
    field("Network", running.network.to_string(), new.network.to_string());
    field("SubnetLen", running.subnet_len.to_string(), new.subnet_len.to_string());
    field("SubnetMin", running.subnet_min.to_string(), new.subnet_min.to_string());
    field("SubnetMax", running.subnet_max.to_string(), new.subnet_max.to_string());
    field("EnableIPv4", running.enable_ipv4.to_string(), new.enable_ipv4.to_string());
    field("EnableIPv6", running.enable_ipv6.to_string(), new.enable_ipv6.to_string());
    field("IPv6 settings", format!("{:?}", running.ipv6), format!("{:?}", new.ipv6));
    field("Backend", format!("{:?}", running.backend), format!("{:?}", new.backend));
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_old_and_new() {
        let running = NetworkConfig::parse(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let same = br#"{"network": "10.42.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}"#;
        assert_eq!(difference(&running, Some(same)), None, "the same config written differently");
        let d = difference(&running, Some(br#"{"Network":"10.43.0.0/16","Backend":{"Type":"vxlan"}}"#)).unwrap();
        assert!(d.contains("Network 10.42.0.0/16 -> 10.43.0.0/16"), "{d}");
        let d = difference(&running, Some(br#"{"Network":"10.42.0.0/16","Backend":{"Type":"host-gw"}}"#)).unwrap();
        assert!(d.starts_with("Backend ") && d.contains("HostGw"), "{d}");
        assert!(difference(&running, None).unwrap().contains("deleted"));
        assert!(difference(&running, Some(b"{")).unwrap().contains("no longer valid"));
    }
}
