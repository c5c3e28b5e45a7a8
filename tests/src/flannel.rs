//! flannel's kernel data path, as flanneld's vxlan and host-gw backends set
//! it up (shared/reference/flannel-compat.md), in two forms:
//!
//! * [`FlannelRef`]: **our re-implementation of flanneld's vxlan backend,
//!   kernel data path** (and of its host-gw backend). There is no flanneld
//!   binary on these machines, so this is the reference node: it reads the
//!   network config from etcd, creates `flannel.<VNI>`, writes its own lease
//!   (with its VtepMAC), `subnet.env` and, if asked, flanneld's iptables
//!   rules, then lists and watches the leases in etcd (with `etcdctl`, the Go
//!   client flanneld uses) and adds or removes a neighbour, an FDB entry and
//!   a route per lease as flanneld's `handleSubnetEvents` does. It is weaker
//!   than the real flanneld: no lease renewal, no subnet allocation (the test
//!   picks the subnet), no retries, exact-case JSON field names, and whatever
//!   else of flanneld we did not re-implement. A test that passes against it
//!   shows interop with the kernel's VXLAN driven the way we read flanneld's
//!   code, not with flanneld itself.
//! * [`setup_kernel_vxlan`] and [`add_kernel_peer`]: the same kernel state
//!   written once, statically (for strangers, benchmarks and docker seeds).
//!
//! The device: `flannel.<VNI>` (local = public IP, dev = uplink, dstport
//! Backend.Port or 8472, nolearning, outer UDP checksum on (the kernel
//! default, which flanneld keeps), MTU (Backend.MTU or uplink MTU) - 50,
//! address `<subnet>.0/32`).
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{
    etcd::Etcd,
    forward::PortForward,
    netns::{ChildHandle, Host, Netns},
};

/// A lease as flannel's vxlan backend uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanLease {
    /// Network address of the subnet, e.g. 10.42.3.0.
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

impl VxlanLease {
    /// The value flanneld writes to `<prefix>/subnets/<ip>-<len>`.
    pub fn etcd_value(&self, vni: u32) -> String {
        format!(
            "{{\"PublicIP\":\"{}\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{{\"VNI\":{vni},\"VtepMAC\":\"{}\"}}}}",
            self.public_ip,
            mac_str(&self.vtep_mac)
        )
    }

    pub fn etcd_key(&self, prefix: &str) -> String {
        format!("{}/subnets/{}-{}", prefix.trim_end_matches('/'), self.subnet, self.prefix_len)
    }

    /// The first usable address (the bridge's, FLANNEL_SUBNET's).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }
}

pub fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Sets `host` up as flanneld (vxlan backend) would for `own`, plus a `cni0`
/// bridge holding the first address of the lease with MTU uplink - 50.
pub fn setup_kernel_vxlan(host: &Host, vni: u32, own: &VxlanLease, uplink_mtu: u32) -> Result<()> {
    setup_kernel_vxlan_with(host, vni, own, uplink_mtu, UdpCsum::AsFlanneld)
}

/// The outer UDP checksum of a kernel VXLAN device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpCsum {
    /// What flanneld does: it sets no `IFLA_VXLAN_UDP_CSUM` (vishvananda/netlink
    /// sends the attribute only when `UDPCSum` is true, and flannel leaves it
    /// false), so the kernel's default for an IPv4 underlay applies: on
    /// (`ip -d link show` says `udpcsum`).
    AsFlanneld,
    /// `noudpcsum`: outer UDP checksum 0, as our BPF encapsulation sends.
    Off,
}

/// [`setup_kernel_vxlan`] with a choice of outer UDP checksum.
pub fn setup_kernel_vxlan_with(host: &Host, vni: u32, own: &VxlanLease, uplink_mtu: u32, csum: UdpCsum) -> Result<()> {
    let dev = VxlanDevice { vni, port: 8472, mtu: uplink_mtu - 50, csum };
    dev.create(host, host.uplink(), own)?;
    add_pod_bridge(host, own, dev.mtu)
}

/// `flannel.<vni>` as flanneld's vxlan backend creates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VxlanDevice {
    vni: u32,
    port: u16,
    mtu: u32,
    csum: UdpCsum,
}

impl VxlanDevice {
    fn name(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    fn create(&self, ns: &Netns, uplink: &str, own: &VxlanLease) -> Result<()> {
        let dev = self.name();
        ns.ip_batch(&[
            format!(
                "link add {dev} address {} type vxlan id {} local {} dev {uplink} dstport {} nolearning{}",
                mac_str(&own.vtep_mac),
                self.vni,
                own.public_ip,
                self.port,
                match self.csum {
                    UdpCsum::AsFlanneld => "",
                    UdpCsum::Off => " noudpcsum",
                }
            ),
            format!("link set {dev} mtu {} up", self.mtu),
            format!("addr add {}/32 dev {dev}", own.subnet),
        ])
    }
}

/// A `cni0` bridge with the lease's first address (what the CNI bridge
/// plugin makes from subnet.env; flanneld itself does not), and forwarding.
fn add_pod_bridge(ns: &Netns, own: &VxlanLease, mtu: u32) -> Result<()> {
    ns.ip_batch(&[
        "link add cni0 type bridge".into(),
        format!("link set cni0 mtu {mtu} up"),
        format!("addr add {}/{} dev cni0", own.gateway(), own.prefix_len),
    ])?;
    ns.set_sysctl("net.ipv4.ip_forward", "1")
}

/// Whether `flannel.<vni>` on `host` puts a UDP checksum in the outer header,
/// as the kernel reports it (`udp_csum` of `ip -d -j link show`).
pub fn kernel_vxlan_udp_csum(host: &Host, vni: u32) -> Result<bool> {
    let out = host.run(&["ip", "-d", "-j", "link", "show", "dev", &format!("flannel.{vni}")])?;
    let json: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -d -j link show: {out}"))?;
    json.pointer("/0/linkinfo/info_data/udp_csum")
        .and_then(|v| v.as_bool())
        .ok_or_else(|| anyhow!("flannel.{vni}: no linkinfo.info_data.udp_csum in {out}"))
}

/// What flanneld does when a remote lease appears.
pub fn add_kernel_peer(host: &Host, vni: u32, peer: &VxlanLease) -> Result<()> {
    add_kernel_peer_dev(host, &format!("flannel.{vni}"), peer)
}

fn add_kernel_peer_dev(ns: &Netns, dev: &str, peer: &VxlanLease) -> Result<()> {
    ns.ip_batch(&[
        format!("neigh replace {} lladdr {} dev {dev} nud permanent", peer.subnet, mac_str(&peer.vtep_mac)),
        format!("route replace {}/{} via {} dev {dev} onlink", peer.subnet, peer.prefix_len, peer.subnet),
    ])?;
    ns.run(&[
        "bridge",
        "fdb",
        "replace",
        &mac_str(&peer.vtep_mac),
        "dev",
        dev,
        "dst",
        &peer.public_ip.to_string(),
        "self",
        "permanent",
    ])?;
    Ok(())
}

/// The backend flanneld runs, from `<prefix>/config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefBackend {
    Vxlan { vni: u32, port: u16, direct_routing: bool },
    HostGw,
}

/// What flanneld reads from `<prefix>/config` (exact-case field names only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefConfig {
    pub network: Ipv4Addr,
    pub network_len: u8,
    pub backend: RefBackend,
    /// Backend.MTU: the underlay MTU to assume (default: the uplink's).
    pub mtu: Option<u32>,
}

impl RefConfig {
    pub fn parse(json: &str) -> Result<RefConfig> {
        let v: serde_json::Value = serde_json::from_str(json).with_context(|| format!("network config {json:?}"))?;
        let net = v["Network"].as_str().ok_or_else(|| anyhow!("no Network in {json}"))?;
        let (addr, len) = net.split_once('/').ok_or_else(|| anyhow!("Network {net:?} is not a CIDR"))?;
        let b = &v["Backend"];
        let backend = match b["Type"].as_str().unwrap_or("vxlan") {
            "vxlan" => RefBackend::Vxlan {
                vni: b["VNI"].as_u64().unwrap_or(1) as u32,
                // Port 0 (or none): the kernel's default VXLAN port, 8472.
                port: Some(b["Port"].as_u64().unwrap_or(0) as u16).filter(|p| *p != 0).unwrap_or(8472),
                direct_routing: b["DirectRouting"].as_bool().unwrap_or(false),
            },
            "host-gw" => RefBackend::HostGw,
            other => bail!("backend {other:?}: the reference does vxlan and host-gw only"),
        };
        Ok(RefConfig {
            network: addr.parse()?,
            network_len: len.parse()?,
            backend,
            mtu: b["MTU"].as_u64().map(|m| m as u32),
        })
    }
}

/// How a [`FlannelRef`] node is started.
#[derive(Clone, Debug)]
pub struct RefOptions {
    /// Subnet of the node's lease (flanneld would allocate one; the test
    /// picks it).
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub vtep_mac: [u8; 6],
    /// `--ip-masq`: flanneld's nat and filter chains (flannel-compat.md).
    pub ip_masq: bool,
    /// `--subnet-file`.
    pub subnet_file: PathBuf,
}

/// A remote lease as the reference applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedLease {
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: Option<[u8; 6]>,
    /// Routed directly (host-gw, or DirectRouting to an on-link peer).
    pub direct: bool,
}

/// Our re-implementation of flanneld's vxlan backend (and host-gw), kernel
/// data path, driven by real etcd watches. See the module documentation
/// for what it does and how it falls short of flanneld.
pub struct FlannelRef {
    ns: Netns,
    uplink: String,
    pub lease: VxlanLease,
    pub config: RefConfig,
    /// The pod MTU it chose (FLANNEL_MTU).
    pub pod_mtu: u32,
    lease_key: String,
    endpoint: String,
    watch: Option<ChildHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<Mutex<RefState>>,
    // Last: the watch goes before its way to etcd.
    _forward: PortForward,
}

#[derive(Default)]
struct RefState {
    applied: BTreeMap<String, AppliedLease>,
    errors: Vec<String>,
}

fn etcdctl_in(ns: &Netns, endpoint: &str) -> Command {
    let mut cmd = ns.command("etcdctl");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoint}")).stdin(Stdio::null());
    cmd
}

fn run_etcdctl_in(ns: &Netns, endpoint: &str, args: &[&str]) -> Result<String> {
    let out = etcdctl_in(ns, endpoint).args(args).output().context("running etcdctl (Debian package etcd-client)")?;
    if !out.status.success() {
        bail!("etcdctl {} in {}: {}", args.join(" "), ns.name(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl FlannelRef {
    /// Starts the reference on `host` against `etcd` under `prefix`: as
    /// flanneld does at start, in order: config, device, own lease (a new
    /// etcd lease of 86400 s, VtepMAC in BackendData), subnet.env, iptables,
    /// then one listing of the leases and a watch from its revision.
    pub fn start(host: &Host, etcd: &Etcd, prefix: &str, opts: &RefOptions) -> Result<FlannelRef> {
        let target: SocketAddr = etcd
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("etcd endpoint {}", etcd.endpoint()))?;
        let forward = PortForward::into_ns(host, target)?;
        let endpoint = forward.url();
        let ns: Netns = (**host).clone();
        let prefix = prefix.trim_end_matches('/').to_string();
        let config_json = run_etcdctl_in(&ns, &endpoint, &["get", "--print-value-only", &format!("{prefix}/config")])?;
        let config = RefConfig::parse(config_json.trim())?;
        // The uplink's MTU and address, as flanneld finds them (not
        // /sys/class/net: nsenter --net leaves /sys showing the root
        // namespace; not the testbed's record: a test may re-address it).
        let link = ns.run(&["ip", "-j", "addr", "show", "dev", host.uplink()])?;
        let link: serde_json::Value = serde_json::from_str(&link).with_context(|| format!("ip -j addr: {link}"))?;
        let uplink_mtu =
            link.pointer("/0/mtu").and_then(|m| m.as_u64()).ok_or_else(|| anyhow!("no mtu in {link}"))? as u32;
        let public_ip: Ipv4Addr = link
            .pointer("/0/addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .find(|a| a["family"] == "inet")
            .and_then(|a| a["local"].as_str())
            .ok_or_else(|| anyhow!("no IPv4 address on {}: {link}", host.uplink()))?
            .parse()?;
        let underlay_mtu = config.mtu.unwrap_or(uplink_mtu);
        let lease = VxlanLease {
            subnet: opts.subnet,
            prefix_len: opts.prefix_len,
            public_ip,
            vtep_mac: opts.vtep_mac,
        };
        let pod_mtu = match config.backend {
            RefBackend::Vxlan { vni, port, .. } => {
                let dev = VxlanDevice { vni, port, mtu: underlay_mtu - 50, csum: UdpCsum::AsFlanneld };
                dev.create(&ns, host.uplink(), &lease)?;
                dev.mtu
            }
            RefBackend::HostGw => underlay_mtu,
        };
        add_pod_bridge(&ns, &lease, pod_mtu)?;

        let lease_key = lease.etcd_key(&prefix);
        let granted = run_etcdctl_in(&ns, &endpoint, &["lease", "grant", "86400"])?;
        // "lease 694d8a5e1a0c3b0f granted with TTL(86400s)"
        let id = granted.split_whitespace().nth(1).ok_or_else(|| anyhow!("etcdctl lease grant said {granted:?}"))?;
        let value = match config.backend {
            RefBackend::Vxlan { vni, .. } => lease.etcd_value(vni),
            RefBackend::HostGw => {
                format!("{{\"PublicIP\":\"{}\",\"PublicIPv6\":null,\"BackendType\":\"host-gw\"}}", lease.public_ip)
            }
        };
        run_etcdctl_in(&ns, &endpoint, &["put", &format!("--lease={id}"), &lease_key, &value])?;

        let ipmasq = opts.ip_masq;
        std::fs::write(
            &opts.subnet_file,
            format!(
                "FLANNEL_NETWORK={}/{}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={pod_mtu}\nFLANNEL_IPMASQ={ipmasq}\n",
                config.network,
                config.network_len,
                lease.gateway(),
                lease.prefix_len
            ),
        )?;
        if ipmasq {
            write_flanneld_iptables(&ns, &config, &lease)?;
        }

        let mut r = FlannelRef {
            ns,
            uplink: host.uplink().to_string(),
            lease,
            config,
            pod_mtu,
            lease_key,
            endpoint,
            watch: None,
            thread: None,
            state: Arc::default(),
            _forward: forward,
        };
        r.start_watch(&prefix)?;
        Ok(r)
    }

    fn start_watch(&mut self, prefix: &str) -> Result<()> {
        let subnets = format!("{prefix}/subnets/");
        let listing = run_etcdctl_in(&self.ns, &self.endpoint, &["get", "--prefix", &subnets, "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&listing).with_context(|| format!("etcdctl get: {listing}"))?;
        let rev = v.pointer("/header/revision").and_then(|r| r.as_i64()).ok_or_else(|| anyhow!("no revision"))?;
        let b64 = |x: &serde_json::Value| -> String {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(x.as_str().unwrap_or("")).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let handler = LeaseHandler {
            ns: self.ns.clone(),
            uplink: self.uplink.clone(),
            own: self.lease,
            backend: self.config.backend,
            subnets_prefix: subnets.clone(),
            state: self.state.clone(),
        };
        for kv in v["kvs"].as_array().into_iter().flatten() {
            handler.event(&b64(&kv["key"]), Some(&b64(&kv["value"])));
        }
        let mut cmd = etcdctl_in(&self.ns, &self.endpoint);
        cmd.args(["watch", "--prefix", &subnets, &format!("--rev={}", rev + 1)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = self.ns.spawn(cmd)?;
        let stdout = child.take_stdout().ok_or_else(|| anyhow!("etcdctl watch: no stdout"))?;
        self.watch = Some(child);
        self.thread = Some(std::thread::spawn(move || {
            read_watch_events(stdout, |key, value| {
                handler.event(&key, value.as_deref());
                true
            })
        }));
        Ok(())
    }

    /// The remote leases it has in the kernel now, by etcd key.
    pub fn applied(&self) -> BTreeMap<String, AppliedLease> {
        lock(&self.state).applied.clone()
    }

    /// What went wrong applying leases (empty when all went well).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.state).errors.clone()
    }

    /// Waits until its applied subnets are exactly `subnets`.
    pub fn wait_applied(&self, subnets: &[Ipv4Addr], timeout: Duration) -> Result<()> {
        let mut want: Vec<Ipv4Addr> = subnets.to_vec();
        want.sort();
        crate::poll_until(timeout, &format!("reference {} applying {want:?}", self.ns.name()), || {
            let mut got: Vec<Ipv4Addr> = self.applied().values().map(|l| l.subnet).collect();
            got.sort();
            ensure!(got == want, "applied {got:?}, errors {:?}", self.errors());
            Ok(())
        })
    }

    /// Its lease's key in etcd.
    pub fn lease_key(&self) -> &str {
        &self.lease_key
    }

    /// flanneld stopping (SIGTERM): the watch ends; the device, the
    /// entries, the lease and subnet.env stay, as flanneld leaves them.
    pub fn stop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.kill();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FlannelRef {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `etcdctl watch` output (`PUT`/key/value or `DELETE`/key, one a
/// line) and hands each change to `f` (value None for a DELETE) until the
/// watch ends or `f` returns false.
pub(crate) fn read_watch_events(out: impl std::io::Read, mut f: impl FnMut(String, Option<String>) -> bool) {
    let mut lines = BufReader::new(out).lines();
    while let Some(Ok(op)) = lines.next() {
        let put = match op.as_str() {
            "PUT" => true,
            "DELETE" => false,
            _ => continue,
        };
        let Some(Ok(key)) = lines.next() else { break };
        let value = if put { lines.next().and_then(|l| l.ok()) } else { None };
        if !f(key, value) {
            break;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// flanneld's `--ip-masq` rules (iptables mode), in the node's namespace.
fn write_flanneld_iptables(ns: &Netns, config: &RefConfig, own: &VxlanLease) -> Result<()> {
    let cluster = format!("{}/{}", config.network, config.network_len);
    let pod = format!("{}/{}", own.subnet, own.prefix_len);
    let c = ["-m", "comment", "--comment", "flanneld masq"];
    let f = ["-m", "comment", "--comment", "flanneld forward"];
    let mut rules: Vec<Vec<&str>> = vec![
        vec!["-t", "nat", "-N", "FLANNEL-POSTRTG"],
        [&["-t", "nat", "-A", "POSTROUTING"][..], &c, &["-j", "FLANNEL-POSTRTG"]].concat(),
        [&["-t", "nat", "-A", "FLANNEL-POSTRTG", "-m", "mark", "--mark", "0x4000/0x4000"][..], &c, &["-j", "RETURN"]]
            .concat(),
        [&["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", &pod, "-d", &cluster][..], &c, &["-j", "RETURN"]].concat(),
        [&["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", &cluster, "-d", &pod][..], &c, &["-j", "RETURN"]].concat(),
        [&["-t", "nat", "-A", "FLANNEL-POSTRTG", "!", "-s", &cluster, "-d", &pod][..], &c, &["-j", "RETURN"]].concat(),
        [
            &["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", &cluster, "!", "-d", "224.0.0.0/4"][..],
            &c,
            &["-j", "MASQUERADE", "--random-fully"],
        ]
        .concat(),
        [
            &["-t", "nat", "-A", "FLANNEL-POSTRTG", "!", "-s", &cluster, "-d", &cluster][..],
            &c,
            &["-j", "MASQUERADE", "--random-fully"],
        ]
        .concat(),
        vec!["-t", "filter", "-N", "FLANNEL-FWD"],
        [&["-t", "filter", "-A", "FORWARD"][..], &f, &["-j", "FLANNEL-FWD"]].concat(),
    ];
    rules.push([&["-t", "filter", "-A", "FLANNEL-FWD", "-s", &cluster][..], &f, &["-j", "ACCEPT"]].concat());
    rules.push([&["-t", "filter", "-A", "FLANNEL-FWD", "-d", &cluster][..], &f, &["-j", "ACCEPT"]].concat());
    for rule in rules {
        ns.run(&[&["iptables", "-w"][..], &rule].concat())?;
    }
    Ok(())
}

/// Applies lease events to the kernel as flanneld's backends do
/// (vxlan_network.go / route_network.go `handleSubnetEvents`).
struct LeaseHandler {
    ns: Netns,
    uplink: String,
    own: VxlanLease,
    backend: RefBackend,
    subnets_prefix: String,
    state: Arc<Mutex<RefState>>,
}

impl LeaseHandler {
    fn event(&self, key: &str, value: Option<&str>) {
        if let Err(e) = self.try_event(key, value) {
            log::warn!("reference {}: {key}: {e:#}", self.ns.name());
            lock(&self.state).errors.push(format!("{key}: {e:#}"));
        }
    }

    fn try_event(&self, key: &str, value: Option<&str>) -> Result<()> {
        // `<prefix>/subnets/10.42.3.0-24`, a dual-stack lease's with
        // `&<v6>-<len>` after it (this IPv4 node routes its IPv4 half, as
        // flanneld does); keys that do not parse are skipped.
        let v4_part = key.strip_prefix(&self.subnets_prefix).map(|k| k.split('&').next().unwrap_or(k));
        let Some((net, len)) = v4_part.and_then(|k| k.split_once('-')) else {
            return Ok(());
        };
        let (Ok(subnet), Ok(prefix_len)) = (net.parse::<Ipv4Addr>(), len.parse::<u8>()) else {
            return Ok(());
        };
        if subnet == self.own.subnet {
            return Ok(());
        }
        let Some(value) = value else {
            // Out of the kernel first: `applied` says what the kernel has.
            let applied = lock(&self.state).applied.get(key).cloned();
            if let Some(lease) = applied {
                self.remove(&lease)?;
                lock(&self.state).applied.remove(key);
            }
            return Ok(());
        };
        let v: serde_json::Value = serde_json::from_str(value).with_context(|| format!("lease value {value:?}"))?;
        let public_ip: Ipv4Addr =
            v["PublicIP"].as_str().ok_or_else(|| anyhow!("no PublicIP"))?.parse().context("PublicIP")?;
        let backend_type = v["BackendType"].as_str().unwrap_or("");
        let lease = match self.backend {
            RefBackend::Vxlan { direct_routing, .. } => {
                if backend_type != "vxlan" {
                    // flanneld: "ignoring non-vxlan v4Subnet".
                    return Ok(());
                }
                let mac =
                    v.pointer("/BackendData/VtepMAC").and_then(|m| m.as_str()).ok_or_else(|| anyhow!("no VtepMAC"))?;
                let vtep_mac = crate::netns::parse_mac(mac)?;
                // flannel's ip.DirectRouting: one route to the peer, with no gateway.
                let direct =
                    direct_routing && !self.ns.run(&["ip", "route", "get", &public_ip.to_string()])?.contains(" via ");
                AppliedLease { subnet, prefix_len, public_ip, vtep_mac: Some(vtep_mac), direct }
            }
            RefBackend::HostGw => {
                if backend_type != "host-gw" {
                    return Ok(());
                }
                AppliedLease { subnet, prefix_len, public_ip, vtep_mac: None, direct: true }
            }
        };
        self.add(&lease)?;
        lock(&self.state).applied.insert(key.to_string(), lease);
        Ok(())
    }

    fn add(&self, l: &AppliedLease) -> Result<()> {
        let cidr = format!("{}/{}", l.subnet, l.prefix_len);
        match (self.backend, l.vtep_mac) {
            (RefBackend::HostGw, _) => {
                self.ns.ip_batch(&[format!("route replace {cidr} via {} dev {}", l.public_ip, self.uplink)])
            }
            (RefBackend::Vxlan { .. }, _) if l.direct => {
                self.ns.ip_batch(&[format!("route replace {cidr} via {}", l.public_ip)])
            }
            (RefBackend::Vxlan { vni, .. }, Some(mac)) => {
                let peer =
                    VxlanLease { subnet: l.subnet, prefix_len: l.prefix_len, public_ip: l.public_ip, vtep_mac: mac };
                add_kernel_peer_dev(&self.ns, &format!("flannel.{vni}"), &peer)
            }
            (RefBackend::Vxlan { .. }, None) => bail!("vxlan lease without a VtepMAC"),
        }
    }

    fn remove(&self, l: &AppliedLease) -> Result<()> {
        let cidr = format!("{}/{}", l.subnet, l.prefix_len);
        match (self.backend, l.vtep_mac) {
            (RefBackend::Vxlan { vni, .. }, Some(mac)) if !l.direct => {
                let dev = format!("flannel.{vni}");
                self.ns.ip_batch(&[format!("neigh del {} dev {dev}", l.subnet)])?;
                self.ns.run(&[
                    "bridge",
                    "fdb",
                    "del",
                    &mac_str(&mac),
                    "dev",
                    &dev,
                    "dst",
                    &l.public_ip.to_string(),
                    "self",
                ])?;
                // Deleting the neighbour does not take the onlink route with it.
                self.ns.ip_batch(&[format!("route del {cidr} dev {dev}")])
            }
            _ => self.ns.ip_batch(&[format!("route del {cidr} via {}", l.public_ip)]),
        }
    }
}
