//! The real CNI plugins (Debian's containernetworking-plugins in
//! /usr/lib/cni), invoked exactly as a container runtime invokes them, with
//! the configuration flannel's CNI plugin hands them.
//!
//! flannel's own CNI plugin (not packaged) is a small meta plugin: on every
//! ADD it reads subnet.env and delegates to `bridge` with host-local IPAM;
//! on DEL it delegates the configuration it saved at ADD. [`CniNode`] does
//! the same: it reads the node's subnet.env with the agent's own reader
//! ([`overlay_agent::subnet_env::SubnetEnv`]), builds
//! [`flannel_delegate_conf`], and runs
//!
//! ```text
//!   CNI_COMMAND=ADD|DEL CNI_CONTAINERID=<id> CNI_NETNS=/var/run/netns/<pod> CNI_IFNAME=eth0
//!   CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge < conf.json
//! ```
//!
//! inside the node's network namespace (plus `loopback` for the pod's `lo`,
//! as runtimes do). A pod with host ports gets `portmap` chained after
//! `bridge` with `runtimeConfig.portMappings`, as a runtime does under
//! kube-flannel.yml's conflist ([`CniNode::add_pod_with_ports`]).
//! host-local keeps its allocations in a `dataDir` of the node's own, so
//! nodes and parallel tests never share one.
//!
//! Pods are namespaces named `<node>c<hex>`: under the testbed's prefix, so
//! a killed test's leftovers are removed by [`crate::cleanup_stale`].
//! Dropping the [`CniNode`] runs DEL for the pods still there and deletes
//! their namespaces and its directory.
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use overlay_agent::subnet_env::SubnetEnv;
use serde_json::{json, Value};

use crate::docker::output_timeout;
use crate::netns::Netns;
use crate::util::{self, make_owned_dir, FileLock};

/// Where Debian's containernetworking-plugins puts the plugins (CNI_PATH).
pub const CNI_PATH: &str = "/usr/lib/cni";
/// The network name flannel's stock configuration uses (kube-flannel.yml's
/// `"name": "cbr0"`); host-local files its allocations under it.
pub const NETWORK_NAME: &str = "cbr0";
/// The CNI version of kube-flannel.yml's configuration.
pub const CNI_VERSION: &str = "0.3.1";
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The delegate configuration flannel's CNI plugin derives from subnet.env
/// (with kube-flannel.yml's `hairpinMode` and `isDefaultGateway`):
/// bridge `cni0`, MTU `FLANNEL_MTU`, `ipMasq` = not `FLANNEL_IPMASQ`,
/// host-local over the lease (`FLANNEL_SUBNET` as a network: host-local
/// rejects host bits) with a route to `FLANNEL_NETWORK`. `data_dir` is
/// host-local's `dataDir`.
///
/// With IPv6 (flannel-io/cni-plugin's getDelegateIPAM): one range set per
/// family, the IPv4 lease first, then the IPv6 lease (`FLANNEL_IPV6_SUBNET`
/// as a network), and a route to `FLANNEL_IPV6_NETWORK` after the IPv4
/// one; an IPv6-only node's file gives the IPv6 range and route alone.
pub fn flannel_delegate_conf(env: &SubnetEnv, data_dir: &Path) -> Value {
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    if env.has_ipv4() {
        ranges.push(json!([{ "subnet": env.lease_subnet().to_string() }]));
        routes.push(json!({ "dst": env.network.to_string() }));
    }
    if let Some(sn) = env.ipv6_lease_subnet() {
        ranges.push(json!([{ "subnet": sn.to_string() }]));
    }
    if let Some(net) = env.ipv6_network {
        routes.push(json!({ "dst": net.to_string() }));
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "bridge",
        "bridge": "cni0",
        "mtu": env.mtu,
        "ipMasq": !env.ipmasq,
        "isGateway": true,
        "isDefaultGateway": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            "dataDir": data_dir,
        },
    })
}

/// One entry of `runtimeConfig.portMappings`: what a runtime passes for a
/// pod's `hostPort` (kubelet for `ports[].hostPort`, like `docker run -p`).
#[derive(Clone, Copy, Debug)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp" or "udp".
    pub protocol: &'static str,
}

/// The `portmap` plugin's configuration as a runtime hands it over in
/// kube-flannel.yml's chain (`{"type":"portmap","capabilities":
/// {"portMappings":true}}`): the runtime adds `runtimeConfig.portMappings`
/// because the capability is declared, and the previous plugin's result as
/// `prevResult`.
pub fn portmap_conf(mappings: &[PortMapping], prev_result: &Value) -> Value {
    let mappings: Vec<Value> = mappings
        .iter()
        .map(|m| json!({ "hostPort": m.host_port, "containerPort": m.container_port, "protocol": m.protocol }))
        .collect();
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "portmap",
        "capabilities": { "portMappings": true },
        "runtimeConfig": { "portMappings": mappings },
        "prevResult": prev_result,
    })
}

/// A pod made through CNI: its namespace, the container id the runtime
/// passed, and what the plugin returned.
#[derive(Clone, Debug)]
pub struct CniPod {
    /// The pod namespace's `ip netns` name.
    pub name: String,
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// The IPv6 address, its prefix length and gateway, when the
    /// configuration had an IPv6 range (dual stack).
    pub ip6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
    /// The bridge plugin's JSON result.
    pub result: Value,
    /// The delegate configuration used at ADD (flannel reuses it at DEL).
    pub conf: Value,
    /// Plugins chained after `bridge` at ADD (kube-flannel's conflist:
    /// `portmap`), with the configuration each got; DEL runs them first,
    /// last one first.
    pub chained: Vec<(String, Value)>,
}

impl CniPod {
    /// `/var/run/netns/<name>` (CNI_NETNS).
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// A command running `program` in the pod's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program).stdin(Stdio::null());
        cmd
    }

    /// Runs `argv` in the pod; a non-zero exit is an error. Returns stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty argv"))?;
        let out = output_timeout(self.command(program).args(args), None, Duration::from_secs(60))?;
        if !out.status.success() {
            bail!(
                "{argv:?} in pod {} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One ping from the pod, answered within 2 s.
    pub fn ping(&self, dst: Ipv4Addr) -> Result<()> {
        self.run(&["ping", "-c", "1", "-W", "2", "-q", &dst.to_string()]).map(drop)
    }

    /// One IPv6 ping from the pod, answered within 2 s.
    pub fn ping6(&self, dst: Ipv6Addr) -> Result<()> {
        self.run(&["ping", "-6", "-c", "1", "-W", "2", "-q", &dst.to_string()]).map(drop)
    }

    /// The pod's IPv6 address (a dual-stack pod's); an error for a pod
    /// without one.
    pub fn ipv6(&self) -> Result<Ipv6Addr> {
        self.ip6.map(|(ip, _, _)| ip).ok_or_else(|| anyhow!("pod {} has no IPv6 address: {}", self.name, self.result))
    }
}

/// The CNI side of one node: its namespace, subnet.env, host-local dataDir,
/// and the pods added through it.
pub struct CniNode {
    ns: Netns,
    subnet_env: PathBuf,
    dir: PathBuf,
    pods: Vec<CniPod>,
}

impl CniNode {
    /// The node in namespace `node` whose agent writes `subnet_env`. Nothing
    /// is read yet: like flannel's plugin, every ADD reads the file anew.
    pub fn new(node: &Netns, subnet_env: &Path) -> Result<CniNode> {
        for plugin in ["bridge", "host-local", "loopback", "portmap"] {
            let p = Path::new(CNI_PATH).join(plugin);
            if !p.exists() {
                bail!("CNI plugin {} is missing: run `cargo xtask setup` (Debian package containernetworking-plugins)", p.display());
            }
        }
        let (_, dir) = make_owned_dir("cni")?;
        Ok(CniNode { ns: node.clone(), subnet_env: subnet_env.to_path_buf(), dir, pods: Vec::new() })
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// host-local's `dataDir` for this node.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("host-local")
    }

    /// The subnet file as the plugin reads it now.
    pub fn read_subnet_env(&self) -> Result<SubnetEnv> {
        SubnetEnv::read(&self.subnet_env).with_context(|| format!("flannel's CNI plugin reads {}", self.subnet_env.display()))
    }

    /// The delegate configuration an ADD would use now.
    pub fn conf(&self) -> Result<Value> {
        Ok(flannel_delegate_conf(&self.read_subnet_env()?, &self.data_dir()))
    }

    /// The pods added and not deleted yet.
    pub fn pods(&self) -> &[CniPod] {
        &self.pods
    }

    /// Runs `<CNI_PATH>/<plugin>` in the node namespace as a runtime does:
    /// CNI_* in the environment, `conf` on stdin. Returns the parsed
    /// stdout (Null when empty, as after DEL). A failure quotes the
    /// plugin's error object.
    pub fn invoke(&self, plugin: &str, command: &str, container_id: &str, netns: &Path, ifname: &str, conf: &Value) -> Result<Value> {
        let program = Path::new(CNI_PATH).join(plugin);
        let mut cmd = self.ns.command(&program.to_string_lossy());
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", CNI_PATH);
        let input = serde_json::to_vec(conf)?;
        let out = output_timeout(&mut cmd, Some(&input), PLUGIN_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "CNI {plugin} {command} (container {container_id}, netns {}) failed ({}): {}{}\nconfig: {}",
                netns.display(),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim(),
                conf
            );
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).with_context(|| format!("CNI {plugin} {command} printed {stdout:?}"))
    }

    /// A new pod: a namespace, then `loopback` ADD (lo) and flannel's
    /// delegate `bridge` ADD (eth0), as flannel's plugin under a runtime.
    pub fn add_pod(&mut self) -> Result<CniPod> {
        let conf = self.conf()?;
        let name = self.new_pod_netns()?;
        let container_id = format!("{}{}", util::random_hex(16), util::random_hex(16));
        let netns = Path::new("/var/run/netns").join(&name);
        // Registered before ADD so that Drop cleans up a failed one too.
        self.pods.push(CniPod {
            name: name.clone(),
            container_id: container_id.clone(),
            ip: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Ipv4Addr::UNSPECIFIED,
            ip6: None,
            result: Value::Null,
            conf: conf.clone(),
            chained: Vec::new(),
        });
        let lo = json!({ "cniVersion": CNI_VERSION, "name": "lo", "type": "loopback" });
        self.invoke("loopback", "ADD", &container_id, &netns, "lo", &lo)?;
        let result = self.invoke("bridge", "ADD", &container_id, &netns, "eth0", &conf)?;
        let (v4, v6) = parse_ips(&result)?;
        let pod = self.pods.last_mut().expect("pushed");
        if v4.is_none() && v6.is_none() {
            bail!("bridge ADD result has no address: {result}");
        }
        // (An IPv6-only node's pod keeps the unspecified IPv4 address.)
        if let Some((ip, len, gw)) = v4 {
            (pod.ip, pod.prefix_len, pod.gateway) = (ip, len, gw);
        }
        pod.ip6 = v6;
        pod.result = result;
        Ok(pod.clone())
    }

    /// [`CniNode::add_pod`], then `portmap` ADD chained after it with
    /// `mappings` (a pod with `hostPort`s under kube-flannel's conflist).
    pub fn add_pod_with_ports(&mut self, mappings: &[PortMapping]) -> Result<CniPod> {
        let pod = self.add_pod()?;
        let conf = portmap_conf(mappings, &pod.result);
        // Registered before ADD so that DEL (and Drop) undo a partial one.
        self.pods.last_mut().expect("just added").chained.push(("portmap".into(), conf.clone()));
        self.invoke("portmap", "ADD", &pod.container_id, &pod.path(), "eth0", &conf)?;
        Ok(self.pods.last().expect("just added").clone())
    }

    /// DEL as flannel's plugin does it: the delegate configuration saved at
    /// ADD to `bridge` (host-local releases the address, the veth goes),
    /// then `loopback`; the runtime then removes the namespace.
    pub fn del_pod(&mut self, pod: &CniPod) -> Result<()> {
        let netns = pod.path();
        // The chain in reverse: portmap's rules go before the address.
        let chained = self.pods.iter().find(|p| p.name == pod.name).map(|p| p.chained.clone()).unwrap_or_default();
        for (plugin, conf) in chained.iter().rev() {
            self.invoke(plugin, "DEL", &pod.container_id, &netns, "eth0", conf)?;
        }
        self.invoke("bridge", "DEL", &pod.container_id, &netns, "eth0", &pod.conf)?;
        let lo = json!({ "cniVersion": CNI_VERSION, "name": "lo", "type": "loopback" });
        self.invoke("loopback", "DEL", &pod.container_id, &netns, "lo", &lo)?;
        remove_netns(&pod.name);
        self.pods.retain(|p| p.name != pod.name);
        Ok(())
    }

    /// host-local's allocations: (address, container id) from its files
    /// `<dataDir>/cbr0/<address>`.
    pub fn allocated(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        self.allocated_of()
    }

    /// host-local's IPv6 allocations (a dual-stack configuration's second
    /// range), as [`CniNode::allocated`].
    pub fn allocated_v6(&self) -> Result<Vec<(Ipv6Addr, String)>> {
        self.allocated_of()
    }

    fn allocated_of<T: std::str::FromStr + Ord>(&self) -> Result<Vec<(T, String)>> {
        let dir = self.data_dir().join(NETWORK_NAME);
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(vec![]) };
        let mut out = Vec::new();
        for e in entries.flatten() {
            // (Besides the addresses: `lock`, `last_reserved_ip.<range>`.)
            let Some(ip) = e.file_name().to_str().and_then(|n| n.parse::<T>().ok()) else { continue };
            let text = fs::read_to_string(e.path())?;
            out.push((ip, text.lines().next().unwrap_or("").trim().to_string()));
        }
        out.sort();
        Ok(out)
    }

    fn new_pod_netns(&self) -> Result<String> {
        let _guard = FileLock::acquire("overlay-tests-netns.lock")?;
        for _ in 0..100 {
            let name = format!("{}c{}", self.ns.name(), util::random_hex(2));
            if util::list_netns().contains(&name) {
                continue;
            }
            let out = Command::new("ip").args(["netns", "add", &name]).stdin(Stdio::null()).output()?;
            if !out.status.success() {
                bail!("ip netns add {name} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            return Ok(name);
        }
        bail!("no free pod namespace name under {}", self.ns.name())
    }
}

/// A bridge result's first IPv4 and first IPv6 entry of `ips`: (address,
/// prefix length, gateway) each.
type Ips = (Option<(Ipv4Addr, u8, Ipv4Addr)>, Option<(Ipv6Addr, u8, Ipv6Addr)>);

fn parse_ips(result: &Value) -> Result<Ips> {
    let ips = result.get("ips").and_then(|ips| ips.as_array()).ok_or_else(|| anyhow!("bridge ADD result has no ips: {result}"))?;
    let (mut v4, mut v6) = (None, None);
    for entry in ips {
        let address = entry.get("address").and_then(|a| a.as_str()).ok_or_else(|| anyhow!("no address in {result}"))?;
        let (ip, len) = address.split_once('/').ok_or_else(|| anyhow!("address {address:?} has no prefix"))?;
        let gateway = entry.get("gateway").and_then(|g| g.as_str()).ok_or_else(|| anyhow!("no gateway in {result}"))?;
        let len: u8 = len.parse().with_context(|| format!("prefix of {address:?}"))?;
        match ip.parse::<IpAddr>().with_context(|| format!("address {address:?}"))? {
            IpAddr::V4(ip) if v4.is_none() => v4 = Some((ip, len, gateway.parse()?)),
            IpAddr::V6(ip) if v6.is_none() => v6 = Some((ip, len, gateway.parse()?)),
            _ => {}
        }
    }
    Ok((v4, v6))
}

fn remove_netns(name: &str) {
    let names = [name.to_string()];
    util::kill_processes_in_netns(&names);
    util::delete_netns(name);
}

impl Drop for CniNode {
    fn drop(&mut self) {
        for pod in std::mem::take(&mut self.pods) {
            let netns = pod.path();
            for (plugin, conf) in pod.chained.iter().rev() {
                if let Err(e) = self.invoke(plugin, "DEL", &pod.container_id, &netns, "eth0", conf) {
                    eprintln!("CNI cleanup: {e:#}");
                }
            }
            if let Err(e) = self.invoke("bridge", "DEL", &pod.container_id, &netns, "eth0", &pod.conf) {
                eprintln!("CNI cleanup: {e:#}");
            }
            remove_netns(&pod.name);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
