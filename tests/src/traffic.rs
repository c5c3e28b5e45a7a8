//! Traffic between pods and namespaces: pings (in the background with
//! `ping -D`, or until answered), a TCP transfer whose every byte is checked,
//! UDP echoes.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::netns::{ChildHandle, Netns, Pod};

/// Seconds since the epoch, as `ping -D` prints them.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A `ping -D` running in the background (tracked by the testbed), its
/// output in a file.
pub struct PingRun {
    child: ChildHandle,
    out: PathBuf,
    what: String,
}

/// What a finished ping reported.
#[derive(Clone, Debug, PartialEq)]
pub struct PingStats {
    pub transmitted: u64,
    pub received: u64,
    /// Wall-clock time (seconds since the epoch) of every reply (`ping -D`).
    pub replies: Vec<f64>,
    /// icmp_seq of every reply, in order.
    pub seqs: Vec<u32>,
    /// min / avg / max round trip in milliseconds (None when nothing came
    /// back).
    pub rtt_ms: Option<(f64, f64, f64)>,
    pub text: String,
}

impl PingStats {
    pub fn lost(&self) -> u64 {
        self.transmitted.saturating_sub(self.received)
    }

    pub fn first_reply(&self) -> Option<f64> {
        self.replies.first().copied()
    }
}

impl PingRun {
    /// `count` echo requests every `interval` seconds from `from` to `to`,
    /// each waiting up to 1 s for its answer.
    pub fn start(dir: &Path, from: &Netns, to: Ipv4Addr, interval: f64, count: u32) -> PingRun {
        let out = dir.join(format!("ping-{}.txt", crate::random_hex(4)));
        let file = std::fs::File::create(&out).unwrap();
        let mut cmd = from.command("ping");
        cmd.args(["-D", "-n", "-i", &format!("{interval}"), "-c", &count.to_string(), "-W", "1", &to.to_string()])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = from.spawn(cmd).unwrap();
        PingRun { child, out, what: format!("ping from {} to {to}", from.name()) }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    /// Waits for ping to end (at most `timeout`) and parses its output.
    pub fn wait(self, timeout: Duration) -> PingStats {
        let status = self.child.wait_timeout(timeout);
        if status.is_none() {
            self.child.kill();
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        assert!(status.is_some(), "{} still running after {timeout:?}:\n{}", self.what, tail_lines(&text, 5));
        parse_ping(&text).unwrap_or_else(|| panic!("{}: no summary in its output:\n{text}", self.what))
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Parses ping's output: reply lines (with `-D`'s timestamps), the summary
/// "5 packets transmitted, 5 received, 0% packet loss, time 203ms" and
/// "rtt min/avg/max/mdev = 0.046/0.065/0.093/0.016 ms". None without a
/// summary.
pub fn parse_ping(text: &str) -> Option<PingStats> {
    let mut replies = Vec::new();
    let mut seqs = Vec::new();
    let mut summary = None;
    let mut rtt_ms = None;
    for line in text.lines() {
        if line.contains(" bytes from ") && line.contains("icmp_seq=") {
            if let Some(ts) =
                line.strip_prefix('[').and_then(|l| l.split(']').next()).and_then(|t| t.parse::<f64>().ok())
            {
                replies.push(ts);
            }
            let seq: Option<u32> =
                line.split("icmp_seq=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok());
            seqs.extend(seq);
        }
        if let Some((tx, rest)) = line.split_once(" packets transmitted, ") {
            let tx: u64 = tx.trim().parse().ok()?;
            let rx: u64 = rest.split_whitespace().next()?.parse().ok()?;
            summary = Some((tx, rx));
        }
        if line.starts_with("rtt ") || line.starts_with("round-trip") {
            rtt_ms = line.split('=').nth(1).and_then(|r| r.split_whitespace().next()).and_then(|values| {
                let v: Vec<f64> = values.split('/').filter_map(|x| x.parse().ok()).collect();
                (v.len() >= 3).then(|| (v[0], v[1], v[2]))
            });
        }
    }
    let (transmitted, received) = summary?;
    Some(PingStats { transmitted, received, replies, seqs, rtt_ms, text: text.to_string() })
}

/// Pings until answered (up to 10 s): leases take a moment to propagate.
pub fn wait_ping(from: &Netns, to: Ipv4Addr) {
    let start = Instant::now();
    loop {
        if from.ping(to).is_ok() {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let out = from.exec(&["ping", "-c", "1", "-W", "1", &to.to_string()]).unwrap();
            panic!("{} cannot ping {to}: {}", from.name(), String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// Pings `to` (either family) until answered, up to 15 s.
pub fn wait_ping_any(from: &Netns, to: IpAddr) {
    crate::poll_until(Duration::from_secs(15), &format!("{} pings {to}", from.name()), || {
        from.run(&["ping", "-c", "1", "-W", "1", &to.to_string()])
    })
    .unwrap();
}

/// One IPv6 ping from `from` to `to` (1 s to answer).
pub fn ping6(from: &Netns, to: Ipv6Addr) -> anyhow::Result<String> {
    from.run(&["ping", "-6", "-c", "1", "-W", "1", &to.to_string()])
}

/// Pings `to` over IPv6 until answered (up to 15 s).
pub fn wait_ping6(from: &Netns, to: Ipv6Addr) {
    crate::poll_until(Duration::from_secs(15), &format!("{} pings {to}", from.name()), || ping6(from, to)).unwrap();
}

/// A byte pattern with period 2^20, so it can be sent in 1 MiB chunks.
fn pattern(i: usize) -> u8 {
    (((i & 0xfffff) as u64).wrapping_mul(2654435761) >> 13) as u8
}

/// Sends `bytes` over TCP from `from` to `to` and checks every byte arrived
/// in order (the receiver verifies the pattern and reports the count back).
pub fn tcp_roundtrip(from: &Pod, to: &Pod, bytes: usize) {
    tcp_roundtrip_to(from, to, IpAddr::V4(to.ip()), bytes)
}

/// [`tcp_roundtrip`] to any address of `to` (an IPv6 one, say).
pub fn tcp_roundtrip_to(from: &Netns, to: &Netns, to_ip: IpAddr, bytes: usize) {
    let listener = to.in_ns(|| TcpListener::bind(SocketAddr::new(to_ip, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        let mut first_bad = None;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            if first_bad.is_none() {
                if let Some(k) = (0..n).find(|k| buf[*k] != pattern(total + k)) {
                    first_bad = Some(total + k);
                }
            }
            total += n;
        }
        s.write_all(&(total as u64).to_be_bytes()).unwrap();
        (total, first_bad)
    });
    let mut c = from.in_ns(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(pattern).collect();
    let mut sent = 0;
    while sent < bytes {
        // The pattern repeats every 2^20 bytes, so chunks line up.
        let n = (bytes - sent).min(chunk.len());
        c.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    c.read_exact(&mut count).unwrap();
    let (total, first_bad) = server.join().unwrap();
    assert_eq!(total, bytes, "bytes received");
    assert_eq!(u64::from_be_bytes(count) as usize, bytes);
    assert_eq!(first_bad, None, "payload corrupted");
}

const UDP_ECHO_END: &[u8] = b"\0end of udp_echo";

/// `n` UDP datagrams from `from` to `to`, each echoed back. The echo server
/// ends at its 5 s read timeout, so this takes at least 5 s.
pub fn udp_echo(from: &Pod, to: &Pod, n: usize) {
    udp_echo_with(from, to, n, false)
}

/// [`udp_echo`] that tells the echo server to stop when done, so it does
/// not wait for its 5 s read timeout.
pub fn udp_echo_quick(from: &Pod, to: &Pod, n: usize) {
    udp_echo_with(from, to, n, true)
}

fn udp_echo_with(from: &Pod, to: &Pod, n: usize, quick: bool) {
    let server = to.in_ns(|| UdpSocket::bind(SocketAddrV4::new(to.ip(), 0))).unwrap();
    let addr = server.local_addr().unwrap();
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut echoed = 0;
        while let Ok((len, peer)) = server.recv_from(&mut buf) {
            if &buf[..len] == UDP_ECHO_END {
                break;
            }
            server.send_to(&buf[..len], peer).unwrap();
            echoed += 1;
        }
        echoed
    });
    let client = from.in_ns(|| UdpSocket::bind(SocketAddrV4::new(from.ip(), 0))).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    for i in 0..n {
        let msg = format!("datagram {i} {}", "x".repeat(i * 17 % 1200));
        let mut ok = false;
        for _ in 0..3 {
            client.send_to(msg.as_bytes(), addr).unwrap();
            let mut buf = [0u8; 2048];
            if let Ok((len, _)) = client.recv_from(&mut buf) {
                if &buf[..len] == msg.as_bytes() {
                    ok = true;
                    break;
                }
            }
        }
        assert!(ok, "datagram {i} was not echoed");
    }
    // Ends the echo server now rather than at its 5 s read timeout (which
    // still ends it if this datagram is lost).
    if quick {
        let _ = client.send_to(UDP_ECHO_END, addr);
    }
    drop(client);
    assert!(echo.join().unwrap() >= n);
}

/// Sends `packet`, a whole IPv4 packet whose header we wrote (any source,
/// fragment fields as given), from a raw socket in `ns` (IP_HDRINCL, as a
/// process with CAP_NET_RAW can). The kernel fills in the total length and
/// the header checksum, and the ID only when it is 0.
pub fn send_raw_ipv4(ns: &Netns, packet: &[u8]) -> std::io::Result<()> {
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    ns.in_ns(|| {
        // SAFETY: plain socket calls on a descriptor we own and close; the
        // address and buffer outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
                sin_zero: [0; 8],
            };
            let n = libc::sendto(
                fd,
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                0,
                &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            match n {
                n if n == packet.len() as isize => Ok(()),
                n if n < 0 => Err(err),
                n => Err(std::io::Error::other(format!("sent {n} of {} bytes", packet.len()))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries_parse() {
        let out = "PING 10.42.1.2 (10.42.1.2) 56(84) bytes of data.\n\n--- 10.42.1.2 ping statistics ---\n\
                   5 packets transmitted, 5 received, 0% packet loss, time 203ms\n\
                   rtt min/avg/max/mdev = 0.046/0.065/0.093/0.016 ms\n";
        let p = parse_ping(out).unwrap();
        assert_eq!((p.transmitted, p.received, p.rtt_ms), (5, 5, Some((0.046, 0.065, 0.093))));
        let lost = "--- x ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n";
        let p = parse_ping(lost).unwrap();
        assert_eq!((p.transmitted, p.received, p.rtt_ms), (3, 0, None));
        let errors = "3 packets transmitted, 1 received, +2 errors, 66.6667% packet loss, time 2ms\n";
        assert_eq!(parse_ping(errors).map(|p| (p.transmitted, p.received)), Some((3, 1)));
        assert_eq!(parse_ping("nothing"), None);
    }

    #[test]
    fn ping_d_replies_parse() {
        let out = "[1764000000.123456] 64 bytes from 10.42.1.2: icmp_seq=1 ttl=63 time=0.05 ms\n\
                   [1764000000.223456] 64 bytes from 10.42.1.2: icmp_seq=3 ttl=63 time=0.05 ms\n\
                   3 packets transmitted, 2 received, 33.3333% packet loss, time 200ms\n";
        let p = parse_ping(out).unwrap();
        assert_eq!(p.replies, [1764000000.123456, 1764000000.223456]);
        assert_eq!(p.seqs, [1, 3]);
        assert_eq!(p.lost(), 1);
        assert_eq!(p.first_reply(), Some(1764000000.123456));
    }
}
