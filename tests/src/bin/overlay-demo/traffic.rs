//! Traffic between pods: pings with their RTT, and a timed TCP transfer
//! whose every byte is checked on arrival.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use overlay_tests::netns::Netns;
use overlay_tests::traffic::{parse_ping, PingStats};

use crate::signals;

/// Pings `dst` from `from` until it answers (the first packets may race the
/// last lease reaching every node), for at most `timeout`.
pub fn wait_reachable(from: &Netns, dst: Ipv4Addr, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        signals::check()?;
        let out = from.exec(&["ping", "-c", "1", "-W", "1", "-q", &dst.to_string()])?;
        signals::check()?;
        if out.status.success() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "{} cannot reach {dst} after {timeout:?}:\n{}",
                from.name(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        signals::nap(Duration::from_millis(100))?;
    }
}

/// `count` pings `interval` apart.
pub fn ping(from: &Netns, dst: Ipv4Addr, count: u32, interval: &str) -> Result<PingStats> {
    let out = from.exec(&["ping", "-q", "-c", &count.to_string(), "-i", interval, "-W", "1", &dst.to_string()])?;
    signals::check()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_ping(&text).ok_or_else(|| anyhow!("unexpected ping output from {}: {text}{}", from.name(), String::from_utf8_lossy(&out.stderr)))
}

/// A 1 MiB pseudo-random block, sent over and over.
fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Whether `got` equals the pattern at stream offset `pos` (slice compares
/// are memcmp, fast even in a debug build).
fn matches(pattern: &[u8], pos: u64, got: &[u8]) -> bool {
    let p = pattern.len();
    let mut off = (pos % p as u64) as usize;
    let mut rest = got;
    while !rest.is_empty() {
        let n = rest.len().min(p - off);
        if rest[..n] != pattern[off..off + n] {
            return false;
        }
        rest = &rest[n..];
        off = 0;
    }
    true
}

pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Transfer {
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// Streams the pattern over one TCP connection from `from` to `to_ip` (a
/// listener in `to`) for about `duration`; the receiver checks every byte
/// and reports the count back, so the time covers delivery, not just
/// queueing.
pub fn tcp_transfer(from: &Netns, to: &Netns, to_ip: Ipv4Addr, duration: Duration) -> Result<Transfer> {
    let listener = to
        .in_ns(|| TcpListener::bind(SocketAddrV4::new(to_ip, 0)))
        .with_context(|| format!("listening on {to_ip} in {}", to.name()))?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let receiver = std::thread::spawn(move || -> Result<(u64, bool)> {
        let pattern = pattern();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline || signals::received().is_some() {
                        bail!("no connection came");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 256 << 10];
        let (mut total, mut intact) = (0u64, true);
        loop {
            let n = s.read(&mut buf).context("receiving")?;
            if n == 0 {
                break;
            }
            intact &= matches(&pattern, total, &buf[..n]);
            total += n as u64;
        }
        s.write_all(&total.to_be_bytes())?;
        Ok((total, intact))
    });

    let send = || -> Result<Transfer> {
        let pattern = pattern();
        let mut c = from
            .in_ns(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .with_context(|| format!("connecting to {addr} from {}", from.name()))?;
        c.set_write_timeout(Some(Duration::from_secs(10)))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < duration {
            signals::check()?;
            c.write_all(&pattern).context("sending")?;
            sent += pattern.len() as u64;
        }
        c.shutdown(Shutdown::Write)?;
        let mut count = [0u8; 8];
        c.read_exact(&mut count).context("waiting for the receiver's count")?;
        let elapsed = started.elapsed();
        let counted = u64::from_be_bytes(count);
        if counted != sent {
            bail!("sent {sent} bytes but {counted} arrived");
        }
        Ok(Transfer { bytes: sent, elapsed })
    };
    let sent = send();
    let received = receiver.join().map_err(|_| anyhow!("the receiving thread panicked"))?;
    let transfer = sent?;
    let (_, intact) = received?;
    if !intact {
        bail!("the data arrived corrupted");
    }
    Ok(transfer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_checks_across_the_wrap() {
        let p = pattern();
        assert!(matches(&p, 0, &p));
        let mut wrapped = p[p.len() - 10..].to_vec();
        wrapped.extend_from_slice(&p[..20]);
        assert!(matches(&p, (p.len() - 10) as u64, &wrapped));
        assert!(matches(&p, (3 * p.len() - 10) as u64, &wrapped));
        wrapped[15] ^= 1;
        assert!(!matches(&p, (p.len() - 10) as u64, &wrapped));
    }
}
