//! Sending a finished frame out of the uplink towards a remote node.
//!
//! `bpf_redirect_neigh` routes every packet (a FIB lookup per packet, the
//! largest single cost of the send path in the benchmark's profile). We
//! cache what the FIB and the neighbour table say for each node and send
//! with a plain `bpf_redirect`. Once a second per node a packet still takes
//! `bpf_redirect_neigh` and refreshes the entry: that packet keeps the
//! kernel's neighbour entry in use, so its state machine re-probes a peer
//! that went silent or changed its MAC, and the cache follows within a
//! second. Anything unusual (no neighbour yet, a route out of another
//! interface, a gateway where DirectRouting expects the peer itself) is
//! left to `bpf_redirect_neigh`, which handles all of it.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibLookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
        BPF_FIB_LOOKUP_OUTPUT,
    },
    helpers::{bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use overlay_common::{
    maps::{LocalConfig, UnderlayHop},
    stats::Reason,
};

use crate::{maps::UNDERLAY, route::set_macs, verdict::Outcome};

/// How long a cached next hop is used before a packet refreshes it.
const REFRESH_NS: u64 = 1_000_000_000;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

/// How the frame's next hop is chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NextHopKind {
    /// The kernel routes the outer destination (VXLAN: the peer's PublicIP,
    /// possibly via a gateway).
    Routed,
    /// The peer's PublicIP itself is the next hop, on the uplink's segment
    /// (host-gw, DirectRouting).
    OnLink,
}

/// Sends the frame (IPv4 after an Ethernet header whose MACs are ours to
/// rewrite) to `node` out of the uplink.
#[inline(always)]
pub fn send(ctx: &TcContext, cfg: &LocalConfig, node: [u8; 4], kind: NextHopKind, reason: Reason) -> Outcome {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(hop) = cached(node) {
        if now.wrapping_sub(hop.refreshed_ns) < REFRESH_NS {
            if set_macs(ctx, &hop.dst_mac, &hop.src_mac).is_err() {
                return Outcome::drop(Reason::DropError);
            }
            // SAFETY: plain helper call.
            let ret = unsafe { bpf_redirect(cfg.uplink_ifindex, 0) };
            return Outcome::redirected(ret, reason);
        }
    }
    refresh(ctx, cfg, node, kind, now);
    via_neighbour_table(cfg, node, kind, reason)
}

#[inline(always)]
fn cached(node: [u8; 4]) -> Option<UnderlayHop> {
    // Copied out at once: an LRU slot may be reused by a later update.
    UNDERLAY.get_ptr(node).map(|p| unsafe { *p })
}

/// Asks the FIB (and through it the neighbour table) for the next hop to
/// `node` and caches the answer when a plain redirect out of the uplink
/// would send the frame exactly where `bpf_redirect_neigh` would.
#[inline(always)]
fn refresh(ctx: &TcContext, cfg: &LocalConfig, node: [u8; 4], kind: NextHopKind, now: u64) {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = cfg.uplink_ifindex;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(cfg.local_ip);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(node);
    // SAFETY: fib lives on our stack for the duration of the call.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<FibLookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    // The FIB writes the gateway, if any, over the destination.
    let gateway = unsafe { fib.__bindgen_anon_4.ipv4_dst };
    let usable = ret == BPF_FIB_LKUP_RET_SUCCESS
        && fib.ifindex == cfg.uplink_ifindex
        && (kind == NextHopKind::Routed || gateway == u32::from_ne_bytes(node));
    if usable {
        let hop = UnderlayHop { dst_mac: fib.dmac, src_mac: fib.smac, _pad: [0; 4], refreshed_ns: now };
        let _ = UNDERLAY.insert(node, hop, 0);
    } else {
        let _ = UNDERLAY.remove(node);
    }
}

#[inline(always)]
fn via_neighbour_table(cfg: &LocalConfig, node: [u8; 4], kind: NextHopKind, reason: Reason) -> Outcome {
    let ret = match kind {
        // SAFETY: no parameters: the kernel routes the outer destination.
        NextHopKind::Routed => unsafe { bpf_redirect_neigh(cfg.uplink_ifindex, core::ptr::null_mut(), 0, 0) },
        NextHopKind::OnLink => {
            let mut params = bpf_redir_neigh {
                nh_family: AF_INET as u32,
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: u32::from_ne_bytes(node) },
            };
            // SAFETY: params lives on our stack for the duration of the call.
            unsafe {
                bpf_redirect_neigh(
                    cfg.uplink_ifindex,
                    &mut params,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            }
        }
    };
    Outcome::redirected(ret, reason)
}
