//! Capturing on an interface with tcpdump, and reading what it wrote: the
//! VXLAN frames (outer and inner headers) or the outer IPv4 or IPv6 header
//! of every frame of an Ethernet pcap.
use std::{
    io::Read,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use crate::netns::{ChildHandle, Netns, Testbed};

/// tcpdump on an interface: by default host `host`'s port of the underlay
/// bridge (the bridge device itself does not see unicast it forwards between
/// ports), or any interface of a namespace ([`Capture::on`]). A capture on a
/// host's eth0 sees what arrives after any XDP program and before TC.
pub struct Capture {
    child: ChildHandle,
    file: PathBuf,
    // Kept open: tcpdump must not meet a closed stderr while it runs.
    _stderr: std::process::ChildStderr,
}

impl Capture {
    /// On host `host`'s port of the underlay bridge (what goes to and
    /// comes from the host's eth0 on the wire).
    pub fn start(tb: &Testbed, host: usize, filter: &str) -> Capture {
        Self::on(tb.underlay(), &tb.underlay_port(host), tb.dir(), filter)
    }

    /// On interface `iface` of namespace `ns`, writing into folder `dir`
    /// (the testbed's own).
    pub fn on(ns: &Netns, iface: &str, dir: &Path, filter: &str) -> Capture {
        let file = dir.join(format!("capture-{}.pcap", crate::random_hex(3)));
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", iface, "--immediate-mode", "-U", "-n", "-s", "256", "-w"])
            .arg(&file)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = ns.spawn(cmd).unwrap();
        // tcpdump says "listening on" once the capture is armed.
        let mut stderr = child.take_stderr().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        let start = Instant::now();
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            assert!(start.elapsed() < Duration::from_secs(10), "tcpdump did not start");
            if stderr.read(&mut byte).unwrap_or(0) == 0 {
                panic!("tcpdump exited: {}", String::from_utf8_lossy(&seen));
            }
            seen.push(byte[0]);
        }
        Capture { child, file, _stderr: stderr }
    }

    pub fn finish(self) -> Vec<VxlanFrame> {
        vxlan_frames(&self.finish_raw())
    }

    /// The VXLAN-over-IPv6 frames captured.
    pub fn finish6(self) -> Vec<Vxlan6Frame> {
        vxlan6_frames(&self.finish_raw())
    }

    /// Every IPv4 frame captured, VXLAN or not.
    pub fn finish_ip(self) -> Vec<IpFrame> {
        ip_frames(&self.finish_raw())
    }

    /// Every IPv6 frame captured, VXLAN or not.
    pub fn finish_ip6(self) -> Vec<Ip6Frame> {
        ip6_frames(&self.finish_raw())
    }

    /// Stops tcpdump and returns the pcap file's bytes.
    pub fn finish_raw(self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.signal(libc::SIGINT);
        self.child.wait_timeout(Duration::from_secs(5));
        std::fs::read(&self.file).unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct VxlanFrame {
    /// Length of the whole frame as captured (Ethernet included).
    pub len: usize,
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub outer_ihl: u8,
    pub outer_tos: u8,
    /// The outer IPv4 total length.
    pub outer_len: u16,
    pub outer_id: u16,
    pub outer_df: bool,
    /// MF flag or a fragment offset: the outer packet is a fragment.
    pub outer_fragment: bool,
    pub outer_ttl: u8,
    /// The outer IPv4 header checksum verifies.
    pub outer_csum_ok: bool,
    pub sport: u16,
    pub dport: u16,
    pub udp_len: u16,
    pub udp_csum: u16,
    pub vxlan_flags: u8,
    /// VXLAN's reserved bytes: the three after the flags and the last one.
    pub vxlan_reserved: [u8; 4],
    pub vni: u32,
    pub inner_dst_mac: [u8; 6],
    pub inner_src_mac: [u8; 6],
    pub inner_ethertype: u16,
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
    pub inner_tos: u8,
    pub inner_ttl: u8,
    pub inner_ip_len: usize,
}

/// The frames of a pcap file (classic format, either byte order), each with
/// the length it had on the wire; stops at a truncated record.
fn records(pcap: &[u8]) -> Vec<(&[u8], usize)> {
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let le = pcap[0..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |i: usize| {
        let a = [pcap[i], pcap[i + 1], pcap[i + 2], pcap[i + 3]];
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32_at(off + 8) as usize;
        let orig = u32_at(off + 12) as usize;
        let start = off + 16;
        if start + incl > pcap.len() {
            break;
        }
        out.push((&pcap[start..start + incl], orig));
        off = start + incl;
    }
    out
}

/// Every UDP/IPv4 frame of an Ethernet pcap, decoded as VXLAN.
pub fn vxlan_frames(pcap: &[u8]) -> Vec<VxlanFrame> {
    records(pcap).into_iter().filter_map(|(f, orig)| decode(f, orig)).collect()
}

/// The outer IPv4 header of a captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpFrame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// UDP destination port, for UDP.
    pub udp_dport: Option<u16>,
}

impl IpFrame {
    pub fn is_vxlan(&self) -> bool {
        self.proto == 17 && self.udp_dport == Some(8472)
    }
}

/// The IPv4 frames of an Ethernet pcap.
pub fn ip_frames(pcap: &[u8]) -> Vec<IpFrame> {
    let mut out = Vec::new();
    for (f, _) in records(pcap) {
        if f.len() >= 34 && f[12..14] == [0x08, 0x00] {
            let ip4 = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
            let l4 = 14 + (f[14] & 0x0f) as usize * 4;
            let proto = f[23];
            let udp_dport = (proto == 17 && f.len() >= l4 + 4).then(|| u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]));
            out.push(IpFrame { src: ip4(26), dst: ip4(30), proto, udp_dport });
        }
    }
    out
}

/// The outer IPv6 header of a captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ip6Frame {
    pub src: std::net::Ipv6Addr,
    pub dst: std::net::Ipv6Addr,
    pub next_header: u8,
    /// UDP destination port, for UDP right after the fixed header.
    pub udp_dport: Option<u16>,
}

impl Ip6Frame {
    pub fn is_vxlan(&self) -> bool {
        self.next_header == 17 && self.udp_dport == Some(8472)
    }
}

/// The IPv6 frames of an Ethernet pcap.
pub fn ip6_frames(pcap: &[u8]) -> Vec<Ip6Frame> {
    let mut out = Vec::new();
    for (f, _) in records(pcap) {
        if f.len() >= 54 && f[12..14] == [0x86, 0xdd] {
            let addr = |i: usize| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&f[i..i + 16]).expect("16 bytes"));
            let next_header = f[20];
            let udp_dport = (next_header == 17 && f.len() >= 58).then(|| u16::from_be_bytes([f[56], f[57]]));
            out.push(Ip6Frame { src: addr(22), dst: addr(38), next_header, udp_dport });
        }
    }
    out
}

fn decode(f: &[u8], orig_len: usize) -> Option<VxlanFrame> {
    let be16 = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    if f.len() < 14 + 20 || be16(12) != 0x0800 {
        return None;
    }
    let ihl = f[14] & 0x0f;
    let l4 = 14 + ihl as usize * 4;
    if f[14 + 9] != 17 || f.len() < l4 + 8 + 8 + 14 + 20 {
        return None;
    }
    let ip4 = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
    let vx = l4 + 8;
    let inner = vx + 8;
    let inner_ip = inner + 14;
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&f[inner..inner + 6]);
    src.copy_from_slice(&f[inner + 6..inner + 12]);
    Some(VxlanFrame {
        len: orig_len,
        outer_src: ip4(14 + 12),
        outer_dst: ip4(14 + 16),
        outer_ihl: ihl,
        outer_tos: f[14 + 1],
        outer_len: be16(14 + 2),
        outer_id: be16(14 + 4),
        outer_df: be16(14 + 6) & 0x4000 != 0,
        outer_fragment: be16(14 + 6) & 0x3fff != 0,
        outer_ttl: f[14 + 8],
        outer_csum_ok: crate::packet::ipv4_header_ok(&f[14..]),
        sport: be16(l4),
        dport: be16(l4 + 2),
        udp_len: be16(l4 + 4),
        udp_csum: be16(l4 + 6),
        vxlan_flags: f[vx],
        vxlan_reserved: [f[vx + 1], f[vx + 2], f[vx + 3], f[vx + 7]],
        vni: u32::from_be_bytes([0, f[vx + 4], f[vx + 5], f[vx + 6]]),
        inner_dst_mac: dst,
        inner_src_mac: src,
        inner_ethertype: be16(inner + 12),
        inner_src: ip4(inner_ip + 12),
        inner_dst: ip4(inner_ip + 16),
        inner_tos: f[inner_ip + 1],
        inner_ttl: f[inner_ip + 8],
        inner_ip_len: be16(inner_ip + 2) as usize,
    })
}

/// A VXLAN frame over IPv6 (flannel-v6's wire format), as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan6Frame {
    /// Length of the whole frame on the wire (Ethernet included).
    pub len: usize,
    pub outer_src: std::net::Ipv6Addr,
    pub outer_dst: std::net::Ipv6Addr,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub payload_len: u16,
    pub sport: u16,
    pub dport: u16,
    pub udp_len: u16,
    pub udp_csum: u16,
    pub vxlan_flags: u8,
    pub vxlan_reserved: [u8; 4],
    pub vni: u32,
    pub inner_dst_mac: [u8; 6],
    pub inner_src_mac: [u8; 6],
    pub inner_ethertype: u16,
}

/// Every UDP/IPv6 frame (no extension headers) of an Ethernet pcap whose
/// headers were captured whole, decoded as VXLAN.
pub fn vxlan6_frames(pcap: &[u8]) -> Vec<Vxlan6Frame> {
    let mut out = Vec::new();
    for (f, len) in records(pcap) {
        if f.len() < 14 + 40 + 8 + 8 + 14 || f[12..14] != [0x86, 0xdd] || f[20] != 17 {
            continue;
        }
        let be16 = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
        let addr = |i: usize| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&f[i..i + 16]).expect("16 bytes"));
        let word = u32::from_be_bytes([f[14], f[15], f[16], f[17]]);
        let mac = |i: usize| <[u8; 6]>::try_from(&f[i..i + 6]).expect("6 bytes");
        out.push(Vxlan6Frame {
            len,
            outer_src: addr(22),
            outer_dst: addr(38),
            traffic_class: (word >> 20) as u8,
            flow_label: word & 0xfffff,
            hop_limit: f[21],
            payload_len: be16(18),
            sport: be16(54),
            dport: be16(56),
            udp_len: be16(58),
            udp_csum: be16(60),
            vxlan_flags: f[62],
            vxlan_reserved: [f[63], f[64], f[65], f[69]],
            vni: u32::from_be_bytes([0, f[66], f[67], f[68]]),
            inner_dst_mac: mac(70),
            inner_src_mac: mac(76),
            inner_ethertype: be16(82),
        });
    }
    out
}
