//! Small helpers shared by the harness modules: randomness, ports, scratch
//! directories with an owner stamp, process-tree killing, file locks, polling.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// `bytes` random bytes as lowercase hex (so 2*bytes characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Calls `f` until it returns `Ok`, every 50 ms, for at most `timeout`.
/// The error names `what` and carries `f`'s last error, so a test failure
/// says what was awaited and why it never happened.
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("timed out after {timeout:?} waiting for {what}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Root of every scratch directory the harness makes.
pub(crate) fn base_dir() -> PathBuf {
    std::env::temp_dir().join("overlay-tests")
}

fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3; the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A stamp identifying this process even across pid reuse.
fn owner_stamp() -> String {
    let pid = std::process::id();
    format!("{pid} {}", proc_start_time(pid).unwrap_or(0))
}

fn owner_alive(stamp: &str) -> bool {
    let mut it = stamp.split_whitespace();
    let (Some(pid), Some(start)) = (it.next(), it.next()) else { return false };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else { return false };
    proc_start_time(pid) == Some(start)
}

/// Creates a new directory `base_dir()/<prefix>-<id>` with a random id
/// (returned too), stamped with this process as owner so that a later run
/// can clean it up if this process dies without unwinding.
pub(crate) fn make_owned_dir(prefix: &str) -> Result<(String, PathBuf)> {
    reap_stale_once();
    let base = base_dir();
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let (id, dir) = loop {
        let id = random_hex(3);
        let dir = base.join(format!("{prefix}-{id}"));
        // create_dir, not create_dir_all: the id must be ours alone.
        match fs::create_dir(&dir) {
            Ok(()) => break (id, dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow!(e).context(format!("creating {}", dir.display()))),
        }
    };
    // Written under another name and renamed: a concurrent cleanup_stale()
    // must never read a half-written stamp and take this directory for dead.
    fs::write(dir.join("owner.tmp"), owner_stamp())?;
    fs::rename(dir.join("owner.tmp"), dir.join("owner"))?;
    Ok((id, dir))
}

/// Records a process whose command line mentions `dir`, for stale cleanup.
pub(crate) fn record_pid(dir: &Path, pid: u32) {
    use std::io::Write;
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(dir.join("pids")) {
        let _ = writeln!(f, "{pid}");
    }
}

fn reap_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(cleanup_stale);
}

/// Removes what earlier test processes left behind when they were killed
/// (a test timeout, ^C during a hang): their etcd servers, their namespaces
/// and the processes inside them, their directories. Only directories whose
/// owner process is gone are touched, so concurrent test binaries are safe.
/// Runs by itself once per process, when the first harness object is made.
pub fn cleanup_stale() {
    let Ok(entries) = fs::read_dir(base_dir()) else { return };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(stamp) = fs::read_to_string(dir.join("owner")) else { continue };
        if owner_alive(&stamp) {
            continue;
        }
        if let Ok(prefix) = fs::read_to_string(dir.join("netns-prefix")) {
            let names: Vec<String> = list_netns().into_iter().filter(|n| n.starts_with(prefix.trim())).collect();
            kill_processes_in_netns(&names);
            for n in &names {
                delete_netns(n);
            }
        }
        if let Ok(pids) = fs::read_to_string(dir.join("pids")) {
            let needle = dir.to_string_lossy().into_owned();
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Names under /var/run/netns (what `ip netns list` shows).
pub(crate) fn list_netns() -> Vec<String> {
    fs::read_dir("/var/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// What `ip netns delete` does, without a process per namespace. Errors are
/// ignored: the namespace may be gone already.
pub(crate) fn delete_netns(name: &str) {
    let Ok(path) = std::ffi::CString::new(format!("/var/run/netns/{name}")) else { return };
    unsafe {
        libc::umount2(path.as_ptr(), libc::MNT_DETACH);
        libc::unlink(path.as_ptr());
    }
}

/// SIGKILLs every other process whose network namespace is one of `names`.
/// A namespace with a process still inside outlives `ip netns delete`, so
/// this runs before deleting, and also catches processes a test started
/// without going through the harness.
pub(crate) fn kill_processes_in_netns(names: &[String]) {
    let inodes: HashSet<u64> = names
        .iter()
        .filter_map(|n| fs::metadata(format!("/var/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return;
    }
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(link) = fs::read_link(format!("/proc/{pid}/ns/net")) else { continue };
        let link = link.to_string_lossy();
        let ino = link.strip_prefix("net:[").and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse::<u64>().ok());
        if ino.is_some_and(|i| inodes.contains(&i)) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// `pid` and all its descendants, parents before children.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    out
}

/// Sends `sig` to `pid` and every descendant. Descendants are collected
/// first because once the parent dies they are reparented and untraceable.
pub(crate) fn signal_tree(pid: u32, sig: i32) {
    for p in process_tree(pid) {
        unsafe { libc::kill(p as i32, sig) };
    }
}

/// Hands out loopback TCP ports that are free now and were not handed out
/// before by this process. Ports come from below the kernel's ephemeral
/// range so that outgoing connections do not take them between our check
/// and etcd's bind; concurrent test binaries pick at random, and callers
/// retry on "address already in use".
pub(crate) fn free_port() -> Result<u16> {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let r = u16::from_str_radix(&random_hex(2), 16).unwrap_or(0);
        let port = 20000 + r % 12000;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            used.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

/// An exclusive `flock` on a file under /run/lock, held until dropped.
/// Serialises host-global operations across concurrent test binaries.
pub(crate) struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub(crate) fn acquire(name: &str) -> Result<FileLock> {
        let dir = Path::new("/run/lock");
        let _ = fs::create_dir_all(dir);
        let path = dir.join(name);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        loop {
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { _file: f });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(anyhow!(err).context(format!("flock {}", path.display())));
            }
        }
    }
}

/// Last `max` bytes of a file, for error messages quoting a log.
pub(crate) fn tail(path: &Path, max: usize) -> String {
    let data = fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}
