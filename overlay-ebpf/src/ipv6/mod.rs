//! The IPv6 half of dual stack (flannel's `EnableIPv6`): v6 pods over the
//! v6 underlay, wire-compatible with flannel's `flannel-v6.<VNI>` device.
//! The same checks and fast paths as v4, from the v6 maps (`*6`), with one
//! difference in how the outer header is built and taken off: by the
//! kernel's VXLAN driver of the agent's metadata device `overlay0`, which
//! computes the outer UDP checksum IPv6 requires (also per segment of a GSO
//! packet, which a TC program cannot); see encap.rs and decap.rs.
pub mod decap;
pub mod encap;
pub mod flows;
pub mod parse;
pub mod pod_guard;

use aya_ebpf::{
    bindings::{bpf_tunnel_key, BPF_F_TUNINFO_IPV6},
    helpers::bpf_skb_set_tunnel_key,
    programs::TcContext,
};
use overlay_common::{maps::config_flags, maps6::LocalConfig6};

use crate::maps::CONFIG6;

/// This node's v6 configuration, copied to the stack. `None` until the
/// agent has filled it in (or when IPv6 is off): v6 is then not ours.
#[inline(always)]
pub fn config6() -> Option<LocalConfig6> {
    let cfg = *CONFIG6.get(0)?;
    if cfg.flags & config_flags::READY == 0 {
        return None;
    }
    Some(cfg)
}

/// VXLAN addressed to `dst` is ours: the tunnel's local v6 address, or our
/// lease's PublicIPv6.
#[inline(always)]
pub fn is_local6(cfg: &LocalConfig6, dst: &[u8; 16]) -> bool {
    *dst == cfg.local_ip || *dst == cfg.public_ip
}

/// The address as the tunnel-key helpers carry it: the 16 bytes as they
/// are (network order), in four u32s.
#[inline(always)]
fn key_words(addr: &[u8; 16]) -> [u32; 4] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*addr) }
}

#[inline(always)]
fn key_bytes(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// The v6 tunnel metadata the skb carries (from overlay0's VXLAN socket on
/// receive, or from [`set_tunnel_key`] on send), if any.
#[inline(always)]
pub fn tunnel_key(ctx: &TcContext) -> Option<bpf_tunnel_key> {
    crate::tunnel::tunnel_key(ctx, BPF_F_TUNINFO_IPV6 as u64)
}

/// The remote v6 address of a tunnel key.
#[inline(always)]
pub fn remote(key: &bpf_tunnel_key) -> [u8; 16] {
    // SAFETY: remote_ipv6 is the member a v6 tunnel fills in.
    key_bytes(unsafe { key.__bindgen_anon_1.remote_ipv6 })
}

/// Gives the skb the tunnel metadata overlay0's VXLAN driver encapsulates
/// it with: our VNI, from our local v6 address to `peer`. TTL, TOS and flow
/// label 0 leave them to the driver as flannel-v6's own settings do (route
/// hop limit, inner ECN copied, label 0), and without BPF_F_ZERO_CSUM_TX the
/// driver computes the UDP checksum.
#[inline(always)]
pub fn set_tunnel_key(ctx: &TcContext, cfg: &LocalConfig6, peer: &[u8; 16]) -> Result<(), ()> {
    // SAFETY: an all-zero bpf_tunnel_key is a valid request.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = cfg.vni;
    key.__bindgen_anon_1.remote_ipv6 = key_words(peer);
    key.__bindgen_anon_3.local_ipv6 = key_words(&cfg.local_ip);
    // SAFETY: key lives on our stack for the duration of the call.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb as *mut _,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            BPF_F_TUNINFO_IPV6 as u64,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(())
    }
}
