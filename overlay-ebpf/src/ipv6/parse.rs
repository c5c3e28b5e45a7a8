//! Bounds-checked IPv6 header access (the v6 counterpart of parse.rs).
use aya_ebpf::programs::TcContext;
use overlay_common::{ETH_HLEN, ETH_P_IPV6};

use crate::parse::{load, EthHdr};

/// Extension headers that may stand between the IPv6 header and the
/// transport header (hop-by-hop, routing, fragment, destination options).
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_DEST_OPTS: u8 = 60;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Offset of the hop limit in the IPv6 header.
pub const HOP_LIMIT_OFF: usize = 7;

impl Ipv6Hdr {
    #[inline(always)]
    pub fn is_valid(&self) -> bool {
        self.vtc_flow[0] >> 4 == 6
    }
}

/// IPv6 fragment header (RFC 8200 4.5).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragHdr {
    pub next_hdr: u8,
    pub _reserved: u8,
    /// Offset (13 bits, 8-byte units), 2 reserved bits, M flag.
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

impl FragHdr {
    #[inline(always)]
    pub fn offset(&self) -> u16 {
        u16::from_be_bytes(self.offset_flags) >> 3
    }
}

/// The Ethernet header and, when the frame is IPv6, its IPv6 header.
#[inline(always)]
pub fn eth_ipv6(ctx: &TcContext) -> Option<(EthHdr, Ipv6Hdr)> {
    let eth: EthHdr = load(ctx, 0)?;
    if eth.proto() != ETH_P_IPV6 {
        return None;
    }
    let ip: Ipv6Hdr = load(ctx, ETH_HLEN)?;
    if !ip.is_valid() {
        return None;
    }
    Some((eth, ip))
}

/// Whether the frame's EtherType is IPv6 (cheap dispatch for the entry
/// points).
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    load::<EthHdr>(ctx, 0).is_some_and(|eth| eth.proto() == ETH_P_IPV6)
}

/// The address's two halves as numbers.
#[inline(always)]
fn halves(addr: &[u8; 16]) -> (u64, u64) {
    // SAFETY: same size, every bit pattern valid.
    let [hi, lo] = unsafe { core::mem::transmute::<[u8; 16], [[u8; 8]; 2]>(*addr) };
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// The top `bits` bits set (0..=64).
#[inline(always)]
fn mask64(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else if bits >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - bits)
    }
}

/// Whether `addr` lies in `net/prefix_len`.
#[inline(always)]
pub fn in_subnet6(addr: &[u8; 16], net: &[u8; 16], prefix_len: u8) -> bool {
    if prefix_len > 128 {
        return false;
    }
    let bits = prefix_len as u32;
    let (hi_mask, lo_mask) = (mask64(bits.min(64)), mask64(bits.saturating_sub(64)));
    let (a_hi, a_lo) = halves(addr);
    let (n_hi, n_lo) = halves(net);
    (a_hi & hi_mask) == (n_hi & hi_mask) && (a_lo & lo_mask) == (n_lo & lo_mask)
}

/// An address a router may forward from: not unspecified, not link-local
/// (fe80::/10, what NDP and router solicitations come from), not multicast.
#[inline(always)]
pub fn is_routable_source(addr: &[u8; 16]) -> bool {
    let link_local = addr[0] == 0xfe && addr[1] & 0xc0 == 0x80;
    let multicast = addr[0] == 0xff;
    !(link_local || multicast || *addr == [0; 16])
}
