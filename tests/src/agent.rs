//! Runs the real `overlay-agent` binary inside a testbed host, each with its
//! own pin folder and subnet file, and removes its pins when dropped (which
//! detaches its programs) even if the test fails.
use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    forward::PortForward,
    netns::{ChildHandle, Host},
};

/// The agent binary: `$OVERLAY_AGENT_BIN`, else the workspace's
/// target/{debug,release}/overlay-agent (built by `cargo xtask test`).
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("OVERLAY_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("overlay-agent");
        if p.exists() {
            return p;
        }
    }
    panic!("overlay-agent binary not found under {}: run `cargo build -p overlay-agent` (cargo xtask test does)", target.display());
}

pub struct Agent {
    pub name: String,
    child: Option<ChildHandle>,
    pub pin_root: PathBuf,
    pub subnet_file: PathBuf,
    pub log: PathBuf,
    host_ns: PathBuf,
    argv: Vec<String>,
    /// Extra environment variables (e.g. flanneld's `FLANNELD_*` forms).
    env: Vec<(String, String)>,
    /// The relays to etcd this agent was started with
    /// ([`Agent::start_forwarded`]); dropped after the agent is killed.
    forwards: Vec<PortForward>,
}

pub struct AgentOptions<'a> {
    pub etcd_endpoints: &'a str,
    pub prefix: &'a str,
    /// Folder for the subnet file and the log (the testbed's own dir).
    pub dir: &'a Path,
    pub extra: Vec<String>,
}

/// How to start the agent beyond [`AgentOptions`].
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// No `--iface=eth0`: the agent picks the uplink from the other flags
    /// (or the default route), for tests of that choice.
    pub agent_chooses_iface: bool,
    /// Extra environment variables (e.g. flanneld's `FLANNELD_*` forms).
    pub env: Vec<(String, String)>,
}

/// Where an agent on `host` writes its subnet file (in the testbed's folder
/// `dir`).
pub fn subnet_file_for(dir: &Path, host: &Host) -> PathBuf {
    dir.join(format!("{}-subnet.env", host.name()))
}

impl Agent {
    /// Starts the agent in `host` with `--iface=eth0`.
    pub fn start(host: &Host, opts: AgentOptions<'_>) -> Result<Agent> {
        Agent::start_with(host, opts, Launch::default())
    }

    /// [`Agent::start`] as `launch` says.
    pub fn start_with(host: &Host, opts: AgentOptions<'_>, launch: Launch) -> Result<Agent> {
        crate::netns::ensure_bpffs()?;
        let name = host.name().to_string();
        let pin_root = PathBuf::from("/sys/fs/bpf").join(format!("{name}-agent"));
        let subnet_file = subnet_file_for(opts.dir, host);
        let log = opts.dir.join(format!("{name}-agent.log"));
        let mut argv = vec![
            format!("--etcd-endpoints={}", opts.etcd_endpoints),
            format!("--etcd-prefix={}", opts.prefix),
            format!("--subnet-file={}", subnet_file.display()),
            format!("--bpf-pin-dir={}", pin_root.display()),
        ];
        if !launch.agent_chooses_iface {
            argv.insert(2, format!("--iface={}", host.uplink()));
        }
        argv.extend(opts.extra);
        let mut agent = Agent {
            name,
            child: None,
            pin_root,
            subnet_file,
            log,
            host_ns: host.path(),
            argv,
            env: launch.env,
            forwards: Vec::new(),
        };
        agent.spawn(host)?;
        Ok(agent)
    }

    /// [`Agent::start`] on etcd servers of the root namespace:
    /// `opts.etcd_endpoints` lists them as the root namespace reaches them
    /// (`http://127.0.0.1:2379,...`, comma-separated). The agent is given a
    /// [`PortForward`] into `host` for each, which it keeps until it is
    /// dropped (and which [`Agent::restart`] reuses).
    pub fn start_forwarded(host: &Host, opts: AgentOptions<'_>) -> Result<Agent> {
        Agent::start_forwarded_with(host, opts, Launch::default())
    }

    /// [`Agent::start_forwarded`] as `launch` says.
    pub fn start_forwarded_with(host: &Host, opts: AgentOptions<'_>, launch: Launch) -> Result<Agent> {
        let mut forwards = Vec::new();
        let mut inside = Vec::new();
        for endpoint in opts.etcd_endpoints.split(',') {
            let (scheme, addr) = endpoint.split_once("://").unwrap_or(("http", endpoint));
            let target: std::net::SocketAddr =
                addr.trim_end_matches('/').parse().with_context(|| format!("etcd endpoint {endpoint:?}"))?;
            let fwd = PortForward::into_ns(host, target)?;
            inside.push(format!("{scheme}://127.0.0.1:{}", fwd.port()));
            forwards.push(fwd);
        }
        let mut agent = Agent::start_with(host, AgentOptions { etcd_endpoints: &inside.join(","), ..opts }, launch)?;
        agent.forwards = forwards;
        Ok(agent)
    }

    /// The etcd endpoints as seen from inside the agent's host: its
    /// forwards' URLs, comma-separated (empty for [`Agent::start`]).
    pub fn etcd_endpoints(&self) -> String {
        self.forwards.iter().map(PortForward::url).collect::<Vec<_>>().join(",")
    }

    /// The relays to etcd this agent was started with.
    pub fn forwards(&self) -> &[PortForward] {
        &self.forwards
    }

    /// FLANNEL_MTU from the agent's subnet file (the MTU its pods get).
    pub fn flannel_mtu(&self) -> Result<u32> {
        let text = fs::read_to_string(&self.subnet_file)
            .with_context(|| format!("reading {}", self.subnet_file.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_MTU="))
            .with_context(|| format!("no FLANNEL_MTU in {}", self.subnet_file.display()))?
            .trim()
            .parse()
            .context("FLANNEL_MTU")
    }

    fn spawn(&mut self, host: &Host) -> Result<()> {
        let logf = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = host.command(agent_binary().to_str().unwrap());
        cmd.args(&self.argv)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", std::env::var("OVERLAY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        self.child = Some(host.spawn(cmd)?);
        Ok(())
    }

    /// Starts the same agent again (after a kill or stop).
    pub fn restart(&mut self, host: &Host) -> Result<()> {
        assert_eq!(host.path(), self.host_ns);
        self.spawn(host)
    }

    /// Waits until the agent logged "ready" (after its subnet file was
    /// written) at least `nth` times in its log.
    pub fn wait_ready_n(&self, nth: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            if log.lines().filter(|l| l.ends_with("] ready") || l.ends_with(" ready")).count() >= nth {
                return Ok(());
            }
            if let Some(child) = &self.child {
                if !child.is_running() {
                    bail!("agent {} exited before becoming ready; log:\n{log}", self.name);
                }
            }
            if start.elapsed() > timeout {
                bail!("agent {} not ready after {timeout:?}; log:\n{log}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.wait_ready_n(1, timeout)
    }

    /// FLANNEL_SUBNET's lease: (network address, prefix length, gateway).
    pub fn lease(&self) -> Result<(Ipv4Addr, u8, Ipv4Addr)> {
        let value = self.subnet_file_value("FLANNEL_SUBNET")?;
        let (addr, len) = value.split_once('/').context("FLANNEL_SUBNET without prefix")?;
        let gw: Ipv4Addr = addr.parse()?;
        let len: u8 = len.parse()?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok((Ipv4Addr::from(u32::from(gw) & mask), len, gw))
    }

    /// Our v6 lease from the subnet file's FLANNEL_IPV6_SUBNET: (the
    /// subnet, its first address: the pods' v6 gateway).
    pub fn lease6(&self) -> Result<(ipnet::Ipv6Net, std::net::Ipv6Addr)> {
        let first: ipnet::Ipv6Net = self.subnet_file_value("FLANNEL_IPV6_SUBNET")?.parse().context("FLANNEL_IPV6_SUBNET")?;
        Ok((first.trunc(), first.addr()))
    }

    /// One variable of the subnet file.
    fn subnet_file_value(&self, name: &str) -> Result<String> {
        let text = fs::read_to_string(&self.subnet_file)
            .with_context(|| format!("reading {}", self.subnet_file.display()))?;
        let prefix = format!("{name}=");
        let value = text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).with_context(|| format!("no {name}"))?;
        Ok(value.trim().to_string())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's pin layout under its `--bpf-pin-dir`.
    pub fn pins(&self) -> overlay_agent::datapath::PinLayout {
        overlay_agent::datapath::PinLayout::new(&self.pin_root)
    }

    /// The versioned pin folder.
    pub fn pin_dir(&self) -> PathBuf {
        self.pins().dir().to_path_buf()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid())
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            c.kill();
        }
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take().and_then(|c| c.terminate(Duration::from_secs(10)))
    }

    /// Waits for the agent to exit on its own (e.g. after a fatal error).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.child.as_ref()?.wait_timeout(timeout)?;
        self.child = None;
        Some(status)
    }

    pub fn is_running(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.is_running())
    }

    /// How many times the agent has logged "ready" so far (once per start).
    pub fn ready_count(&self) -> usize {
        self.log_text().lines().filter(|l| l.ends_with("] ready") || l.ends_with(" ready")).count()
    }

    /// Log lines at `level` ("ERROR", "WARN", ...), as env_logger prints them.
    pub fn log_lines_at(&self, level: &str) -> Vec<String> {
        let tag = format!(" {level} ");
        self.log_text().lines().filter(|l| l.contains(&tag)).map(str::to_string).collect()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if start.elapsed() > timeout {
                bail!("agent {}: no log line with {needle:?} after {timeout:?}; log:\n{log}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// User + system CPU time the running agent process has used so far
    /// (fields 14 and 15 of /proc/<pid>/stat), or None if it is not running.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.pid()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3.
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    /// `overlay-agent inspect --json` on this agent's pin folder (reads the
    /// pins only; works while the agent is down).
    pub fn inspect(&self) -> Result<serde_json::Value> {
        let out = std::process::Command::new(agent_binary())
            .arg("inspect")
            .arg("--json")
            .arg(format!("--bpf-pin-dir={}", self.pin_root.display()))
            .stdin(Stdio::null())
            .output()
            .context("running overlay-agent inspect")?;
        if !out.status.success() {
            bail!("overlay-agent inspect failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("inspect output {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        // Unpinning detaches the programs and frees the maps.
        let _ = fs::remove_dir_all(&self.pin_root);
        if std::thread::panicking() {
            eprintln!("--- log of agent {} ---\n{}", self.name, self.log_text());
        }
    }
}

/// The time stamp of an agent log line (env_logger's
/// `[2026-11-23T19:49:00.123Z LEVEL target] message`).
pub fn log_time(line: &str) -> Option<std::time::SystemTime> {
    use std::time::UNIX_EPOCH;
    let ts = line.strip_prefix('[')?.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, s) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days since the epoch of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = (days * 86400 + h * 3600 + min * 60) as f64 + s;
    Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// `GET path` from the agent's health server at 127.0.0.1:`port` inside
/// `host` (its `--healthz-ip=127.0.0.1 --healthz-port=PORT`), as a probe
/// does: the status code and the body. `timeout` bounds connect, send and
/// answer together (a kubelet probe's timeoutSeconds).
pub fn http_get(host: &Host, port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let answer = host.in_ns(|| -> Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text).with_context(|| format!("reading the answer to GET {path}"))?;
        Ok(text)
    })?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
