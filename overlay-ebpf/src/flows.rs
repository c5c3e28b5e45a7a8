//! Flows the kernel handled: their replies must go through the kernel too.
//!
//! The fast path skips the kernel's forwarding, and with it conntrack. That
//! is fine for plain pod-to-pod traffic, but a flow the kernel translated
//! (a Service's DNAT on the client's node, a published port's DNAT on the
//! server's node, masquerade) needs its replies to meet the same conntrack
//! entry, or the reverse translation never happens. We cannot see NAT from
//! TC, but we see where the kernel hands packets on: at the tunnel device
//! (routed to a remote pod) and at a pod veth's egress (delivered to a
//! pod). Those flows are recorded, post-NAT, and a packet that would take
//! the fast path in the other direction of a recorded flow is passed to
//! the kernel instead. Plain pod-to-pod traffic never passes there, so it
//! keeps the fast path; the exception, a pod the decapsulation did not
//! know yet (the agent learns pods within a second), is remembered where
//! it happens so that its flows are not taken for translated ones.
use aya_ebpf::{btf_maps::LruHashMap, helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use overlay_common::{
    maps::{FlowKey, FlowSeen},
    stats::Reason,
    ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    maps::{KERNEL_FLOWS, UNLEARNT_POD_FLOWS},
    parse::{eth_ipv4, in_subnet, load, Ipv4Hdr},
    route::config,
    verdict::Outcome,
};

/// A recorded flow is written again at most this often (a lookup is much
/// cheaper than an update, which takes the LRU's locks).
const REFRESH_NS: u64 = 1_000_000_000;

/// The flow of the IPv4 packet whose header (`ip`) starts at `l3_off`.
/// TCP and UDP have ports (only in the first fragment: later fragments
/// count as the portless flow between the two addresses).
#[inline(always)]
pub fn key(ctx: &TcContext, l3_off: usize, ip: &Ipv4Hdr) -> FlowKey {
    let mut key = FlowKey { src: ip.src, dst: ip.dst, proto: ip.proto, ..FlowKey::default() };
    if (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP) && ip.fragment_offset() == 0 && ip.header_len() <= 60 {
        if let Some(ports) = load::<[u8; 4]>(ctx, l3_off + ip.header_len()) {
            key.src_port = [ports[0], ports[1]];
            key.dst_port = [ports[2], ports[3]];
        }
    }
    key
}

/// Remembers that the kernel handled this flow.
#[inline(always)]
pub fn record(key: &FlowKey) {
    remember(&KERNEL_FLOWS, key);
}

/// Remembers that decapsulation handed this flow to the kernel only because
/// the destination pod is not in the endpoint map yet.
#[inline(always)]
pub fn note_unlearnt_pod(key: &FlowKey) {
    remember(&UNLEARNT_POD_FLOWS, key);
}

#[inline(always)]
pub fn remember<K, const N: usize>(map: &LruHashMap<K, FlowSeen, N>, key: &K) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(seen) = map.get_ptr(key) {
        // SAFETY: a valid map value pointer; a racing update only makes us
        // refresh once more.
        if now.wrapping_sub(unsafe { *seen }) < REFRESH_NS {
            return;
        }
    }
    let _ = map.insert(key, now, 0);
}

/// Whether `key` (a packet about to take the fast path) is the reply of a
/// flow the kernel handled.
#[inline(always)]
pub fn is_reply_of_kernel_flow(key: &FlowKey) -> bool {
    KERNEL_FLOWS.get_ptr(key.reversed()).is_some()
}

/// TC egress on a pod veth: the kernel delivers to a local pod. Flows from
/// remote pods are recorded (their replies would take the fast path);
/// those from anywhere else already return through the kernel.
pub fn try_to_pod(ctx: &TcContext) -> Result<Outcome, Outcome> {
    let delivered = Outcome::pass(Reason::KernelDelivered);
    if crate::ipv6::parse::is_ipv6(ctx) {
        crate::ipv6::flows::on_delivery(ctx);
        return Ok(delivered);
    }
    let Some(cfg) = config() else {
        return Ok(Outcome::pass(Reason::PassedToKernel));
    };
    let Some((_, ip)) = eth_ipv4(ctx) else {
        return Ok(delivered);
    };
    if in_subnet(ip.src, cfg.cluster_net, cfg.cluster_prefix_len)
        && !in_subnet(ip.src, cfg.local_subnet, cfg.local_prefix_len)
    {
        let key = key(ctx, ETH_HLEN, &ip);
        if UNLEARNT_POD_FLOWS.get_ptr(key).is_none() {
            record(&key);
        }
    }
    Ok(delivered)
}
