//! Reads the VXLAN frames of a pcap file written by tcpdump.
use std::net::Ipv4Addr;

#[derive(Clone, Debug)]
pub struct VxlanFrame {
    /// Length of the whole frame as captured (Ethernet included).
    pub len: usize,
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub outer_ihl: u8,
    pub outer_df: bool,
    pub sport: u16,
    pub dport: u16,
    pub udp_csum: u16,
    pub vxlan_flags: u8,
    pub vni: u32,
    pub inner_dst_mac: [u8; 6],
    pub inner_src_mac: [u8; 6],
    pub inner_ethertype: u16,
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
    pub inner_ttl: u8,
    pub inner_ip_len: usize,
}

/// Every UDP/IPv4 frame of an Ethernet pcap, decoded as VXLAN.
pub fn vxlan_frames(pcap: &[u8]) -> Vec<VxlanFrame> {
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let le = pcap[0..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8], i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32_at(pcap, off + 8) as usize;
        let orig = u32_at(pcap, off + 12) as usize;
        let start = off + 16;
        if start + incl > pcap.len() {
            break;
        }
        if let Some(f) = decode(&pcap[start..start + incl], orig) {
            out.push(f);
        }
        off = start + incl;
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
        outer_df: be16(14 + 6) & 0x4000 != 0,
        sport: be16(l4),
        dport: be16(l4 + 2),
        udp_csum: be16(l4 + 6),
        vxlan_flags: f[vx],
        vni: u32::from_be_bytes([0, f[vx + 4], f[vx + 5], f[vx + 6]]),
        inner_dst_mac: dst,
        inner_src_mac: src,
        inner_ethertype: be16(inner + 12),
        inner_src: ip4(inner_ip + 12),
        inner_dst: ip4(inner_ip + 16),
        inner_ttl: f[inner_ip + 8],
        inner_ip_len: be16(inner_ip + 2) as usize,
    })
}
