//! `overlay-agent inspect`: the node's data path as the kernel holds it,
//! read from the pins alone (no etcd, works while the agent is down).
use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use anyhow::Result;
use aya::programs::links::PinnedLink;
use ipnet::Ipv4Net;
use serde_json::{json, Value};

use overlay_common::{map_names, PIN_VERSION};

use crate::{
    datapath::{loader::pin_dir, DatapathMaps},
    etcd::registry::format_mac,
    node::mode_name,
};

pub struct Attachment {
    pub pin: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

/// Everything `inspect` shows, gathered once.
pub struct Snapshot {
    pub pin_dir: String,
    pub json: Value,
    pub text: String,
}

/// Why there is nothing to show.
pub enum NotInstalled {
    /// The versioned pin folder does not exist.
    Missing,
    /// It exists but holds none of the maps.
    Empty,
}

/// The pinned data path, or why there is none. An incomplete state (some
/// maps pinned, others not) is an error.
pub fn gather(pin_root: &Path) -> Result<std::result::Result<Snapshot, NotInstalled>> {
    let dir = pin_dir(pin_root);
    if !dir.exists() {
        return Ok(Err(NotInstalled::Missing));
    }
    if !map_names::ALL.iter().any(|m| dir.join(m).exists()) {
        return Ok(Err(NotInstalled::Empty));
    }
    let maps = DatapathMaps::open_pinned(&dir)?;
    let cfg = maps.config()?;
    let peers = maps.peers()?;
    let nodes = maps.nodes()?;
    let endpoints = maps.endpoints()?;
    let underlay = maps.underlay()?;
    let now_ns = crate::datapath::maps::coarse_now_ns();
    let age_ms = |refreshed_ns: u64| now_ns.saturating_sub(refreshed_ns) / 1_000_000;
    let stats = maps.stats()?;
    let attachments = attachments(&dir);

    let mut text = String::new();
    let _ = writeln!(text, "pinned state: {}", dir.display());
    match &cfg {
        Some(c) => {
            let net = |a: [u8; 4], p: u8| Ipv4Net::new(Ipv4Addr::from(a), p).map(|n| n.to_string()).unwrap_or_default();
            let _ = writeln!(text, "\nnode");
            let _ = writeln!(text, "  public IP      {}", Ipv4Addr::from(c.public_ip));
            let _ = writeln!(text, "  network        {}", net(c.cluster_net, c.cluster_prefix_len));
            let _ = writeln!(text, "  our subnet     {}", net(c.local_subnet, c.local_prefix_len));
            let _ = writeln!(text, "  VNI / port     {} / {}", c.vni, c.port);
            let _ = writeln!(text, "  VtepMAC        {}", format_mac(&c.vtep_mac));
            let _ = writeln!(text, "  uplink         ifindex {} (MTU {})", c.uplink_ifindex, c.uplink_mtu);
            let _ = writeln!(text, "  bridge         ifindex {} ({})", c.bridge_ifindex, format_mac(&c.bridge_mac));
        }
        None => {
            let _ = writeln!(text, "\nnode: not configured yet (the agent has not finished starting)");
        }
    }
    let _ = writeln!(text, "\nremote subnets ({})", peers.len());
    let _ = writeln!(text, "  {:<18} {:<16} {:<7} VTEP MAC", "SUBNET", "NEXT HOP", "MODE");
    for p in &peers {
        // ipnet's Display ignores width: pad its string.
        let _ = writeln!(text, "  {:<18} {:<16} {:<7} {}", p.subnet.to_string(), p.public_ip.to_string(), mode_name(p.mode), vtep_text(p));
    }
    let _ = writeln!(text, "\nknown senders ({})", nodes.len());
    for (ip, subnet) in &nodes {
        let _ = writeln!(text, "  {:<16} may send from {subnet}", ip.to_string());
    }
    let _ = writeln!(text, "\nlocal pods with direct delivery ({})", endpoints.len());
    for e in &endpoints {
        let _ = writeln!(text, "  {:<16} ifindex {:<5} {}", e.ip.to_string(), e.ifindex, format_mac(&e.mac));
    }
    // Entries older than a second are no longer used: the next packet to
    // that node refreshes them through the kernel's neighbour table.
    let _ = writeln!(text, "\nunderlay next hops cached by the send path ({})", underlay.len());
    for u in &underlay {
        let _ = writeln!(
            text,
            "  {:<16} to {} from {} ({} ms ago)",
            u.public_ip.to_string(),
            format_mac(&u.dst_mac),
            format_mac(&u.src_mac),
            age_ms(u.refreshed_ns)
        );
    }
    let _ = writeln!(text, "\nattached programs ({})", attachments.len());
    for a in &attachments {
        let ids = match (a.link_id, a.program_id) {
            (Some(l), Some(p)) => format!("link {l}, prog {p}"),
            _ => "not attached".into(),
        };
        let _ = writeln!(text, "  {:<28} {ids}", a.pin);
    }
    let _ = writeln!(text, "\npacket counters");
    let _ = writeln!(text, "  {:<22} {:>14} {:>16}", "REASON", "PACKETS", "BYTES");
    for (reason, c) in &stats.counters {
        let _ = writeln!(text, "  {:<22} {:>14} {:>16}", reason.name(), c.packets, c.bytes);
    }

    let json = json!({
        "pin_dir": dir.display().to_string(),
        "installed": true,
        "config": cfg.map(|c| json!({
            "public_ip": Ipv4Addr::from(c.public_ip).to_string(),
            "network": format!("{}/{}", Ipv4Addr::from(c.cluster_net), c.cluster_prefix_len),
            "subnet": format!("{}/{}", Ipv4Addr::from(c.local_subnet), c.local_prefix_len),
            "vni": c.vni,
            "port": c.port,
            "vtep_mac": format_mac(&c.vtep_mac),
            "uplink_ifindex": c.uplink_ifindex,
            "uplink_mtu": c.uplink_mtu,
            "bridge_ifindex": c.bridge_ifindex,
            "bridge_mac": format_mac(&c.bridge_mac),
        })),
        "subnets": peers.iter().map(|p| json!({
            "subnet": p.subnet.to_string(),
            // Both modes send to the node itself: VXLAN to its public IP,
            // direct routing via it.
            "next_hop": p.public_ip.to_string(),
            "public_ip": p.public_ip.to_string(),
            "mode": mode_name(p.mode),
            "vtep_mac": format_mac(&p.vtep_mac),
        })).collect::<Vec<_>>(),
        "nodes": nodes.iter().map(|(ip, s)| json!({"public_ip": ip.to_string(), "subnet": s.to_string()})).collect::<Vec<_>>(),
        "endpoints": endpoints.iter().map(|e| json!({
            "ip": e.ip.to_string(), "ifindex": e.ifindex, "mac": format_mac(&e.mac),
        })).collect::<Vec<_>>(),
        "underlay": underlay.iter().map(|u| json!({
            "public_ip": u.public_ip.to_string(),
            "dst_mac": format_mac(&u.dst_mac),
            "src_mac": format_mac(&u.src_mac),
            "age_ms": age_ms(u.refreshed_ns),
        })).collect::<Vec<_>>(),
        "programs": attachments.iter().map(|a| json!({
            "pin": a.pin, "link_id": a.link_id, "program_id": a.program_id,
        })).collect::<Vec<_>>(),
        "counters": stats.counters.iter().map(|(r, c)| (r.name().to_string(), json!({"packets": c.packets, "bytes": c.bytes}))).collect::<serde_json::Map<_, _>>(),
    });
    Ok(Ok(Snapshot { pin_dir: dir.display().to_string(), json, text }))
}

/// The VtepMAC column: none for directly routed (host-gw) peers.
fn vtep_text(p: &crate::datapath::Peer) -> String {
    if p.mode == overlay_common::maps::Mode::Direct && p.vtep_mac == [0; 6] {
        "-".into()
    } else {
        format_mac(&p.vtep_mac)
    }
}

/// Pin folders of other layout versions next to ours (`v0`, `v2`, ...):
/// left by an older or newer agent.
fn other_versions(pin_root: &Path, ours: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pin_root) else { return Vec::new() };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != ours && p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.strip_prefix('v').is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())))
        .collect();
    found.sort();
    found
}

/// What `inspect` prints when nothing is pinned: where it looked, and what
/// that usually means.
pub fn not_installed_text(pin_root: &Path, why: &NotInstalled) -> String {
    let dir = pin_dir(pin_root);
    let mut text = match why {
        NotInstalled::Missing => format!(
            "nothing installed: {} does not exist.\n\
             The agent has never run with --bpf-pin-dir={}, or `overlay-agent cleanup` removed its state.\n",
            dir.display(),
            pin_root.display()
        ),
        NotInstalled::Empty => format!(
            "nothing installed: {} holds no maps (the agent did not finish its first start, or its state was removed by hand).\n",
            dir.display()
        ),
    };
    let others = other_versions(pin_root, &dir);
    if !others.is_empty() {
        let _ = writeln!(
            text,
            "{} also holds {}: state of an agent with another pin layout version (this one reads v{PIN_VERSION}).",
            pin_root.display(),
            others.join(", ")
        );
    }
    text
}

fn attachments(dir: &Path) -> Vec<Attachment> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("links")) else { return out };
    let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let pin = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (link_id, program_id) = match PinnedLink::from_pin(&path) {
            Ok(link) => {
                let fd: aya::programs::links::FdLink = link.into();
                match fd.info() {
                    Ok(info) => (Some(info.id()), Some(info.program_id())),
                    Err(_) => (None, None),
                }
            }
            Err(_) => (None, None),
        };
        out.push(Attachment { pin, link_id, program_id });
    }
    out
}

/// Prints the snapshot; exits 0 also when nothing is installed (that is an
/// answer, not an error).
pub fn run(pin_root: &Path, as_json: bool) -> Result<()> {
    match gather(pin_root)? {
        Ok(s) if as_json => println!("{}", serde_json::to_string_pretty(&s.json)?),
        Ok(s) => print!("{}", s.text),
        Err(why) => {
            if as_json {
                println!("{}", json!({"pin_dir": pin_dir(pin_root).display().to_string(), "installed": false}));
            } else {
                print!("{}", not_installed_text(pin_root, &why));
            }
        }
    }
    Ok(())
}
