//! Bounds-checked header access. Headers in the skb's linear part are read
//! directly (checked against `data_end`, which the verifier enforces);
//! anything beyond it, in a non-linear skb, through `bpf_skb_load_bytes`,
//! which fails cleanly past the end of the packet. So no byte sequence can
//! make a program read out of bounds, and no skb needs a `pull_data`.
use aya_ebpf::programs::TcContext;
use overlay_common::ETH_HLEN;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

impl EthHdr {
    #[inline(always)]
    pub fn proto(&self) -> u16 {
        u16::from_be_bytes(self.proto)
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub csum: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    /// A plausible IPv4 header: version 4 and a header length of at least
    /// 20 bytes.
    #[inline(always)]
    pub fn is_valid(&self) -> bool {
        self.version_ihl >> 4 == 4 && self.header_len() >= 20
    }

    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }

    /// Any fragment but the first, or a first fragment with more to come.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        let frag = u16::from_be_bytes(self.frag_off);
        frag & 0x3fff != 0
    }

    /// Offset of this fragment in 8-byte units: 0 for unfragmented packets
    /// and first fragments, the ones that carry the L4 header.
    #[inline(always)]
    pub fn fragment_offset(&self) -> u16 {
        u16::from_be_bytes(self.frag_off) & 0x1fff
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub csum: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VxlanHdr {
    pub flags: u8,
    pub _reserved1: [u8; 3],
    /// VNI in the first three bytes, the fourth reserved.
    pub vni: [u8; 4],
}

impl VxlanHdr {
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        u32::from_be_bytes(self.vni) >> 8
    }
}

#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: the whole T lies before data_end (checked right above,
        // and again by the verifier); headers are read unaligned.
        return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
    }
    // A helper call per header is what direct access saves; past the
    // linear part it is the only way.
    ctx.load::<T>(offset).ok()
}

/// The Ethernet header and, when the frame is IPv4, its IPv4 header.
#[inline(always)]
pub fn eth_ipv4(ctx: &TcContext) -> Option<(EthHdr, Ipv4Hdr)> {
    let eth: EthHdr = load(ctx, 0)?;
    if eth.proto() != overlay_common::ETH_P_IP {
        return None;
    }
    let ip: Ipv4Hdr = load(ctx, ETH_HLEN)?;
    if !ip.is_valid() {
        return None;
    }
    Some((eth, ip))
}

/// Whether `addr` lies in `net/prefix_len` (both network order bytes).
#[inline(always)]
pub fn in_subnet(addr: [u8; 4], net: [u8; 4], prefix_len: u8) -> bool {
    if prefix_len == 0 {
        return true;
    }
    if prefix_len > 32 {
        return false;
    }
    let mask = u32::MAX << (32 - prefix_len as u32);
    (u32::from_be_bytes(addr) & mask) == (u32::from_be_bytes(net) & mask)
}
