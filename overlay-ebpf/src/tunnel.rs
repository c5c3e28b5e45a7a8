//! TC ingress on the agent's tunnel device: VXLAN that the kernel's own
//! VXLAN socket received and decapsulated. Our uplink program handles
//! v4 VXLAN itself; what reaches the socket over IPv4 is what it passed to
//! the kernel: fragments (reassembled by the kernel first), and datagrams
//! to another local address than the PublicIP. Over IPv6 the socket takes
//! every datagram (it checks the UDP checksum: ipv6/decap.rs). The socket
//! exists so the kernel can aggregate VXLAN on receive (GRO, which needs a
//! UDP tunnel socket on the port); it must never be a way around the
//! checks, so this program applies the same ones, from the tunnel metadata
//! the socket attached.
use aya_ebpf::{bindings::bpf_tunnel_key, helpers::bpf_skb_get_tunnel_key, programs::TcContext};
use overlay_common::stats::Reason;

use crate::{
    decap::{deliver, inner_frame, sender},
    ipv6,
    route::config,
    verdict::Outcome,
};

/// The tunnel metadata the skb carries, for an IPv4 tunnel (`flags` 0)
/// or an IPv6 one (BPF_F_TUNINFO_IPV6); None when it carries none of that
/// family.
#[inline(always)]
pub fn tunnel_key(ctx: &TcContext, flags: u64) -> Option<bpf_tunnel_key> {
    // SAFETY: an all-zero bpf_tunnel_key is a valid buffer for the helper.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: key lives on our stack for the duration of the call.
    let ret = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb as *mut _, &mut key, core::mem::size_of::<bpf_tunnel_key>() as u32, flags)
    };
    (ret == 0).then_some(key)
}

pub fn try_from_tunnel(ctx: &TcContext) -> Result<Outcome, Outcome> {
    let Some(key) = tunnel_key(ctx, 0) else {
        // Not IPv4 metadata: IPv6 metadata, or none at all, which means
        // the frame did not come from the VXLAN socket (nothing else feeds
        // this device), so nobody vouches for it.
        return match ipv6::tunnel_key(ctx) {
            Some(key6) => ipv6::decap::from_tunnel(ctx, &key6),
            None => Err(Outcome::drop(Reason::DropMalformed)),
        };
    };
    // Before the agent configured us nothing is trusted.
    let Some(cfg) = config() else {
        return Err(Outcome::drop(Reason::DropUnknownSender));
    };
    // The helper gives the remote address in host order.
    // SAFETY: remote_ipv4 is the member an IPv4 tunnel fills in.
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
    sender(remote)?;
    if key.tunnel_id != cfg.vni {
        return Err(Outcome::drop(Reason::DropBadVni));
    }
    let inner = inner_frame(ctx, &cfg, remote, 0)?;
    Ok(deliver(ctx, &cfg, &inner))
}
