//! Network-namespace testbeds: N "hosts" whose `eth0` sit on one bridged
//! underlay, and "pods" (namespaces of their own) behind bridges in a host.
//!
//! ```text
//!   ov<id>-ul:   br0 ── h0, h1, ...        (underlay bridge and host-side veths)
//!   ov<id>-h0:   eth0 192.168.77.10/24     (+ bridges such as cni0, vethp0 ...)
//!   ov<id>-h0p0: eth0 10.42.1.2/24, default via 10.42.1.1
//! ```
//!
//! A cable testbed ([`Testbed::cable`]) has exactly two hosts and no
//! underlay namespace: the hosts' `eth0` are the two ends of one veth pair,
//! like two NICs joined by a cable (still one L2 segment).
//!
//! Commands run in a namespace through `nsenter --net=/var/run/netns/NAME`,
//! never `ip netns exec`: the latter remounts /sys in a private mount
//! namespace, which hides /sys/fs/bpf and makes BPF pinning fail. With
//! nsenter only the network namespace changes.
//!
//! Every veth is created directly inside its namespaces, so nothing ever
//! shows up in the root namespace, and names cannot clash between testbeds.

use crate::util::{self, make_owned_dir, FileLock};
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::CString;
use std::fs;
use std::io::Write;
use ipnet::Ipv6Net;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const BPFFS: &str = "/sys/fs/bpf";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding a lock must not break cleanup.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bpffs_mounted() -> Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // Fields: id parent maj:min root mountpoint options ... - fstype source superopts
    Ok(info.lines().any(|l| {
        let mut parts = l.split(" - ");
        let (Some(head), Some(tail)) = (parts.next(), parts.next()) else {
            return false;
        };
        head.split_whitespace().nth(4) == Some(BPFFS) && tail.split_whitespace().next() == Some("bpf")
    }))
}

/// Mounts bpffs at /sys/fs/bpf if it is not mounted (fresh machines do not
/// have it). Idempotent, and safe to call from concurrent tests and test
/// binaries: a second mount stacked on the first would hide pins already made.
pub fn ensure_bpffs() -> Result<()> {
    static LOCAL: Mutex<()> = Mutex::new(());
    let _local = lock(&LOCAL);
    if bpffs_mounted()? {
        return Ok(());
    }
    let _global = FileLock::acquire("overlay-tests-bpffs.lock")?;
    if bpffs_mounted()? {
        return Ok(());
    }
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("bpf"), c(BPFFS), c("bpf"));
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(anyhow!(std::io::Error::last_os_error()).context(format!("mount -t bpf bpf {BPFFS}")));
    }
    Ok(())
}

/// What a testbed must clean up: the processes it spawned and the
/// namespaces it created. Shared by every `Netns` of the testbed.
struct Tracker {
    children: Mutex<Vec<Arc<Mutex<Child>>>>,
    namespaces: Mutex<Vec<String>>,
}

impl Tracker {
    fn cleanup(&self) {
        for child in lock(&self.children).drain(..) {
            let mut child = lock(&child);
            if let Ok(None) = child.try_wait() {
                util::signal_tree(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
        let names: Vec<String> = lock(&self.namespaces).drain(..).collect();
        util::kill_processes_in_netns(&names);
        for name in names.iter().rev() {
            util::delete_netns(name);
        }
    }
}

fn create_netns(tracker: &Arc<Tracker>, name: &str) -> Result<Netns> {
    {
        // Concurrent first uses of `ip netns add` race on making /run/netns a
        // shared mount point; serialise them across test binaries.
        let _guard = FileLock::acquire("overlay-tests-netns.lock")?;
        let out = Command::new("ip").args(["netns", "add", name]).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("ip netns add {name} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    lock(&tracker.namespaces).push(name.to_string());
    Ok(Netns { name: name.to_string(), tracker: tracker.clone() })
}

/// Runs `ip [-n ns] -batch -` with one command a line; stops at the first
/// failing line and reports it.
fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (Debian package iproute2)")?;
    child.stdin.take().expect("piped").write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {}-batch failed on:\n{}\n{}",
            ns.map(|n| format!("-n {n} ")).unwrap_or_default(),
            lines.join("\n"),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits until every one of `devs` in namespace `ns` is operationally up
/// with its qdisc attached. Until the kernel's link watcher has run after
/// "link set up", a device still has the `noop` qdisc and silently drops
/// what is sent through it: under load that window is long enough to lose
/// the first ARP request and fail a test's first ping.
fn wait_links_up(ns: &str, devs: &[&str]) -> Result<()> {
    wait_links(ns, devs, &["UP"])
}

/// Waits until each of `devs` has one of the operstates in `accept`.
fn wait_links(ns: &str, devs: &[&str], accept: &[&str]) -> Result<()> {
    crate::poll_until(Duration::from_secs(10), &format!("links {devs:?} {accept:?} in netns {ns}"), || {
        let out = Command::new("ip").args(["-n", ns, "-j", "link", "show"]).stdin(Stdio::null()).output()?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing ip -j link show")?;
        for dev in devs {
            let link = links
                .as_array()
                .and_then(|a| a.iter().find(|l| l.get("ifname").and_then(|n| n.as_str()) == Some(dev)))
                .ok_or_else(|| anyhow!("{dev} missing"))?;
            let operstate = link.get("operstate").and_then(|v| v.as_str()).unwrap_or("");
            let qdisc = link.get("qdisc").and_then(|v| v.as_str()).unwrap_or("");
            if !accept.contains(&operstate) || qdisc == "noop" {
                bail!("{dev}: operstate {operstate}, qdisc {qdisc}");
            }
        }
        Ok(())
    })
}

/// A named network namespace created by the harness (deleted when its
/// testbed drops; clones only refer to it).
#[derive(Clone)]
pub struct Netns {
    name: String,
    tracker: Arc<Tracker>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.name)
    }
}

impl Netns {
    /// The `ip netns` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// A `Command` running `program` in this namespace (through nsenter), for
    /// the caller to add arguments, environment and stdio. Pass it to
    /// [`Netns::spawn`] to have the process killed with the testbed.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    fn command_argv(&self, argv: &[&str]) -> Result<Command> {
        let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty argv"))?;
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs `argv` in the namespace and returns its output, whatever the exit status.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.command_argv(argv)?
            .output()
            .with_context(|| format!("running {argv:?} in netns {}", self.name))
    }

    /// Like [`Netns::exec`], but a non-zero exit is an error (with argv,
    /// status and stderr). Returns stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let out = self.exec(argv)?;
        if !out.status.success() {
            bail!(
                "{argv:?} in netns {} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                if out.stdout.is_empty() {
                    String::new()
                } else {
                    format!("\nstdout: {}", String::from_utf8_lossy(&out.stdout).trim())
                }
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh -c script` in the namespace; a non-zero exit is an error.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run(&["sh", "-c", script])
    }

    /// One `ping` from this namespace; Ok if answered within 2 s (which
    /// leaves room for one ARP retry).
    pub fn ping(&self, dst: Ipv4Addr) -> Result<()> {
        self.run(&["ping", "-c", "1", "-W", "2", "-q", &dst.to_string()]).map(drop)
    }

    /// Runs `ip -batch` lines in this namespace.
    /// Packets `dev` has received (`ip -s -j link show`'s stats64).
    pub fn rx_packets(&self, dev: &str) -> Result<u64> {
        let out = self.run(&["ip", "-s", "-j", "link", "show", "dev", dev])?;
        let json: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -s -j link show dev {dev}: {out}"))?;
        json.pointer("/0/stats64/rx/packets").and_then(|v| v.as_u64()).ok_or_else(|| anyhow!("no stats64.rx.packets for {dev} in {out}"))
    }

    pub fn ip_batch(&self, lines: &[String]) -> Result<()> {
        ip_batch(Some(&self.name), lines)
    }

    /// Spawns `cmd` (normally from [`Netns::command`]) and tracks it: it and
    /// its descendants are SIGKILLed and reaped when the testbed drops.
    pub fn spawn(&self, mut cmd: Command) -> Result<ChildHandle> {
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&self.tracker.children).push(child.clone());
        Ok(ChildHandle { pid, child })
    }

    /// Spawns `argv` in the namespace, tracked like [`Netns::spawn`], with
    /// stdin from /dev/null and stdout/stderr inherited.
    pub fn spawn_argv(&self, argv: &[&str]) -> Result<ChildHandle> {
        self.spawn(self.command_argv(argv)?)
    }

    /// Runs `f` on a scoped thread that has joined this namespace with
    /// setns(2), so sockets, netlink and /proc/thread-self/net inside `f`
    /// see this namespace (note: /proc/self/net follows the main thread).
    /// A panic in `f` is propagated.
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    panic!("setns({}): {}", path.display(), std::io::Error::last_os_error());
                }
                f()
            });
            worker.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Sets a sysctl under /proc/sys/net (which is per network namespace),
    /// e.g. `("net.ipv4.ip_forward", "1")`. A key containing '/' is taken as
    /// a path below /proc/sys as is, for interface names with dots:
    /// `("net/ipv4/conf/flannel.1/rp_filter", "0")`.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let rel = if key.contains('/') { key.to_string() } else { key.replace('.', "/") };
        let path = Path::new("/proc/sys").join(rel);
        self.in_ns(|| fs::write(&path, value)).with_context(|| format!("writing {} in netns {}", path.display(), self.name))
    }

    /// MAC address of `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> Result<[u8; 6]> {
        let out = self.run(&["ip", "-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -j output {out:?}"))?;
        let s = v.pointer("/0/address").and_then(|a| a.as_str()).ok_or_else(|| anyhow!("no address in {out}"))?;
        parse_mac(s)
    }
}

pub(crate) fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>()?;
    parts.try_into().map_err(|_| anyhow!("bad MAC {s:?}"))
}

/// A process spawned through [`Netns::spawn`]. Dropping the handle does not
/// kill the process; dropping the testbed does.
pub struct ChildHandle {
    pid: u32,
    child: Arc<Mutex<Child>>,
}

impl ChildHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILL (the process and its descendants) and reap. No-op if it has
    /// already been reaped.
    pub fn kill(&self) {
        let mut child = lock(&self.child);
        if let Ok(None) = child.try_wait() {
            util::signal_tree(self.pid, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Sends `sig` to the process (not its descendants) if it has not been reaped.
    pub fn signal(&self, sig: i32) -> Result<()> {
        let mut child = lock(&self.child);
        if child.try_wait()?.is_some() {
            bail!("process {} has already exited", self.pid);
        }
        if unsafe { libc::kill(self.pid as i32, sig) } != 0 {
            return Err(anyhow!(std::io::Error::last_os_error()).context(format!("kill({}, {sig})", self.pid)));
        }
        Ok(())
    }

    /// The exit status if the process has exited (reaping it), else None.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        Ok(lock(&self.child).try_wait()?)
    }

    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_wait() {
                Ok(Some(status)) => return Some(status),
                Err(_) => return None,
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns
    /// the exit status.
    pub fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        let _ = self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        self.kill();
        self.try_wait().ok().flatten()
    }

    /// The piped stdin, if any, once.
    pub fn take_stdin(&self) -> Option<ChildStdin> {
        lock(&self.child).stdin.take()
    }

    /// The piped stdout, if any, once.
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        lock(&self.child).stdout.take()
    }

    /// The piped stderr, if any, once.
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        lock(&self.child).stderr.take()
    }
}

/// An IPv4 network as (address, prefix length).
fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, len) = cidr.split_once('/').ok_or_else(|| anyhow!("{cidr:?} is not a CIDR"))?;
    let addr: Ipv4Addr = addr.parse().with_context(|| format!("address in {cidr:?}"))?;
    let len: u8 = len.parse().with_context(|| format!("prefix length in {cidr:?}"))?;
    if len > 30 {
        bail!("{cidr:?}: prefix too long for an underlay");
    }
    let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
    Ok((Ipv4Addr::from(u32::from(addr) & mask), len))
}

/// How the hosts' `eth0` are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnderlayKind {
    /// A bridge `br0` in an underlay namespace, one veth port per host (a switch).
    Bridge,
    /// Two hosts whose `eth0` are the two ends of one veth pair (a cable).
    Cable,
}

/// N hosts on a shared underlay; everything is removed on drop.
pub struct Testbed {
    id: String,
    dir: PathBuf,
    tracker: Arc<Tracker>,
    /// The bridge's namespace; None for a cable.
    underlay: Option<Netns>,
    network: Ipv4Addr,
    prefix_len: u8,
    mtu: u32,
    hosts: Vec<Host>,
}

impl Testbed {
    /// Underlay 192.168.77.0/24, MTU 1500; host i gets 192.168.77.(10+i).
    pub fn new(hosts: usize) -> Result<Testbed> {
        Self::with_underlay(hosts, "192.168.77.0/24", 1500)
    }

    /// Underlay `cidr` (host i gets network + 10 + i) with `mtu` on every
    /// underlay link.
    pub fn with_underlay(hosts: usize, cidr: &str, mtu: u32) -> Result<Testbed> {
        let mut tb = Self::empty(cidr, mtu, UnderlayKind::Bridge)?;
        let underlay = tb.underlay().clone();
        underlay.ip_batch(&[
            "link set lo up".into(),
            "link add br0 type bridge".into(),
            format!("link set br0 mtu {mtu} up"),
        ])?;
        for _ in 0..hosts {
            tb.add_host()?;
        }
        Ok(tb)
    }

    /// Two hosts whose `eth0` are the two ends of one veth pair (no bridge,
    /// no underlay namespace), on 192.168.77.0/24 with MTU 1500 like
    /// [`Testbed::new`]: host i gets 192.168.77.(10+i).
    pub fn cable() -> Result<Testbed> {
        Self::cable_with_underlay("192.168.77.0/24", 1500)
    }

    /// [`Testbed::cable`] on `cidr` with `mtu` on both ends.
    pub fn cable_with_underlay(cidr: &str, mtu: u32) -> Result<Testbed> {
        let mut tb = Self::empty(cidr, mtu, UnderlayKind::Cable)?;
        let ips = [tb.host_ip(0)?, tb.host_ip(1)?];
        let ns = [
            create_netns(&tb.tracker, &format!("ov{}-h0", tb.id))?,
            create_netns(&tb.tracker, &format!("ov{}-h1", tb.id))?,
        ];
        ip_batch(None, &[format!("link add eth0 netns {} type veth peer name eth0 netns {}", ns[0].name, ns[1].name)])?;
        // A veth end is operationally up only once its peer is up too:
        // bring the far end up first, so attaching the near one can wait for UP.
        ns[1].ip_batch(&[format!("link set eth0 mtu {mtu} up")])?;
        for (ns, ip) in ns.into_iter().zip(ips) {
            tb.attach_host(ns, ip)?;
        }
        Ok(tb)
    }

    /// A testbed with no host yet: its id, directory and (for a bridge) the
    /// underlay namespace. Once it returns, Drop cleans up whatever a
    /// failing later step leaves behind.
    fn empty(cidr: &str, mtu: u32, kind: UnderlayKind) -> Result<Testbed> {
        let (network, prefix_len) = parse_cidr(cidr)?;
        let tracker = Arc::new(Tracker { children: Mutex::new(Vec::new()), namespaces: Mutex::new(Vec::new()) });
        let (id, dir) = loop {
            let (id, dir) = make_owned_dir("tb")?;
            // The directory makes the id ours; namespaces under that id can
            // only be leftovers of a run whose directory was deleted by hand.
            if util::list_netns().iter().any(|n| n.starts_with(&format!("ov{id}-"))) {
                let _ = fs::remove_dir_all(&dir);
                continue;
            }
            fs::write(dir.join("netns-prefix"), format!("ov{id}-"))?;
            break (id, dir);
        };
        let underlay = match kind {
            UnderlayKind::Cable => None,
            UnderlayKind::Bridge => match create_netns(&tracker, &format!("ov{id}-ul")) {
                Ok(ns) => Some(ns),
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            },
        };
        Ok(Testbed { id, dir, tracker, underlay, network, prefix_len, mtu, hosts: Vec::new() })
    }

    /// How the hosts are connected.
    pub fn underlay_kind(&self) -> UnderlayKind {
        if self.underlay.is_some() {
            UnderlayKind::Bridge
        } else {
            UnderlayKind::Cable
        }
    }

    /// The unique short id in every name (`ov<id>-...`).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A scratch directory for the test's files (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn underlay_mtu(&self) -> u32 {
        self.mtu
    }

    pub fn underlay_prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Underlay address of host `i`: network + 10 + i.
    fn host_ip(&self, i: usize) -> Result<Ipv4Addr> {
        let host_no = u32::from(self.network) + 10 + i as u32;
        let broadcast = u32::from(self.network) | (u32::MAX >> self.prefix_len);
        if host_no >= broadcast {
            bail!("underlay {}/{} has no room for host {i}", self.network, self.prefix_len);
        }
        Ok(Ipv4Addr::from(host_no))
    }

    /// One more host on the same underlay, numbered after the others. A
    /// cable testbed has its two hosts from the start and takes no more.
    pub fn add_host(&mut self) -> Result<&Host> {
        let Some(underlay) = self.underlay.clone() else {
            bail!("a cable testbed has exactly two hosts");
        };
        let i = self.hosts.len();
        let ip = self.host_ip(i)?;
        let ns = create_netns(&self.tracker, &format!("ov{}-h{i}", self.id))?;
        let ul_port = format!("h{i}");
        ip_batch(None, &[format!("link add eth0 netns {} type veth peer name {ul_port} netns {}", ns.name, underlay.name)])?;
        underlay.ip_batch(&[format!("link set {ul_port} mtu {} master br0 up", self.mtu)])?;
        self.attach_host(ns, ip)?;
        wait_links_up(&underlay.name, &[&ul_port])?;
        Ok(&self.hosts[i])
    }

    /// Configures host namespace `ns`, whose `eth0` is already connected:
    /// addresses, MTU, forwarding; then adds it as the next host.
    fn attach_host(&mut self, ns: Netns, ip: Ipv4Addr) -> Result<&Host> {
        let i = self.hosts.len();
        ns.ip_batch(&[
            "link set lo up".into(),
            format!("link set eth0 mtu {} up", self.mtu),
            format!("addr add {ip}/{} dev eth0", self.prefix_len),
        ])?;
        ns.set_sysctl("net/ipv4/ip_forward", "1")?;
        wait_links_up(&ns.name, &["eth0"])?;
        self.hosts.push(Host { ns, index: i, ip, prefix_len: self.prefix_len, pods: Mutex::new(Vec::new()), next_pod: AtomicUsize::new(0) });
        Ok(&self.hosts[i])
    }

    /// The namespace holding the underlay bridge, e.g. for tcpdump captures.
    /// Panics on a cable testbed, which has none (see
    /// [`Testbed::underlay_kind`]).
    pub fn underlay(&self) -> &Netns {
        self.underlay.as_ref().expect("a cable testbed has no underlay namespace")
    }

    /// The underlay bridge's name in [`Testbed::underlay`]: "br0".
    pub fn underlay_bridge(&self) -> &str {
        "br0"
    }

    /// The underlay-side veth of host `i` (a port of br0).
    pub fn underlay_port(&self, i: usize) -> String {
        format!("h{i}")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.tracker.cleanup();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A host: a namespace with `eth0` on the underlay and IPv4 forwarding on.
pub struct Host {
    ns: Netns,
    index: usize,
    ip: Ipv4Addr,
    prefix_len: u8,
    pods: Mutex<Vec<Pod>>,
    next_pod: AtomicUsize,
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Host {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Position in the testbed (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Underlay address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Underlay address with prefix, e.g. "192.168.77.10/24".
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.prefix_len)
    }

    /// The underlay interface inside the host namespace.
    pub fn uplink(&self) -> &str {
        "eth0"
    }

    /// Creates a bridge `name`, sets its MTU, brings it up, and gives it
    /// `addr_cidr` if any (e.g. `("cni0", Some("10.42.1.1/24"), 1450)`).
    pub fn add_bridge(&self, name: &str, addr_cidr: Option<&str>, mtu: u32) -> Result<()> {
        let mut lines = vec![format!("link add {name} type bridge"), format!("link set {name} mtu {mtu} up")];
        if let Some(addr) = addr_cidr {
            lines.push(format!("addr add {addr} dev {name}"));
        }
        self.ns.ip_batch(&lines)
    }

    /// A pod: a new namespace whose `eth0` (address `addr_cidr`, `mtu`,
    /// default route via `gateway`) is a veth peered with `vethp<N>` in this
    /// host, attached to `bridge`. A missing bridge is created with the
    /// gateway address, as the CNI bridge plugin does (`isGateway`); the
    /// real plugin is driven by [`crate::cni`].
    pub fn add_pod(&self, bridge: &str, addr_cidr: &str, gateway: Ipv4Addr, mtu: u32) -> Result<Pod> {
        let (ip, prefix_len) = {
            let (a, l) = addr_cidr.split_once('/').ok_or_else(|| anyhow!("{addr_cidr:?} is not a CIDR"))?;
            (a.parse::<Ipv4Addr>()?, l.parse::<u8>()?)
        };
        let (ns, host_veth, mac) = self.pod_netns(bridge, &format!("{gateway}/{prefix_len}"), mtu, &[
            format!("addr add {addr_cidr} dev eth0"),
            format!("route add default via {gateway} dev eth0"),
        ])?;
        let pod = Pod { ns, ip, prefix_len, gateway, host_veth, mac, host_index: self.index };
        lock(&self.pods).push(pod.clone());
        Ok(pod)
    }

    /// An IPv6-only pod (an IPv6-only cluster's): as [`Host::add_pod`], but
    /// `eth0` has only the IPv6 address `addr` in `subnet` and a default
    /// route via `gateway` (a missing bridge gets `gateway/<len>`). It is
    /// not among [`Host::pods`], which are IPv4 pods.
    pub fn add_pod6(&self, bridge: &str, subnet: Ipv6Net, addr: Ipv6Addr, gateway: Ipv6Addr, mtu: u32) -> Result<Pod6> {
        let len = subnet.prefix_len();
        let (ns, host_veth, mac) = self.pod_netns(bridge, &format!("{gateway}/{len} nodad"), mtu, &[
            format!("addr add {addr}/{len} dev eth0 nodad"),
            format!("route add default via {gateway} dev eth0"),
        ])?;
        Ok(Pod6 { ns, ip: addr, host_veth, mac })
    }

    /// A pod namespace whose `eth0` is a veth on `bridge` (created with
    /// `bridge_addr` when missing), configured by `lines`: its namespace,
    /// the host veth's name and the pod's MAC.
    fn pod_netns(&self, bridge: &str, bridge_addr: &str, mtu: u32, lines: &[String]) -> Result<(Netns, String, [u8; 6])> {
        if self.ns.run(&["ip", "link", "show", "dev", bridge]).is_err() {
            self.add_bridge(bridge, Some(bridge_addr), mtu)?;
        }
        let j = self.next_pod.fetch_add(1, Ordering::Relaxed);
        let ns = create_netns(&self.ns.tracker, &format!("{}p{j}", self.ns.name))?;
        let host_veth = format!("vethp{j}");
        ip_batch(None, &[format!("link add eth0 netns {} type veth peer name {host_veth} netns {}", ns.name, self.ns.name)])?;
        self.ns.ip_batch(&[format!("link set {host_veth} mtu {mtu} master {bridge} up")])?;
        let mut setup = vec!["link set lo up".into(), format!("link set eth0 mtu {mtu} up")];
        setup.extend(lines.iter().cloned());
        ns.ip_batch(&setup)?;
        wait_links_up(&self.ns.name, &[&host_veth])?;
        // A bridge made a moment ago may still say UNKNOWN until the kernel's
        // link watch runs (it is up and forwarding already).
        wait_links(&self.ns.name, &[bridge], &["UP", "UNKNOWN"])?;
        wait_links_up(&ns.name, &["eth0"])?;
        let mac = ns.mac("eth0")?;
        Ok((ns, host_veth, mac))
    }

    /// The pods added so far.
    pub fn pods(&self) -> Vec<Pod> {
        lock(&self.pods).clone()
    }
}

/// A pod namespace behind a host bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    host_veth: String,
    mac: [u8; 6],
    host_index: usize,
}

impl Deref for Pod {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Pod {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The host-side veth's name (in the host namespace).
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    /// MAC address of the pod's `eth0`.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Index of the host it hangs off.
    pub fn host_index(&self) -> usize {
        self.host_index
    }
}

/// An IPv6-only pod namespace behind a host bridge ([`Host::add_pod6`]).
#[derive(Clone, Debug)]
pub struct Pod6 {
    ns: Netns,
    ip: Ipv6Addr,
    host_veth: String,
    mac: [u8; 6],
}

impl Deref for Pod6 {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Pod6 {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn ip(&self) -> Ipv6Addr {
        self.ip
    }

    /// The host-side veth's name (in the host namespace).
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    /// MAC address of the pod's `eth0`.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// The address `n` after `ip` (a pod's address from its gateway's).
pub fn next(ip: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) + n)
}
