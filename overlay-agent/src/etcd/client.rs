//! Connecting to etcd the way flanneld does (same settings), plus the retry
//! discipline every request here goes through.
//!
//! - TLS client certificate only when both `keyfile` and `certfile` are set
//!   (flannel's rule; one without the other is ignored with a warning);
//!   `cafile` (alone or with them) turns TLS on with that CA. With TLS on,
//!   `http://` endpoints are switched to `https://`.
//! - several endpoints: etcd-client balances over them; a dead member makes
//!   some requests fail fast with a transport error, which [`Conn::run`]
//!   retries, so requests fail over to the live members.
//! - nothing hangs: connecting has a deadline ([`CONNECT_TIMEOUT`]) and so
//!   does every request ([`REQUEST_TIMEOUT`]), retried with backoff inside it.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions};

use crate::etcd::backoff::{Backoff, Transient};
use crate::etcd::error::{describe, is_invalid_token, is_transient, EtcdError};
use crate::etcd::registry::{config_key, normalize_prefix, DEFAULT_PREFIX};

/// How long [`connect`] tries before reporting etcd unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Overall deadline of one logical request, retries included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// TCP connect timeout per endpoint.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest list page / watch response we accept (tonic's default is 4 MiB; a
/// watch catching up from history gets up to 1000 revisions in one message).
pub(crate) const MAX_MESSAGE: usize = 256 << 20;
/// Keys per list request: one request for any ordinary cluster, pages at one
/// revision beyond that (a page of 10,000 leases is about 2.3 MB). Not
/// smaller: etcd 3.4 collects every key left in the range for each page and
/// only then cuts it to the limit, so a listing costs it pages x keys; at a
/// full /8 (65,534 leases) pages of 1,000 made etcd's share of the listing
/// about a second.
const LIST_PAGE: i64 = 10_000;

/// flanneld's `--etcd-*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port` (bare `host:port` works too).
    pub endpoints: Vec<String>,
    /// `--etcd-prefix`, default `/coreos.com/network`.
    pub prefix: String,
    pub keyfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for EtcdSettings {
    /// flanneld's defaults: `http://127.0.0.1:4001,http://127.0.0.1:2379`,
    /// prefix `/coreos.com/network`, no TLS, no auth.
    fn default() -> Self {
        EtcdSettings {
            endpoints: vec![
                "http://127.0.0.1:4001".to_string(),
                "http://127.0.0.1:2379".to_string(),
            ],
            prefix: DEFAULT_PREFIX.to_string(),
            keyfile: None,
            certfile: None,
            cafile: None,
            username: None,
            password: None,
        }
    }
}

impl EtcdSettings {
    /// Plain settings for `endpoints` under `prefix`.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            prefix: prefix.into(),
            ..EtcdSettings::default()
        }
    }

    /// The prefix as used in keys (`path.Join` semantics).
    pub fn normalized_prefix(&self) -> String {
        normalize_prefix(&self.prefix)
    }

    /// Whether TLS is used: a CA file, or both a key and a certificate.
    pub fn tls_enabled(&self) -> bool {
        self.cafile.is_some() || (self.keyfile.is_some() && self.certfile.is_some())
    }

    /// The endpoints as they will be dialled (split on commas, trimmed, the
    /// scheme switched to https when TLS is on).
    pub fn effective_endpoints(&self) -> Vec<String> {
        let tls = self.tls_enabled();
        self.endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                if tls {
                    if let Some(rest) = e.strip_prefix("http://") {
                        return format!("https://{rest}");
                    }
                }
                e.to_string()
            })
            .collect()
    }

    pub(crate) fn endpoints_display(&self) -> String {
        format!("[{}]", self.effective_endpoints().join(", "))
    }
}

/// Connects to etcd and checks that it answers (a count-only read of
/// `<prefix>/config`), so a dead endpoint list gives
/// [`EtcdError::Unreachable`] after [`CONNECT_TIMEOUT`] instead of hanging,
/// and bad credentials give [`EtcdError::Auth`].
pub async fn connect(s: &EtcdSettings) -> Result<Client, EtcdError> {
    Ok(Conn::connect(s).await?.client)
}

/// A connected client plus what is needed to retry and reconnect.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) settings: EtcdSettings,
    endpoints: String,
}

impl Conn {
    pub(crate) async fn connect(s: &EtcdSettings) -> Result<Conn, EtcdError> {
        let endpoints = s.effective_endpoints();
        if endpoints.is_empty() {
            return Err(EtcdError::Settings("no etcd endpoints given".into()));
        }
        let shown = s.endpoints_display();
        if !s.tls_enabled() && endpoints.iter().any(|e| e.starts_with("https://")) {
            log::warn!(
                "etcd endpoints {shown} use https but no --etcd-cafile is set: the server \
                 certificate cannot be verified"
            );
        }
        let opts = connect_options(s)?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        // With credentials, connecting authenticates: a refused password is
        // final, an unreachable endpoint is retried until the deadline.
        let client = Backoff::new(Duration::from_millis(50), Duration::from_millis(500))
            .retry_until(deadline, format!("connecting to etcd at {shown}"), || {
                let left = deadline.saturating_duration_since(Instant::now());
                attempt(left, Client::connect(&endpoints, Some(opts.clone())))
            })
            .await
            .map_err(|f| first_contact_error(s, &shown, f))?;
        let conn = Conn {
            client,
            settings: s.clone(),
            endpoints: shown.clone(),
        };
        let key = config_key(&s.prefix);
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(500));
        conn.attempts("probe read", &key, left, |mut c, k| async move {
            c.get(k, Some(GetOptions::new().with_count_only())).await
        })
        .await
        .map_err(|f| first_contact_error(s, &shown, f))?;
        Ok(conn)
    }

    /// Runs one logical request with [`REQUEST_TIMEOUT`]; see [`Conn::run_until`].
    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, EtcdError>
    where
        F: FnMut(Client, String) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.run_until(op, key, REQUEST_TIMEOUT, f).await
    }

    /// Runs `f` (given a client handle and `key`) until it succeeds, fails for
    /// good, or `budget` is spent. Transport failures and etcd's
    /// "unavailable"-class errors are retried with backoff (this is what makes
    /// several endpoints fail over); an expired auth token is refreshed.
    pub(crate) async fn run_until<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        budget: Duration,
        f: F,
    ) -> Result<T, EtcdError>
    where
        F: FnMut(Client, String) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.attempts(op, key, budget, f).await.map_err(|f| match f {
            Failure::Etcd(source) => EtcdError::Request {
                op,
                key: key.to_string(),
                source,
            },
            Failure::NoAnswer => EtcdError::Timeout {
                op,
                key: key.to_string(),
                after: budget,
                endpoints: self.endpoints.clone(),
            },
        })
    }

    /// [`run_until`](Self::run_until) with the last failure as it is.
    async fn attempts<T, F, Fut>(&self, op: &'static str, key: &str, budget: Duration, mut f: F) -> Result<T, Failure>
    where
        F: FnMut(Client, String) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + budget;
        let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(500));
        let mut refreshed = false;
        loop {
            let r = backoff
                .retry_until(deadline, format!("etcd {op} of {key:?}"), || {
                    let left = deadline.saturating_duration_since(Instant::now());
                    attempt(left.min(ATTEMPT_TIMEOUT), f(self.client.clone(), key.to_string()))
                })
                .await;
            match r {
                // Simple auth tokens live in etcd's memory only: after an etcd
                // restart ours is unknown, and authenticating again fixes it.
                Err(Failure::Etcd(e)) if is_invalid_token(&e) && !refreshed && self.settings.username.is_some() => {
                    refreshed = true;
                    log::info!("etcd auth token rejected; authenticating again");
                    if let Err(re) = self.client.refresh_token().await {
                        log::warn!("etcd re-authentication failed: {}", describe(&re));
                    }
                }
                r => return r,
            }
        }
    }
}

/// How one attempt at etcd failed.
#[derive(Debug)]
enum Failure {
    Etcd(etcd_client::Error),
    /// No answer within the attempt's time.
    NoAnswer,
}

impl Transient for Failure {
    fn is_transient(&self) -> bool {
        match self {
            Failure::Etcd(e) => is_transient(e),
            Failure::NoAnswer => true,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Etcd(e) => f.write_str(&describe(e)),
            Failure::NoAnswer => f.write_str("attempt timed out"),
        }
    }
}

/// One attempt, given `limit` to answer.
async fn attempt<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, request).await {
        Ok(r) => r.map_err(Failure::Etcd),
        Err(_) => Err(Failure::NoAnswer),
    }
}

/// What the failure of a first contact (connecting, then the probe read)
/// tells the operator: etcd refused us (our credentials, when we have some),
/// or it could not be reached.
fn first_contact_error(s: &EtcdSettings, endpoints: &str, failure: Failure) -> EtcdError {
    let endpoints = endpoints.to_string();
    let e = match failure {
        Failure::NoAnswer => {
            return EtcdError::Unreachable {
                endpoints,
                timeout: CONNECT_TIMEOUT,
                reason: "no answer".into(),
                hint: "",
            }
        }
        Failure::Etcd(e) => e,
    };
    let reason = describe(&e);
    if is_transient(&e) {
        EtcdError::Unreachable {
            endpoints,
            timeout: CONNECT_TIMEOUT,
            hint: hint(s, &reason),
            reason,
        }
    } else if let Some(user) = &s.username {
        EtcdError::Auth {
            user: user.clone(),
            endpoints,
            reason,
        }
    } else {
        EtcdError::Rejected {
            endpoints,
            hint: hint(s, &reason),
            reason,
        }
    }
}

impl Conn {
    /// Every key under `dir` (a prefix) as of one revision, and that revision.
    /// One range request unless there are more than [`LIST_PAGE`] keys.
    pub(crate) async fn list_prefix(&self, dir: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let end = prefix_end(dir.as_bytes());
        let mut out = Vec::new();
        let mut rev = 0i64;
        let mut start = dir.as_bytes().to_vec();
        loop {
            let (s, e) = (start.clone(), end.clone());
            let mut resp = self
                .run("list", dir, move |c, _| {
                    let mut opts = GetOptions::new().with_range(e.clone()).with_limit(LIST_PAGE);
                    if rev != 0 {
                        opts = opts.with_revision(rev);
                    }
                    let mut kv = c.kv_client().max_decoding_message_size(MAX_MESSAGE);
                    let key = s.clone();
                    async move { kv.get(key, Some(opts)).await }
                })
                .await?;
            if rev == 0 {
                rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            match kvs.last() {
                Some(last) if more => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => {
                    out.extend(kvs);
                    return Ok((out, rev));
                }
            }
            out.extend(kvs);
        }
    }
}

/// The end of the key range of everything starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn connect_options(s: &EtcdSettings) -> Result<ConnectOptions, EtcdError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(DIAL_TIMEOUT)
        // HTTP/2 pings find a silently dead member under a long-lived watch
        // (etcd's default --grpc-keepalive-min-time is 5 s).
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_tcp_keepalive(Duration::from_secs(30));
    match (&s.username, &s.password) {
        (Some(u), p) if !u.is_empty() => {
            opts = opts.with_user(u.clone(), p.clone().unwrap_or_default());
        }
        (None, Some(_)) => log::warn!("--etcd-password given without --etcd-username: ignored"),
        _ => {}
    }
    if let Some(tls) = tls_options(s)? {
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

fn tls_options(s: &EtcdSettings) -> Result<Option<TlsOptions>, EtcdError> {
    let identity = match (&s.certfile, &s.keyfile) {
        (Some(cert), Some(key)) => {
            let c = read_file("certfile", cert)?;
            let k = read_file("keyfile", key)?;
            Some(Identity::from_pem(c, k))
        }
        (Some(_), None) | (None, Some(_)) => {
            log::warn!(
                "only one of --etcd-certfile/--etcd-keyfile is set: no client certificate is \
                 used (both are needed, as with flannel)"
            );
            None
        }
        (None, None) => None,
    };
    let ca = match &s.cafile {
        Some(p) => Some(Certificate::from_pem(read_file("cafile", p)?)),
        None => None,
    };
    if identity.is_none() && ca.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(ca);
    } else {
        log::warn!("TLS to etcd without --etcd-cafile: the server certificate cannot be verified");
    }
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Ok(Some(tls))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdError> {
    let data = std::fs::read(path).map_err(|e| EtcdError::TlsFile {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !String::from_utf8_lossy(&data).contains("-----BEGIN") {
        return Err(EtcdError::TlsFile {
            what,
            path: path.to_path_buf(),
            reason: "not a PEM file".into(),
        });
    }
    Ok(data)
}

/// What to check, for the usual causes of a failed first contact.
fn hint(s: &EtcdSettings, reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("unknownissuer") || r.contains("certificate") && r.contains("invalid") {
        " (is --etcd-cafile the CA that signed the server's certificate?)"
    } else if super::error::REFUSED_CLIENT_CERT.iter().any(|a| reason.contains(a)) {
        " (etcd refused our client certificate: is --etcd-certfile signed by a CA etcd trusts, its --trusted-ca-file?)"
    } else if r.contains("user name is empty") {
        " (etcd has authentication enabled: set --etcd-username and --etcd-password)"
    } else if r.contains("permission denied") {
        " (the etcd user needs read/write permission on the prefix)"
    } else if s.tls_enabled()
        && !(s.keyfile.is_some() && s.certfile.is_some())
        && (r.contains("closed") || r.contains("canceled") || r.contains("broken pipe") || r.contains("handshake"))
    {
        " (does the server require a client certificate? set --etcd-certfile and --etcd-keyfile)"
    } else if !s.tls_enabled() && (r.contains("connection closed") || r.contains("broken pipe")) {
        " (is it a TLS endpoint? use https:// with --etcd-cafile)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/subnets/"), b"/a/subnets0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn tls_rule_and_endpoints() {
        let mut s = EtcdSettings::new(
            vec!["http://127.0.0.1:2379, http://127.0.0.1:4001".into(), " ".into()],
            "/x/",
        );
        assert!(!s.tls_enabled());
        assert_eq!(s.effective_endpoints(), vec!["http://127.0.0.1:2379", "http://127.0.0.1:4001"]);
        assert_eq!(s.normalized_prefix(), "/x");
        s.keyfile = Some("/k".into());
        assert!(!s.tls_enabled(), "key without cert: no TLS (flannel's rule)");
        s.certfile = Some("/c".into());
        assert!(s.tls_enabled());
        assert_eq!(s.effective_endpoints()[0], "https://127.0.0.1:2379");
        let s2 = EtcdSettings {
            cafile: Some("/ca".into()),
            ..EtcdSettings::default()
        };
        assert!(s2.tls_enabled());
    }

    #[tokio::test]
    async fn dead_endpoints_error_instead_of_hanging() {
        // A port nobody listens on (bound then released).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let s = EtcdSettings::new(vec![format!("http://127.0.0.1:{port}")], "/t");
        let t = Instant::now();
        let e = connect(&s).await.err().expect("must fail");
        assert!(t.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(3));
        let m = e.to_string();
        assert!(m.contains(&port.to_string()) && m.contains("cannot reach etcd"), "{m}");
    }

    #[tokio::test]
    async fn missing_tls_file_is_named() {
        let s = EtcdSettings {
            cafile: Some("/nonexistent/ca.pem".into()),
            endpoints: vec!["https://127.0.0.1:1".into()],
            ..EtcdSettings::default()
        };
        let m = connect(&s).await.err().unwrap().to_string();
        assert!(m.contains("cafile") && m.contains("/nonexistent/ca.pem"), "{m}");
    }
}
