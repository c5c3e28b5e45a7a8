//! host-gw and DirectRouting: a remote subnet reached without encapsulation,
//! routed via the peer's PublicIP on the uplink's own segment.
use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use overlay_common::{
    maps::{LocalConfig, NextHop},
    stats::Reason,
};

use crate::{
    encap::{router_checks, Origin},
    parse::Ipv4Hdr,
    verdict::Outcome,
};

const AF_INET: u32 = 2;

pub fn forward(
    ctx: &TcContext,
    cfg: &LocalConfig,
    nh: &NextHop,
    ip: &Ipv4Hdr,
    origin: Origin,
) -> Result<Outcome, Outcome> {
    router_checks(ctx, cfg, ip, origin, 0)?;
    let mut params = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: u32::from_ne_bytes(nh.public_ip),
        },
    };
    // SAFETY: params lives on our stack for the duration of the call.
    let ret = unsafe {
        bpf_redirect_neigh(
            cfg.uplink_ifindex,
            &mut params,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    Ok(Outcome::redirected(ret, Reason::DirectRouted))
}
