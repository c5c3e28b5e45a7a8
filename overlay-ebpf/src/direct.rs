//! host-gw and DirectRouting: a remote subnet reached without encapsulation,
//! routed via the peer's PublicIP on the uplink's own segment.
use aya_ebpf::programs::TcContext;
use overlay_common::{
    maps::{LocalConfig, NextHop},
    stats::Reason,
};

use crate::{
    parse::Ipv4Hdr,
    route::{router_checks, Origin},
    underlay::{self, NextHopKind},
    verdict::Outcome,
};

pub fn forward(
    ctx: &TcContext,
    cfg: &LocalConfig,
    nh: &NextHop,
    ip: &Ipv4Hdr,
    origin: Origin,
) -> Result<Outcome, Outcome> {
    router_checks(ctx, cfg, ip, origin, 0)?;
    Ok(underlay::send(ctx, cfg, nh.public_ip, NextHopKind::OnLink, Reason::DirectRouted))
}
