//! Builds and inspects the frames the BPF tests feed to the programs.
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    pub frag_offset: u16,
    pub tos: u8,
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4 {
        Ipv4 { src, dst, proto, ttl: 64, id: 0x1234, df: true, mf: false, frag_offset: 0, tos: 0, options: vec![] }
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let hl = 20 + self.options.len();
        let total = (hl + payload.len()) as u16;
        let mut h = vec![0u8; hl];
        h[0] = 0x40 | (hl / 4) as u8;
        h[1] = self.tos;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        let mut frag = self.frag_offset & 0x1fff;
        if self.df {
            frag |= 0x4000;
        }
        if self.mf {
            frag |= 0x2000;
        }
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        h[20..].copy_from_slice(&self.options);
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18; // PSH|ACK
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

pub fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8u8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// VXLAN header (I flag, VNI) followed by the inner frame.
pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(inner);
    v
}

/// RFC 1071 checksum; 0 over data that includes a correct checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { (chunk[0] as u16) << 8 };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn ipv4_header_ok(ip: &[u8]) -> bool {
    let hl = ((ip[0] & 0x0f) as usize) * 4;
    ip.len() >= hl && checksum(&ip[..hl]) == 0
}

/// An IPv6 header (RFC 8200), no extension headers unless the payload
/// starts with them (`next_hdr` names the first).
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, next_hdr: u8) -> Ipv6 {
        Ipv6 { src, dst, next_hdr, hop_limit: 64, traffic_class: 0, flow_label: 0 }
    }

    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let word = (6u32 << 28) | ((self.traffic_class as u32) << 20) | (self.flow_label & 0xfffff);
        let mut h = Vec::with_capacity(40 + payload.len());
        h.extend_from_slice(&word.to_be_bytes());
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.push(self.next_hdr);
        h.push(self.hop_limit);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(payload);
        h
    }
}

/// An ICMPv6 echo request (checksum left 0: the programs never read it).
pub fn icmpv6_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![128u8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// An IPv6 fragment header (next header, offset in 8-byte units, M flag)
/// followed by `payload`.
pub fn ipv6_fragment(next_hdr: u8, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![next_hdr, 0];
    f.extend_from_slice(&((offset << 3) | more as u16).to_be_bytes());
    f.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The UDP checksum over IPv6 (RFC 8200 8.1) of the UDP datagram `udp`
/// (its checksum field zero), as a receiver computes it; 0 comes out as
/// 0xffff, since 0 means "none", which IPv6 forbids.
pub fn udp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + udp.len());
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 17]);
    data.extend_from_slice(udp);
    match checksum(&data) {
        0 => 0xffff,
        c => c,
    }
}
