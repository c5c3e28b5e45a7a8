//! Real etcd servers for tests: Debian's etcd 3.4 (`/usr/bin/etcd`), driven
//! through `etcdctl` so that the harness shares no code with the agent's own
//! etcd client.
//!
//! Every server listens on loopback ports picked at random below the
//! ephemeral range and keeps its data in `$TMPDIR/overlay-tests/etcd-<id>/`,
//! which `Drop` removes after killing the server.

use crate::util::{free_port, make_owned_dir, record_pid, tail};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::certs::TlsFiles;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh starts are retried with new ports when another test binary won the
/// race for a port between our check and etcd's bind.
const START_ATTEMPTS: usize = 4;

#[derive(Debug, Default, Clone)]
pub struct EtcdOptions {
    /// Serve clients over https with a server certificate from a per-test CA.
    pub tls: bool,
    /// Require client certificates signed by that CA. Implies `tls`.
    pub client_cert_auth: bool,
}

/// How etcdctl should present itself to a server.
#[derive(Clone, Default)]
struct Identity {
    tls: Option<TlsFiles>,
    /// Send the client certificate (only meaningful with `tls`).
    client_cert: bool,
    credentials: Option<(String, String)>,
}

fn etcdctl_command(endpoints: &str, id: &Identity) -> Command {
    let mut cmd = Command::new("etcdctl");
    // Variables from the caller's environment would silently change the flags.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoints}"));
    if let Some(tls) = &id.tls {
        cmd.arg(format!("--cacert={}", tls.ca.display()));
        if id.client_cert {
            cmd.arg(format!("--cert={}", tls.cert.display()));
            cmd.arg(format!("--key={}", tls.key.display()));
        }
    }
    if let Some((user, password)) = &id.credentials {
        cmd.arg(format!("--user={user}")).arg(format!("--password={password}"));
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn run_etcdctl(mut cmd: Command, args: &[&str]) -> Result<String> {
    cmd.args(args);
    let out = cmd.output().context("running etcdctl (Debian package etcd-client)")?;
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!(
            "etcdctl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.trim().is_empty() { String::new() } else { format!("\nstdout: {}", stdout.trim()) }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One etcd process: its ports, data directory, log file and (while it
/// runs) the child.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// What every member of one cluster shares.
struct ClusterSpec {
    /// The scratch directory; stale cleanup finds our etcd by it.
    dir: PathBuf,
    initial_cluster: String,
    token: String,
    server_tls: Option<TlsFiles>,
    client_cert_auth: bool,
    heartbeat_ms: u32,
    election_ms: u32,
}

impl Member {
    fn new(dir: &Path, name: &str) -> Result<Member> {
        Ok(Member {
            name: name.to_string(),
            client_port: free_port()?,
            peer_port: free_port()?,
            data_dir: dir.join(format!("{name}.data")),
            log: dir.join(format!("{name}.log")),
            child: None,
        })
    }

    fn client_url(&self, tls: bool) -> String {
        format!("{}://127.0.0.1:{}", if tls { "https" } else { "http" }, self.client_port)
    }

    fn peer_url(&self) -> String {
        // Peers always talk plain http: the tests are about client access.
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self, spec: &ClusterSpec) -> Result<()> {
        let client_url = self.client_url(spec.server_tls.is_some());
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-cluster={}", spec.initial_cluster))
            // Ignored when the data directory already holds a member (restarts).
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token={}", spec.token))
            .arg(format!("--heartbeat-interval={}", spec.heartbeat_ms))
            .arg(format!("--election-timeout={}", spec.election_ms))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if let Some(tls) = &spec.server_tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display())).arg(format!("--key-file={}", tls.key.display()));
            // etcd 3.4 demands client certificates as soon as it is given a
            // trusted CA, with or without --client-cert-auth.
            if spec.client_cert_auth {
                cmd.arg(format!("--trusted-ca-file={}", tls.ca.display())).arg("--client-cert-auth");
            }
        }
        // etcd also reads every flag from ETCD_*; a stray one would change the server.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().context("starting etcd (Debian package etcd-server)")?;
        record_pid(&spec.dir, child.id());
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the member answers `endpoint health` (which needs a
    /// leader), failing early if the process exits.
    fn wait_ready(&mut self, id: &Identity, tls: bool) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        let endpoint = self.client_url(tls);
        let mut last_err = String::from("port not open yet");
        loop {
            let Some(child) = self.child.as_mut() else { bail!("etcd {} is not running", self.name) };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("etcd {} exited during startup ({status}); its log ends with:\n{}", self.name, tail(&self.log, 3000));
            }
            // The TCP check is cheap; etcdctl against a closed port would block for its dial timeout.
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let mut cmd = etcdctl_command(&endpoint, id);
                cmd.args(["--dial-timeout=1s", "--command-timeout=2s"]);
                match run_etcdctl(cmd, &["endpoint", "health"]) {
                    Ok(_) => return Ok(()),
                    Err(e) => last_err = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd {} at {endpoint} not ready after {READY_TIMEOUT:?} (last check: {last_err}); its log ends with:\n{}",
                    self.name,
                    tail(&self.log, 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_says_port_taken(&self) -> bool {
        tail(&self.log, 20000).contains("address already in use")
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after 10 s.
    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn decode_b64(s: &str) -> Result<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).with_context(|| format!("bad base64 {s:?}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The `kvs` of `etcdctl get -w json` output, decoded.
fn parse_kvs(json: &str) -> Result<Vec<(String, String)>> {
    let v: serde_json::Value = serde_json::from_str(json).with_context(|| format!("etcdctl output {json:?}"))?;
    let mut out = Vec::new();
    for kv in v.get("kvs").and_then(|k| k.as_array()).into_iter().flatten() {
        let key = decode_b64(kv.get("key").and_then(|k| k.as_str()).unwrap_or(""))?;
        let value = decode_b64(kv.get("value").and_then(|k| k.as_str()).unwrap_or(""))?;
        out.push((key, value));
    }
    Ok(out)
}

fn parse_revision(json: &str) -> Result<i64> {
    let v: serde_json::Value = serde_json::from_str(json).with_context(|| format!("etcdctl output {json:?}"))?;
    v.pointer("/header/revision").and_then(|r| r.as_i64()).ok_or_else(|| anyhow!("no header.revision in {json}"))
}

/// A single-node etcd server.
pub struct Etcd {
    dir: PathBuf,
    token: String,
    member: Member,
    opts: EtcdOptions,
    server_tls: Option<TlsFiles>,
    client_tls: Option<TlsFiles>,
    /// Set by `enable_auth`: (user, password) for `etcdctl`, and root's password.
    credentials: Option<(String, String)>,
    root_password: Option<String>,
}

impl Etcd {
    /// Plain-http etcd on free loopback ports, ready to answer.
    pub fn start() -> Result<Etcd> {
        Self::start_with(EtcdOptions::default())
    }

    pub fn start_with(mut opts: EtcdOptions) -> Result<Etcd> {
        opts.tls |= opts.client_cert_auth;
        let (id, dir) = make_owned_dir("etcd")?;
        let (server_tls, client_tls) = if opts.tls {
            let certs = crate::certs::generate(&dir.join("tls"), "overlay-test-client")?;
            (Some(certs.server), Some(certs.client))
        } else {
            (None, None)
        };
        let mut etcd = Etcd {
            member: Member::new(&dir, "default")?,
            dir,
            token: format!("ov{id}"),
            opts,
            server_tls,
            client_tls,
            credentials: None,
            root_password: None,
        };
        let mut attempt = 1;
        loop {
            match etcd.launch() {
                Ok(()) => return Ok(etcd),
                Err(e) if attempt < START_ATTEMPTS && etcd.member.log_says_port_taken() => {
                    log::debug!("etcd start attempt {attempt} lost a port race: {e:#}");
                    etcd.member.kill();
                    let _ = fs::remove_dir_all(&etcd.member.data_dir);
                    let _ = fs::remove_file(&etcd.member.log);
                    etcd.member = Member::new(&etcd.dir, "default")?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            dir: self.dir.clone(),
            initial_cluster: format!("{}={}", self.member.name, self.member.peer_url()),
            token: self.token.clone(),
            server_tls: self.server_tls.clone(),
            client_cert_auth: self.opts.client_cert_auth,
            // One voter: short timeouts only make the first election quicker.
            heartbeat_ms: 20,
            election_ms: 200,
        }
    }

    fn launch(&mut self) -> Result<()> {
        let spec = self.spec();
        self.member.spawn(&spec)?;
        let id = self.admin_identity();
        self.member.wait_ready(&id, self.opts.tls)
    }

    fn identity(&self) -> Identity {
        Identity { tls: self.client_tls.clone(), client_cert: true, credentials: self.credentials.clone() }
    }

    /// Root, once auth is on: for the harness's own bookkeeping (health, compaction).
    fn admin_identity(&self) -> Identity {
        Identity {
            tls: self.client_tls.clone(),
            client_cert: true,
            credentials: self.root_password.clone().map(|p| ("root".to_string(), p)),
        }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.member.client_url(self.opts.tls)
    }

    /// Client-side CA, certificate and key (TLS servers only).
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.client_tls.as_ref()
    }

    /// The server's certificate and key (TLS servers only).
    pub fn server_tls_files(&self) -> Option<&TlsFiles> {
        self.server_tls.as_ref()
    }

    /// (user, password) after [`Etcd::enable_auth`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// flanneld-style flags that reach this server: `--etcd-endpoints=…` and,
    /// as applicable, the TLS file and credential flags.
    pub fn flannel_args(&self) -> Vec<String> {
        let mut args = vec![format!("--etcd-endpoints={}", self.endpoint())];
        if let Some(tls) = &self.client_tls {
            args.push(format!("--etcd-cafile={}", tls.ca.display()));
            args.push(format!("--etcd-certfile={}", tls.cert.display()));
            args.push(format!("--etcd-keyfile={}", tls.key.display()));
        }
        if let Some((user, password)) = self.credentials() {
            args.push(format!("--etcd-username={user}"));
            args.push(format!("--etcd-password={password}"));
        }
        args
    }

    /// The etcd process while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.member.pid()
    }

    /// The scratch directory (data dir, log, certificates); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.member.data_dir
    }

    /// etcd's own log (stdout and stderr of every start).
    pub fn log_path(&self) -> &Path {
        &self.member.log
    }

    /// SIGTERM and wait (SIGKILL after 10 s). The data directory is kept.
    pub fn stop(&mut self) {
        self.member.terminate();
    }

    /// SIGKILL and wait. The data directory is kept.
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Stops the server if it runs, then starts it again on the same ports
    /// with the same data directory, and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.member.terminate();
        self.launch()
    }

    /// `etcdctl` (API v3) with the endpoint, TLS files and credentials filled in.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        run_etcdctl(etcdctl_command(&self.endpoint(), &self.identity()), args)
    }

    /// `etcdctl` with no client certificate and no credentials (it still
    /// trusts the test CA): for checking that the server refuses strangers.
    pub fn etcdctl_anonymous(&self, args: &[&str]) -> Result<String> {
        let id = Identity { tls: self.client_tls.clone(), client_cert: false, credentials: None };
        run_etcdctl(etcdctl_command(&self.endpoint(), &id), args)
    }

    fn etcdctl_admin(&self, args: &[&str]) -> Result<String> {
        run_etcdctl(etcdctl_command(&self.endpoint(), &self.admin_identity()), args)
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        // `--` so that keys and values starting with '-' are not taken as flags.
        self.etcdctl(&["put", "--", key, value]).map(drop)
    }

    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self.etcdctl(&["get", "-w", "json", "--", key])?;
        Ok(parse_kvs(&out)?.into_iter().next().map(|(_, v)| v))
    }

    /// All keys under `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        parse_kvs(&self.etcdctl(&["get", "--prefix", "-w", "json", "--", prefix])?)
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.etcdctl(&["del", "--", key]).map(drop)
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64> {
        parse_revision(&self.etcdctl_admin(&["get", "-w", "json", "--", "/"])?)
    }

    /// Compacts history up to the current revision, so watches from any
    /// older revision are cancelled as compacted.
    pub fn compact_to_latest(&self) -> Result<()> {
        let rev = self.revision()?.to_string();
        match self.etcdctl_admin(&["compaction", &rev]) {
            Err(e) if format!("{e:#}").contains("required revision has been compacted") => Ok(()),
            r => r.map(drop),
        }
    }

    /// Creates `root` (with `password`) and, unless `user` is root, `user`
    /// with a role granting readwrite on every key starting with "/"; then
    /// enables auth. Later `etcdctl` calls authenticate as `user`.
    pub fn enable_auth(&mut self, user: &str, password: &str) -> Result<()> {
        let pw = format!("--new-user-password={password}");
        self.etcdctl(&["user", "add", "root", &pw])?;
        if user != "root" {
            let role = format!("{user}-rw");
            self.etcdctl(&["user", "add", user, &pw])?;
            self.etcdctl(&["role", "add", &role])?;
            self.etcdctl(&["role", "grant-permission", "--prefix=true", &role, "readwrite", "/"])?;
            self.etcdctl(&["user", "grant-role", user, &role])?;
        }
        self.etcdctl(&["auth", "enable"])?;
        self.credentials = Some((user.to_string(), password.to_string()));
        self.root_password = Some(password.to_string());
        Ok(())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.member.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A static etcd cluster on loopback (plain http).
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// `members` servers with a static initial cluster; returns when every
    /// one answers `endpoint health`.
    pub fn start(members: usize) -> Result<EtcdCluster> {
        if members == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let (id, dir) = make_owned_dir("etcd")?;
        let mut cluster = EtcdCluster { dir, token: format!("ov{id}"), members: Vec::new() };
        let mut attempt = 1;
        loop {
            match cluster.launch_all(members) {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < START_ATTEMPTS && cluster.members.iter().any(|m| m.log_says_port_taken()) => {
                    log::debug!("etcd cluster start attempt {attempt} lost a port race: {e:#}");
                    for m in &mut cluster.members {
                        m.kill();
                        let _ = fs::remove_dir_all(&m.data_dir);
                        let _ = fs::remove_file(&m.log);
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn launch_all(&mut self, n: usize) -> Result<()> {
        self.members = (0..n).map(|i| Member::new(&self.dir, &format!("m{i}"))).collect::<Result<_>>()?;
        let spec = self.spec();
        for m in &mut self.members {
            m.spawn(&spec)?;
        }
        // Members must all be running before any can elect a leader.
        for m in &mut self.members {
            m.wait_ready(&Identity::default(), false)?;
        }
        Ok(())
    }

    fn spec(&self) -> ClusterSpec {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        ClusterSpec {
            dir: self.dir.clone(),
            initial_cluster,
            token: self.token.clone(),
            server_tls: None,
            client_cert_auth: false,
            heartbeat_ms: 100,
            election_ms: 1000,
        }
    }

    /// Client URLs of all members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url(false)).collect()
    }

    pub fn member_pid(&self, i: usize) -> Option<u32> {
        self.members[i].pid()
    }

    /// SIGKILLs member `i` (data kept).
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again from its data directory and waits until it
    /// answers (which needs a quorum of the others).
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        if self.members[i].child.is_some() {
            return Ok(());
        }
        let spec = self.spec();
        let m = &mut self.members[i];
        m.spawn(&spec)?;
        m.wait_ready(&Identity::default(), false)
    }

    /// `etcdctl` against every member's endpoint.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        run_etcdctl(etcdctl_command(&self.endpoints().join(","), &Identity::default()), args)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
