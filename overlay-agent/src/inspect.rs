//! `overlay-agent inspect`: the node's data path as the kernel holds it,
//! read from the pins alone (no etcd, works while the agent is down).
//!
//! Everything shown is read once into a [`View`]; `--json` is its serde
//! serialisation and the text its `Display`, so the two cannot disagree.
use std::{
    fmt::{self, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::Result;
use aya::programs::links::{FdLink, PinnedLink};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Serialize, Serializer};

use crate::{
    datapath::{maps::coarse_now_ns, pins, DatapathMaps, DatapathMaps6, Mode, NodeConfig, NodeConfig6, PinLayout},
    etcd::registry::format_mac,
};

/// What `inspect` shows of an installed data path.
#[derive(Serialize)]
pub struct View {
    pub pin_dir: String,
    /// Always true here; false only in [`Absent`].
    pub installed: bool,
    /// None until the agent finished its first start.
    pub config: Option<ConfigView>,
    pub subnets: Vec<SubnetView>,
    /// Known senders.
    pub nodes: Vec<SenderView>,
    pub endpoints: Vec<EndpointView>,
    pub underlay: Vec<UnderlayView>,
    pub programs: Vec<Attachment>,
    /// The IPv6 maps (dual stack, IPv6-only): empty with no config on an
    /// IPv4-only node.
    pub ipv6: View6,
    /// In the order of the reasons (both families count in the same
    /// ones); an object by reason name in JSON.
    #[serde(serialize_with = "counters_by_name")]
    pub counters: Vec<CounterView>,
}

/// The IPv6 maps (`CONFIG6`, `SUBNETS6`, `NODES6`, `ENDPOINTS6`).
#[derive(Serialize)]
pub struct View6 {
    /// None on an IPv4-only node (and until the v6 side is set up).
    pub config: Option<ConfigView6>,
    pub subnets: Vec<SubnetView<Ipv6Net, Ipv6Addr>>,
    pub nodes: Vec<SenderView<Ipv6Addr, Ipv6Net>>,
    pub endpoints: Vec<EndpointView<Ipv6Addr>>,
}

/// `--json` when nothing is installed.
#[derive(Serialize)]
pub struct Absent {
    pub pin_dir: String,
    pub installed: bool,
}

/// `CONFIG` (`CONFIG6` with v6 types: [`ConfigView6`]).
#[derive(Serialize)]
#[serde(bound(serialize = "A: Serialize, N: fmt::Display"))]
pub struct ConfigView<A = Ipv4Addr, N = Ipv4Net> {
    /// Outer source of what we send, destination of what we accept.
    pub local_ip: A,
    /// Our lease's PublicIP (PublicIPv6).
    pub public_ip: A,
    #[serde(serialize_with = "display")]
    pub network: N,
    #[serde(serialize_with = "display")]
    pub subnet: N,
    pub vni: u32,
    pub port: u16,
    /// BackendData's (BackendV6Data's) VtepMAC.
    pub vtep_mac: Mac,
    /// overlay0's ifindex (only the v6 side keeps it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_ifindex: Option<u32>,
    pub uplink_ifindex: u32,
    pub uplink_mtu: u32,
    pub bridge_ifindex: u32,
    pub bridge_mac: Mac,
    /// Only the v6 side keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_forwarding: Option<bool>,
}

/// `CONFIG6`: the node's v6 side.
pub type ConfigView6 = ConfigView<Ipv6Addr, Ipv6Net>;

/// A remote subnet (`SUBNETS`; `SUBNETS6` with v6 types).
#[derive(Serialize)]
#[serde(bound(serialize = "N: fmt::Display, A: Serialize"))]
pub struct SubnetView<N = Ipv4Net, A = Ipv4Addr> {
    #[serde(serialize_with = "display")]
    pub subnet: N,
    /// Both modes send to the node itself: VXLAN to its public IP, direct
    /// routing via it.
    pub next_hop: A,
    pub public_ip: A,
    #[serde(serialize_with = "display")]
    pub mode: Mode,
    pub vtep_mac: Mac,
}

/// A PublicIP VXLAN is accepted from (`NODES`), and the subnets it may
/// send from: those whose `SUBNETS` entry names it.
#[derive(Serialize)]
#[serde(bound(serialize = "A: Serialize, N: fmt::Display"))]
pub struct SenderView<A = Ipv4Addr, N = Ipv4Net> {
    pub public_ip: A,
    /// How many leases name it, as `NODES` counts them.
    pub leases: u32,
    #[serde(serialize_with = "display_all")]
    pub subnets: Vec<N>,
}

#[derive(Serialize)]
pub struct EndpointView<A = Ipv4Addr> {
    pub ip: A,
    pub ifindex: u32,
    pub mac: Mac,
}

#[derive(Serialize)]
pub struct UnderlayView {
    pub public_ip: Ipv4Addr,
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub age_ms: u64,
}

#[derive(Serialize)]
pub struct Attachment {
    pub pin: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

#[derive(Serialize)]
pub struct CounterView {
    #[serde(skip)]
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// A MAC, written (text and JSON) as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_mac(&self.0))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn display_all<T: fmt::Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

fn counters_by_name<S: Serializer>(counters: &[CounterView], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(counters.iter().map(|c| (c.reason, c)))
}

impl From<NodeConfig> for ConfigView {
    fn from(c: NodeConfig) -> Self {
        ConfigView {
            local_ip: c.local_ip,
            public_ip: c.public_ip,
            network: c.network,
            subnet: c.subnet,
            vni: c.vni,
            port: c.port,
            vtep_mac: Mac(c.vtep_mac),
            uplink_ifindex: c.uplink_ifindex,
            uplink_mtu: c.uplink_mtu,
            bridge_ifindex: c.bridge_ifindex,
            bridge_mac: Mac(c.bridge_mac),
            tunnel_ifindex: None,
            kernel_forwarding: None,
        }
    }
}

impl From<NodeConfig6> for ConfigView6 {
    fn from(c: NodeConfig6) -> Self {
        ConfigView6 {
            local_ip: c.local_ip,
            public_ip: c.public_ip,
            network: c.network,
            subnet: c.subnet,
            vni: c.vni,
            port: c.port,
            vtep_mac: Mac(c.vtep_mac),
            tunnel_ifindex: Some(c.tunnel_ifindex),
            uplink_ifindex: c.uplink_ifindex,
            uplink_mtu: c.uplink_mtu,
            bridge_ifindex: c.bridge_ifindex,
            bridge_mac: Mac(c.bridge_mac),
            kernel_forwarding: Some(c.kernel_forwarding),
        }
    }
}

impl<N, A> SubnetView<N, A> {
    /// The VtepMAC column: none for directly routed (host-gw) peers.
    fn vtep_text(&self) -> String {
        if self.mode == Mode::Direct && self.vtep_mac.0 == [0; 6] {
            "-".into()
        } else {
            self.vtep_mac.to_string()
        }
    }
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
pub fn gather(pins: &PinLayout) -> Result<std::result::Result<View, NotInstalled>> {
    if !pins.dir().exists() {
        return Ok(Err(NotInstalled::Missing));
    }
    if !pins.has_maps() {
        return Ok(Err(NotInstalled::Empty));
    }
    let maps = DatapathMaps::open_pinned(pins)?;
    let config = maps.config()?.map(ConfigView::from);
    let (subnets, nodes, endpoints) = peer_views(
        maps.peers()?.into_iter().map(|p| (p.subnet, p.public_ip, p.mode, p.vtep_mac)).collect(),
        maps.nodes()?.into_iter().map(|n| (n.public_ip, n.leases)),
        maps.endpoints()?.into_iter().map(|e| (e.ip, e.ifindex, e.mac)),
    );
    let now_ns = coarse_now_ns();
    let underlay = maps
        .underlay()?
        .into_iter()
        .map(|u| UnderlayView {
            public_ip: u.public_ip,
            dst_mac: Mac(u.dst_mac),
            src_mac: Mac(u.src_mac),
            age_ms: now_ns.saturating_sub(u.refreshed_ns) / 1_000_000,
        })
        .collect();
    let counters = maps
        .stats()?
        .counters
        .iter()
        .map(|(reason, c)| CounterView { reason: reason.name(), packets: c.packets, bytes: c.bytes })
        .collect();
    Ok(Ok(View {
        pin_dir: pins.dir().display().to_string(),
        installed: true,
        config,
        subnets,
        nodes,
        endpoints,
        underlay,
        programs: attachments(pins),
        ipv6: gather6(pins)?,
        counters,
    }))
}

fn gather6(pins: &PinLayout) -> Result<View6> {
    let maps = DatapathMaps6::open_pinned(pins)?;
    let (subnets, nodes, endpoints) = peer_views(
        maps.peers()?.into_iter().map(|p| (p.subnet, p.public_ip, p.mode, p.vtep_mac)).collect(),
        maps.nodes()?.into_iter().map(|n| (n.public_ip, n.leases)),
        maps.endpoints()?.into_iter().map(|e| (e.ip, e.ifindex, e.mac)),
    );
    Ok(View6 { config: maps.config()?.map(ConfigView6::from), subnets, nodes, endpoints })
}

/// One family's views, built from its maps' rows.
type PeerViews<N, A> = (Vec<SubnetView<N, A>>, Vec<SenderView<A, N>>, Vec<EndpointView<A>>);

/// The views of one family's maps: `peers` as (subnet, public IP, mode,
/// VtepMAC), `senders` as (public IP, leases naming it), `endpoints` as
/// (address, ifindex, MAC). A sender lists the subnets whose entry names it.
fn peer_views<N: Copy, A: Copy + PartialEq>(
    peers: Vec<(N, A, Mode, [u8; 6])>,
    senders: impl Iterator<Item = (A, u32)>,
    endpoints: impl Iterator<Item = (A, u32, [u8; 6])>,
) -> PeerViews<N, A> {
    let nodes = senders
        .map(|(public_ip, leases)| SenderView {
            public_ip,
            leases,
            subnets: peers.iter().filter(|p| p.1 == public_ip).map(|p| p.0).collect(),
        })
        .collect();
    let subnets = peers
        .into_iter()
        .map(|(subnet, public_ip, mode, vtep_mac)| SubnetView { subnet, next_hop: public_ip, public_ip, mode, vtep_mac: Mac(vtep_mac) })
        .collect();
    let endpoints = endpoints.map(|(ip, ifindex, mac)| EndpointView { ip, ifindex, mac: Mac(mac) }).collect();
    (subnets, nodes, endpoints)
}

/// One family's remote subnets, known senders and local pods.
type PeerLists<'a, N, A> = (&'a [SubnetView<N, A>], &'a [SenderView<A, N>], &'a [EndpointView<A>]);

/// The remote subnets, known senders and local pods of one family, in
/// columns `w` wide (addresses, then subnets with their prefix).
fn fmt_peers<N: fmt::Display, A: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    family: &str,
    (subnets, nodes, endpoints): PeerLists<'_, N, A>,
    (wa, wn): (usize, usize),
) -> fmt::Result {
    writeln!(f, "\nremote {family}subnets ({})", subnets.len())?;
    writeln!(f, "  {:<wn$} {:<wa$} {:<7} VTEP MAC", "SUBNET", "NEXT HOP", "MODE")?;
    for s in subnets {
        let (subnet, next_hop) = (s.subnet.to_string(), s.next_hop.to_string());
        writeln!(f, "  {subnet:<wn$} {next_hop:<wa$} {:<7} {}", s.mode, s.vtep_text())?;
    }
    writeln!(f, "\nknown {family}senders ({})", nodes.len())?;
    for n in nodes {
        let subnets: Vec<String> = n.subnets.iter().map(|s| s.to_string()).collect();
        let from = if subnets.is_empty() { "nothing (no subnet names it)".to_string() } else { subnets.join(", ") };
        writeln!(f, "  {:<wa$} may send from {from}", n.public_ip.to_string())?;
    }
    writeln!(f, "\nlocal {family}pods with direct delivery ({})", endpoints.len())?;
    for e in endpoints {
        writeln!(f, "  {:<wa$} ifindex {:<5} {}", e.ip.to_string(), e.ifindex, e.mac)?;
    }
    Ok(())
}

impl<A: fmt::Display + PartialEq, N: fmt::Display> ConfigView<A, N> {
    /// The config's lines in `inspect`'s text: the public address as
    /// `public_label`, the tunnel address (when not the public one) with
    /// what it is for.
    fn fmt_lines(&self, f: &mut fmt::Formatter<'_>, public_label: &str, tunnel_what: &str) -> fmt::Result {
        writeln!(f, "  {public_label:<14} {}", self.public_ip)?;
        if self.local_ip != self.public_ip {
            writeln!(f, "  tunnel address {} ({tunnel_what})", self.local_ip)?;
        }
        writeln!(f, "  network        {}", self.network)?;
        writeln!(f, "  our subnet     {}", self.subnet)?;
        writeln!(f, "  VNI / port     {} / {}", self.vni, self.port)?;
        writeln!(f, "  VtepMAC        {}", self.vtep_mac)?;
        if let Some(i) = self.tunnel_ifindex {
            writeln!(f, "  tunnel         ifindex {i}")?;
        }
        writeln!(f, "  uplink         ifindex {} (MTU {})", self.uplink_ifindex, self.uplink_mtu)?;
        writeln!(f, "  bridge         ifindex {} ({})", self.bridge_ifindex, self.bridge_mac)
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ipnet's and Ipv4Addr's Display may ignore width: columns pad strings.
        writeln!(f, "pinned state: {}", self.pin_dir)?;
        match &self.config {
            Some(c) => {
                writeln!(f, "\nnode")?;
                c.fmt_lines(f, "public IP", "outer source and destination; NAT to the public IP")?;
            }
            None => writeln!(f, "\nnode: not configured yet (the agent has not finished starting)")?,
        }
        fmt_peers(f, "", (&self.subnets, &self.nodes, &self.endpoints), (16, 18))?;
        // Entries older than a second are no longer used: the next packet to
        // that node refreshes them through the kernel's neighbour table.
        writeln!(f, "\nunderlay next hops cached by the send path ({})", self.underlay.len())?;
        for u in &self.underlay {
            writeln!(f, "  {:<16} to {} from {} ({} ms ago)", u.public_ip.to_string(), u.dst_mac, u.src_mac, u.age_ms)?;
        }
        writeln!(f, "\nattached programs ({})", self.programs.len())?;
        for a in &self.programs {
            let ids = match (a.link_id, a.program_id) {
                (Some(l), Some(p)) => format!("link {l}, prog {p}"),
                _ => "not attached".into(),
            };
            writeln!(f, "  {:<28} {ids}", a.pin)?;
        }
        let v6 = &self.ipv6;
        match &v6.config {
            Some(c) => {
                writeln!(f, "\nIPv6")?;
                c.fmt_lines(f, "public IPv6", "outer source")?;
            }
            None => writeln!(f, "\nIPv6: off (no IPv6 config in the maps)")?,
        }
        if v6.config.is_some() || !v6.subnets.is_empty() || !v6.endpoints.is_empty() {
            fmt_peers(f, "IPv6 ", (&v6.subnets, &v6.nodes, &v6.endpoints), (26, 30))?;
        }
        writeln!(f, "\npacket counters (both families)")?;
        writeln!(f, "  {:<22} {:>14} {:>16}", "REASON", "PACKETS", "BYTES")?;
        for c in &self.counters {
            writeln!(f, "  {:<22} {:>14} {:>16}", c.reason, c.packets, c.bytes)?;
        }
        Ok(())
    }
}

/// What `inspect` prints when nothing is pinned: where it looked, and what
/// that usually means.
pub fn not_installed_text(pins: &PinLayout, why: &NotInstalled) -> String {
    let dir = pins.dir();
    let mut text = match why {
        NotInstalled::Missing => format!(
            "nothing installed: {} does not exist.\n\
             The agent has never run with --bpf-pin-dir={}, or `overlay-agent cleanup` removed its state.\n",
            dir.display(),
            pins.root().display()
        ),
        NotInstalled::Empty => format!(
            "nothing installed: {} holds no maps (the agent did not finish its first start, or its state was removed by hand).\n",
            dir.display()
        ),
    };
    let others = pins.other_versions();
    if !others.is_empty() {
        let _ = writeln!(
            text,
            "{} also holds {}: state of an agent with another pin layout version (this one reads v{}).",
            pins.root().display(),
            others.join(", "),
            pins::VERSION
        );
    }
    text
}

fn attachments(pins: &PinLayout) -> Vec<Attachment> {
    pins.links()
        .into_iter()
        .map(|path| {
            let pin = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let ids = PinnedLink::from_pin(&path).ok().and_then(|link| FdLink::from(link).info().ok());
            Attachment {
                pin,
                link_id: ids.as_ref().map(|i| i.id()),
                program_id: ids.as_ref().map(|i| i.program_id()),
            }
        })
        .collect()
}

/// Prints the view; exits 0 also when nothing is installed (that is an
/// answer, not an error).
pub fn run(pin_root: &Path, as_json: bool) -> Result<()> {
    let pins = PinLayout::new(pin_root);
    // Through a Value, whose maps sort their keys: the output's key order
    // does not depend on the order of the struct fields.
    match gather(&pins)? {
        Ok(view) if as_json => println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&view)?)?),
        Ok(view) => print!("{view}"),
        Err(_) if as_json => {
            let absent = Absent { pin_dir: pins.dir().display().to_string(), installed: false };
            println!("{}", serde_json::to_value(&absent)?);
        }
        Err(why) => print!("{}", not_installed_text(&pins, &why)),
    }
    Ok(())
}
