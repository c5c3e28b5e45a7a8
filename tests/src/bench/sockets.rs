//! Traffic made by the benchmark itself: a 64-byte UDP flood (sendmmsg /
//! recvmmsg) and a UDP request/response ping-pong (blocking or spinning
//! sockets), each on sockets created inside the pod namespaces
//! ([`Netns::in_ns`]); CPU time from /proc/stat.
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::bench::stats::percentile;
use crate::netns::Pod;

/// CPUs online. Not `available_parallelism()`: that is the calling
/// thread's affinity mask, which is one CPU once the thread is pinned.
fn online_cpus() -> usize {
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// Pins the calling thread to `cpu` (ignored when the machine has fewer).
pub fn pin_to_cpu(cpu: usize) {
    let n = online_cpus();
    if n < 2 {
        return;
    }
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % n, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn set_buf(sock: &UdpSocket, opt: libc::c_int, bytes: i32) {
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        );
    }
}

/// System, softirq and irq time of all CPUs (/proc/stat's `cpu` line), and
/// the total, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub system: u64,
    pub softirq: u64,
    pub irq: u64,
    pub user: u64,
    pub total: u64,
}

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(&stat)
    }

    pub fn parse(stat: &str) -> CpuTimes {
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return CpuTimes::default() };
        let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let get = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal guest guest_nice
        CpuTimes { user: get(0) + get(1), system: get(2), irq: get(5), softirq: get(6), total: f.iter().take(8).sum() }
    }

    /// Seconds of system + softirq + irq time from `earlier` to `self`.
    pub fn kernel_seconds_since(&self, earlier: &CpuTimes) -> f64 {
        let ticks = (self.system + self.softirq + self.irq).saturating_sub(earlier.system + earlier.softirq + earlier.irq);
        ticks as f64 / clock_ticks()
    }

    pub fn user_seconds_since(&self, earlier: &CpuTimes) -> f64 {
        self.user.saturating_sub(earlier.user) as f64 / clock_ticks()
    }
}

fn clock_ticks() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FloodResult {
    pub sent: u64,
    pub received: u64,
    /// Datagrams delivered to the receiving socket per second.
    pub delivered_pps: f64,
    pub sent_pps: f64,
    /// CPU time of the sending thread. The kernel here does tick-based CPU
    /// accounting without IRQ_TIME_ACCOUNTING, so the softirq work done in
    /// the thread's context (the whole path up to the receiving socket) is
    /// charged to it: this is the path's cost, whatever else shares the CPU.
    pub sender_cpu_s: f64,
    /// Datagrams delivered per CPU-second of the sending core.
    pub delivered_per_cpu_s: f64,
}

fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

const BATCH: usize = 64;

/// `payload`-byte UDP datagrams from `from` to `to` as fast as one sender
/// thread can (sendmmsg, batches of 64) for `duration`; the receiver
/// (recvmmsg, non-blocking, spinning) counts what arrives. Sender on CPU 0,
/// receiver on CPU 1. Everything between the two sockets runs in softirq on
/// the sender's CPU (each veth hop queues to that CPU's backlog), so the
/// delivered rate is the inverse of the path's cost per packet, sender
/// syscall included.
pub fn udp_flood(from: (&Pod, IpAddr), to: (&Pod, IpAddr), duration: Duration, payload: usize) -> Result<FloodResult> {
    let (from, from_ip) = from;
    let (to, to_ip) = to;
    let rx = to.in_ns(|| UdpSocket::bind(SocketAddr::new(to_ip, 0))).context("binding the receiver")?;
    set_buf(&rx, libc::SO_RCVBUFFORCE, 32 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(50)))?;
    let addr = rx.local_addr()?;
    let tx = from.in_ns(|| UdpSocket::bind(SocketAddr::new(from_ip, 0))).context("binding the sender")?;
    tx.connect(addr)?;
    let stop_rx = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = stop_rx.clone();
        std::thread::spawn(move || {
            pin_to_cpu(1);
            let mut bufs = vec![[0u8; 256]; BATCH];
            let mut count = 0u64;
            let mut first: Option<Instant> = None;
            let mut last = Instant::now();
            let mut idle_since: Option<Instant> = None;
            loop {
                let n = recv_batch(&rx, &mut bufs);
                if n > 0 {
                    last = Instant::now();
                    first.get_or_insert(last);
                    count += n as u64;
                    idle_since = None;
                } else if stop.load(Ordering::Relaxed) {
                    // The sender is done: stop once nothing came for 300 ms.
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(300) {
                        break;
                    }
                }
            }
            (count, first.map(|f| last.duration_since(f)))
        })
    };
    pin_to_cpu(0);
    let msg = vec![0x5au8; payload];
    let mut sent = 0u64;
    let cpu0 = thread_cpu_s();
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..16 {
            sent += send_batch(&tx, &msg) as u64;
        }
    }
    let send_time = start.elapsed();
    let sender_cpu_s = thread_cpu_s() - cpu0;
    unpin();
    stop_rx.store(true, Ordering::Relaxed);
    let (received, span) = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let span = span.unwrap_or(send_time).max(Duration::from_millis(1));
    if received == 0 {
        bail!("no datagram arrived ({sent} sent)");
    }
    Ok(FloodResult {
        sent,
        received,
        delivered_pps: received as f64 / span.as_secs_f64(),
        sent_pps: sent as f64 / send_time.as_secs_f64(),
        sender_cpu_s,
        delivered_per_cpu_s: received as f64 / sender_cpu_s.max(1e-9),
    })
}

/// Lets the calling thread run on every online CPU again. (With the CPU
/// count taken from the thread's own, pinned, affinity, this used to leave
/// the main thread on CPU 0 after the first flood, and with it every thread
/// and process it started later: pin_to_cpu(1) then did nothing.)
fn unpin() {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..online_cpus() {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn send_batch(sock: &UdpSocket, msg: &[u8]) -> usize {
    let mut iov: [libc::iovec; BATCH] =
        std::array::from_fn(|_| libc::iovec { iov_base: msg.as_ptr() as *mut libc::c_void, iov_len: msg.len() });
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
    }
    let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), BATCH as u32, 0) };
    n.max(0) as usize
}

fn recv_batch(sock: &UdpSocket, bufs: &mut [[u8; 256]]) -> usize {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: b.len() })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = (0..iov.len()).map(|_| unsafe { MaybeUninit::zeroed().assume_init() }).collect();
    for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
    }
    // Never blocks: the receiver spins on its own CPU, so delivering a
    // datagram never has to wake it. A wake-up is a cross-CPU interrupt,
    // which in a VM costs the sending CPU (where the whole path runs, in
    // softirq) a VM exit per datagram, the same in every mode: it would
    // dilute the differences between the data paths.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as u32,
            libc::MSG_WAITFORONE | libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    n.max(0) as usize
}

/// How the request/response sockets wait for the next datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    /// Blocking recv: the receiver sleeps, and each datagram has to wake
    /// it (in a VM: an IPI and a VM exit), as most applications do.
    Blocking,
    /// Non-blocking recv in a loop, never sleeping: no wake-up is on the
    /// path, so what is left is the data path plus the syscalls (as a
    /// busy-polling application would see it).
    Spinning,
}

impl Wait {
    pub const ALL: [Wait; 2] = [Wait::Blocking, Wait::Spinning];

    pub fn name(self) -> &'static str {
        match self {
            Wait::Blocking => "blocking",
            Wait::Spinning => "spinning",
        }
    }
}

/// One datagram from `sock` into `buf`, waiting at most `timeout`: a
/// blocking socket's read timeout (set to `timeout` by the caller) does the
/// waiting; a non-blocking one is polled until the deadline. WouldBlock or
/// TimedOut when nothing came.
fn recv_within(sock: &UdpSocket, buf: &mut [u8], wait: Wait, timeout: Duration) -> std::io::Result<usize> {
    if wait == Wait::Blocking {
        return sock.recv(buf);
    }
    let deadline = Instant::now() + timeout;
    loop {
        // Each poll is a recv syscall, so there is no tight PAUSE loop to
        // hint. (Spinning needs client and server on different CPUs: two
        // spinners sharing one take turns in scheduler ticks, milliseconds.)
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
            r => return r,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PingPongResult {
    pub wait: Wait,
    pub round_trips: usize,
    pub lost: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// `n` UDP request/response round trips of `payload` bytes from `from` to an
/// echo server in `to` (after `warmup` unrecorded ones), one outstanding at
/// a time. Client on CPU 0, server on CPU 1; both sockets blocking, or both
/// non-blocking and polled without sleeping (`wait`).
pub fn udp_ping_pong(
    from: (&Pod, IpAddr),
    to: (&Pod, IpAddr),
    n: usize,
    warmup: usize,
    payload: usize,
    wait: Wait,
) -> Result<PingPongResult> {
    let (from, from_ip) = from;
    let (to, to_ip) = to;
    let spin = wait == Wait::Spinning;
    let server = to.in_ns(|| UdpSocket::bind(SocketAddr::new(to_ip, 0))).context("binding the echo server")?;
    // Spinning: recv_from returns WouldBlock at once and the loop goes on.
    server.set_nonblocking(spin)?;
    server.set_read_timeout(Some(Duration::from_millis(100)))?;
    let addr: SocketAddr = server.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pin_to_cpu(1);
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..len], peer);
                }
            }
        })
    };
    let client = from.in_ns(|| UdpSocket::bind(SocketAddr::new(from_ip, 0))).context("binding the client")?;
    client.connect(addr)?;
    let timeout = Duration::from_millis(200);
    client.set_nonblocking(spin)?;
    client.set_read_timeout(Some(timeout))?;
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(0);
            let mut msg = vec![0u8; payload.max(8)];
            let mut buf = [0u8; 2048];
            let mut rtts = Vec::with_capacity(n);
            let mut lost = 0usize;
            let deadline = Instant::now() + Duration::from_secs(120);
            for seq in 0..(warmup + n) as u64 {
                if Instant::now() > deadline {
                    break;
                }
                msg[..8].copy_from_slice(&seq.to_be_bytes());
                let t = Instant::now();
                if client.send(&msg).is_err() {
                    lost += 1;
                    continue;
                }
                loop {
                    match recv_within(&client, &mut buf, wait, timeout) {
                        Ok(len) if len >= 8 && buf[..8] == seq.to_be_bytes() => {
                            if seq >= warmup as u64 {
                                rtts.push(t.elapsed().as_secs_f64() * 1e6);
                            }
                            break;
                        }
                        Ok(_) => continue, // a late answer to an earlier request
                        Err(_) => {
                            lost += 1;
                            break;
                        }
                    }
                }
            }
            (rtts, lost)
        })
        .join()
        .expect("ping-pong client panicked")
    });
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    let (mut rtts, lost) = result;
    if rtts.is_empty() {
        bail!("no round trip completed ({lost} lost)");
    }
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    Ok(PingPongResult {
        wait,
        round_trips: rtts.len(),
        lost,
        p50_us: percentile(&rtts, 50.0),
        p90_us: percentile(&rtts, 90.0),
        p99_us: percentile(&rtts, 99.0),
        mean_us: mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_line() {
        let stat = "cpu  100 5 200 9000 10 3 40 0 0 0\ncpu0 50 2 100 4500 5 1 20 0 0 0\n";
        let t = CpuTimes::parse(stat);
        assert_eq!((t.user, t.system, t.irq, t.softirq), (105, 200, 3, 40));
        assert_eq!(t.total, 100 + 5 + 200 + 9000 + 10 + 3 + 40);
        let later = CpuTimes { system: 300, softirq: 60, irq: 3, ..t };
        assert!((later.kernel_seconds_since(&t) - 120.0 / clock_ticks()).abs() < 1e-9);
    }
}
