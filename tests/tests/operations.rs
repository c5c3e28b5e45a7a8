//! What an operator sees of a running node: `overlay-agent inspect` (text
//! and JSON, while the agent runs and after it stopped), `bpftool` on the
//! pinned maps and on the attached programs, the /healthz /readyz /metrics
//! server, systemd's readiness notification, and the log line per lease
//! change. Runs the real binary in network namespaces against a real etcd.
//! Needs root.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use overlay_agent::datapath::DatapathMaps;
use overlay_tests::{
    agent::{agent_binary, Agent, AgentOptions},
    cluster::*,
    etcd::Etcd,
    flannel::VxlanLease,
    forward::PortForward,
    netns::{ensure_bpffs, ChildHandle, Netns, Testbed},
    poll_until,
    traffic::*,
};
use serde_json::Value;

const HEALTHZ_PORT: u16 = 10266;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn inspect_raw(pin_root: &Path, json: bool) -> Output {
    let mut cmd = Command::new(agent_binary());
    cmd.arg("inspect");
    if json {
        cmd.arg("--json");
    }
    cmd.arg(format!("--bpf-pin-dir={}", pin_root.display())).stdin(Stdio::null());
    cmd.output().expect("running overlay-agent inspect")
}

fn inspect_text(pin_root: &Path) -> String {
    let out = inspect_raw(pin_root, false);
    assert!(out.status.success(), "inspect failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn inspect_json(pin_root: &Path) -> Value {
    let out = inspect_raw(pin_root, true);
    assert!(out.status.success(), "inspect --json failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("inspect --json is not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The rows of a section of `inspect`'s text output: the lines after the
/// line starting with `title`, up to the next blank line.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(title));
    assert!(lines.next().is_some(), "no section {title:?} in:\n{text}");
    lines.take_while(|l| !l.trim().is_empty()).collect()
}

/// What inspect --json says, minus what changes while traffic flows (the
/// counters, and the send path's cache with its ages).
fn without_counters(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("counters");
    v.as_object_mut().unwrap().remove("underlay");
    v
}

/// A minimal HTTP/1.1 response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `GET path` (or another method) on 127.0.0.1:port inside `ns`, by hand.
fn http(ns: &Netns, port: u16, method: &str, path: &str) -> std::io::Result<Response> {
    let raw = ns.in_ns(|| -> std::io::Result<Vec<u8>> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: overlay-tests\r\nAccept: */*\r\n\r\n")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })?;
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status: u16 = parts.next().unwrap().parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header line {l:?}"));
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "Content-Length of {path}");
    }
    Ok(Response { status, headers, body: body.to_string() })
}

fn get(ns: &Netns, port: u16, path: &str) -> Response {
    http(ns, port, "GET", path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// One metric family of a Prometheus text exposition.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    /// `name{labels}` → value
    samples: BTreeMap<String, f64>,
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses and checks a Prometheus text exposition (format 0.0.4): every
/// sample belongs to a family declared with HELP and TYPE before it, a
/// family's lines are contiguous, names and labels are well formed, values
/// are numbers, no series appears twice, counters end in `_total`.
fn parse_metrics(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "the exposition must end with a newline");
    let switch = |name: &str, current: &mut Option<String>, closed: &mut BTreeSet<String>| {
        if current.as_deref() != Some(name) {
            assert!(!closed.contains(name), "metric family {name} is split into several groups:\n{text}");
            if let Some(prev) = current.take() {
                closed.insert(prev);
            }
            *current = Some(name.to_string());
        }
    };
    for line in text.lines() {
        assert!(!line.trim().is_empty(), "empty line in the exposition:\n{text}");
        if let Some(rest) = line.strip_prefix("# ") {
            let (kw, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            match kw {
                "HELP" | "TYPE" => {
                    assert!(valid_metric_name(name), "bad metric name in {line:?}");
                    switch(name, &mut current, &mut closed);
                    let f = families.entry(name.to_string()).or_default();
                    if kw == "HELP" {
                        assert!(f.help.is_none(), "second HELP for {name}");
                        assert!(!value.is_empty(), "empty HELP for {name}");
                        f.help = Some(value.to_string());
                    } else {
                        assert!(f.kind.is_none(), "second TYPE for {name}");
                        assert!(f.samples.is_empty(), "TYPE of {name} after its samples");
                        assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&value), "bad TYPE {line:?}");
                        f.kind = Some(value.to_string());
                    }
                }
                _ => {} // a comment
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?} is not a number"));
        let name = series.split('{').next().unwrap();
        assert!(valid_metric_name(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap_or_else(|| panic!("bad labels in {line:?}"));
            for pair in inner.split(',') {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                assert!(valid_metric_name(k) && !k.contains(':'), "bad label name {k:?} in {line:?}");
                assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'), "unquoted label value in {line:?}");
            }
        }
        assert!(families.contains_key(name), "sample {line:?} before its HELP/TYPE:\n{text}");
        switch(name, &mut current, &mut closed);
        let f = families.get_mut(name).unwrap();
        assert!(f.help.is_some() && f.kind.is_some(), "{name} lacks HELP or TYPE");
        assert!(f.samples.insert(series.to_string(), value).is_none(), "series {series} twice");
    }
    for (name, f) in &families {
        assert!(!f.samples.is_empty(), "family {name} has no samples");
        if f.kind.as_deref() == Some("counter") {
            assert!(name.ends_with("_total"), "counter {name} should end in _total");
        }
    }
    families
}

fn sample(families: &BTreeMap<String, Family>, series: &str) -> f64 {
    let name = series.split('{').next().unwrap();
    *families
        .get(name)
        .and_then(|f| f.samples.get(series))
        .unwrap_or_else(|| panic!("no sample {series} in {families:#?}"))
}

fn metrics(ns: &Netns, port: u16) -> BTreeMap<String, Family> {
    let r = get(ns, port, "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.headers.get("content-type").is_some_and(|c| c.starts_with("text/plain") && c.contains("version=0.0.4")), "{r:?}");
    parse_metrics(&r.body)
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn fake_lease(third_octet: u8, public_ip: Ipv4Addr, last_mac_byte: u8) -> VxlanLease {
    VxlanLease {
        subnet: Ipv4Addr::new(10, 42, third_octet, 0),
        prefix_len: 24,
        public_ip,
        vtep_mac: [0x0e, 0, 0, 0, third_octet, last_mac_byte],
    }
}

// ---------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------

#[test]
fn inspect_shows_the_data_path_while_running_and_after_sigterm() {
    let mut c = Cluster::start_with(2, 1, 0, VXLAN_CONFIG);
    let (a, b, k) = (c.pods[0][0].clone(), c.pods[1][0].clone(), c.pods[2][0].clone());
    wait_ping(&a, b.ip());
    wait_ping(&a, k.ip());
    poll_until(Duration::from_secs(10), "agent 0 knows both peers", || {
        anyhow::ensure!(c.peers(0).len() == 2, "{:?}", c.peers(0));
        Ok(())
    })
    .unwrap();
    let pin_root = c.agents[0].pin_root.clone();
    let maps = c.maps(0);
    let cfg = maps.config().unwrap().expect("configured");
    let own = c.subnet(0);
    let peer_b = (c.subnet(1), c.tb.host(1).ip(), c.vtep_mac(1));
    let kl = c.kernel_leases[0];
    let peer_k = (format!("{}/{}", kl.subnet, kl.prefix_len).parse().unwrap(), kl.public_ip, kl.vtep_mac);

    // Text: every part an operator looks for, with the values the kernel holds.
    let text = inspect_text(&pin_root);
    assert!(text.starts_with(&format!("pinned state: {}\n", c.agents[0].pin_dir().display())), "{text}");
    let node = section(&text, "node").join("\n");
    for want in [
        format!("public IP      {}", c.tb.host(0).ip()),
        "network        10.42.0.0/16".to_string(),
        format!("our subnet     {own}"),
        "VNI / port     1 / 8472".to_string(),
        format!("VtepMAC        {}", mac(&cfg.vtep_mac)),
    ] {
        assert!(node.contains(&want), "node section lacks {want:?}:\n{text}");
    }
    let subnets = section(&text, "remote subnets (2)");
    assert!(subnets[0].contains("SUBNET") && subnets[0].contains("NEXT HOP") && subnets[0].contains("MODE"), "{text}");
    for (subnet, ip, vtep) in [peer_b, peer_k] {
        let row = subnets
            .iter()
            .find(|l| l.split_whitespace().next() == Some(&subnet.to_string()))
            .unwrap_or_else(|| panic!("no row for {subnet}:\n{text}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, [subnet.to_string().as_str(), &ip.to_string(), "vxlan", &mac(&vtep)], "{text}");
    }
    let senders = section(&text, "known senders (2)");
    for ip in [c.tb.host(1).ip(), kl.public_ip] {
        assert!(senders.iter().any(|l| l.trim_start().starts_with(&ip.to_string())), "{ip} not a known sender:\n{text}");
    }
    // The send path caches the underlay MACs towards a peer it sends to (the
    // first packets went out while the kernel resolved the neighbour).
    a.ns().ping(b.ip()).unwrap();
    let underlay_want = (
        c.tb.host(1).ip().to_string(),
        mac(&c.tb.host(1).ns().mac("eth0").unwrap()),
        mac(&c.tb.host(0).ns().mac("eth0").unwrap()),
    );
    let text = inspect_text(&pin_root);
    let underlay = section(&text, "underlay next hops cached by the send path");
    let row = underlay
        .iter()
        .find(|l| l.split_whitespace().next() == Some(underlay_want.0.as_str()))
        .unwrap_or_else(|| panic!("no underlay row for {}:\n{text}", underlay_want.0));
    assert!(row.contains(&format!("to {} from {}", underlay_want.1, underlay_want.2)), "{row}\n{text}");

    // Pod veths get their own attachment within a second of appearing.
    let text = poll_until(Duration::from_secs(10), "the pod veth's attachment", || {
        let text = inspect_text(&pin_root);
        // Both of the veth's programs (attached one after the other).
        anyhow::ensure!(text.contains(&format!("from_pods@{}", a.host_veth())), "{text}");
        anyhow::ensure!(text.contains(&format!("to_pods@{}", a.host_veth())), "{text}");
        Ok(text)
    })
    .unwrap();
    let programs = section(&text, "attached programs");
    for pin in [
        "from_uplink@eth0",
        "from_pods@cni0",
        "from_host@overlay0",
        "from_tunnel@overlay0",
        &format!("from_pods@{}", a.host_veth()),
        &format!("to_pods@{}", a.host_veth()),
    ] {
        let row = programs.iter().find(|l| l.split_whitespace().next() == Some(pin)).unwrap_or_else(|| panic!("{pin} not listed:\n{text}"));
        assert!(row.contains("link ") && row.contains("prog "), "{pin} not attached: {row}\n{text}");
    }
    let counters = section(&text, "packet counters");
    let encap_row = counters.iter().find(|l| l.trim_start().starts_with("encapsulated ")).expect("encapsulated row");
    let encap_packets: u64 = encap_row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(encap_packets > 0, "{text}");

    // JSON: the same, matching the maps entry for entry.
    let j = inspect_json(&pin_root);
    assert_eq!(j["installed"], true);
    assert_eq!(j["config"]["public_ip"], c.tb.host(0).ip().to_string());
    assert_eq!(j["config"]["subnet"], own.to_string());
    assert_eq!(j["config"]["network"], "10.42.0.0/16");
    assert_eq!(j["config"]["vtep_mac"], mac(&cfg.vtep_mac));
    assert_eq!(j["config"]["vni"], 1);
    let from_json: BTreeSet<(String, String, String, String, String)> = j["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let f = |k: &str| s[k].as_str().unwrap_or_else(|| panic!("{k} in {s}")).to_string();
            (f("subnet"), f("next_hop"), f("public_ip"), f("mode"), f("vtep_mac"))
        })
        .collect();
    let from_maps: BTreeSet<_> = maps
        .peers()
        .unwrap()
        .iter()
        .map(|p| {
            let mode = p.mode.to_string();
            (p.subnet.to_string(), p.public_ip.to_string(), p.public_ip.to_string(), mode, mac(&p.vtep_mac))
        })
        .collect();
    assert_eq!(from_json, from_maps);
    let nodes_json: BTreeSet<(String, u64, String)> = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["public_ip"].as_str().unwrap().into(), n["leases"].as_u64().unwrap(), n["subnets"].to_string()))
        .collect();
    let peers = maps.peers().unwrap();
    let nodes_maps: BTreeSet<(String, u64, String)> = maps
        .nodes()
        .unwrap()
        .iter()
        .map(|n| {
            let subnets: Vec<String> =
                peers.iter().filter(|p| p.public_ip == n.public_ip).map(|p| p.subnet.to_string()).collect();
            (n.public_ip.to_string(), n.leases as u64, serde_json::to_string(&subnets).unwrap())
        })
        .collect();
    assert_eq!(nodes_json, nodes_maps);
    assert_eq!(nodes_json.len(), 2);
    assert!(j["counters"]["encapsulated"]["packets"].as_u64().unwrap() >= encap_packets);
    let underlay_json = j["underlay"].as_array().unwrap();
    assert!(
        underlay_json.iter().any(|u| (u["public_ip"].as_str(), u["dst_mac"].as_str(), u["src_mac"].as_str())
            == (Some(underlay_want.0.as_str()), Some(underlay_want.1.as_str()), Some(underlay_want.2.as_str()))
            && u["age_ms"].is_u64()),
        "{underlay_json:?}"
    );
    assert!(j["programs"].as_array().unwrap().iter().all(|p| p["link_id"].is_u64() && p["program_id"].is_u64()), "{}", j["programs"]);

    // SIGTERM: the agent exits cleanly and leaves the data path in place.
    let status = c.agents[0].stop().expect("agent exited");
    assert!(status.success(), "agent exit status after SIGTERM: {status}");
    let after = inspect_json(&pin_root);
    assert_eq!(without_counters(after), without_counters(j.clone()), "inspect changed when the agent stopped");
    let text_after = inspect_text(&pin_root);
    assert_eq!(section(&text_after, "remote subnets (2)"), subnets);
    // ... and it still forwards: pods keep talking while no agent runs.
    wait_ping(&b, a.ip());
    wait_ping(&a, k.ip());
    let j2 = inspect_json(&pin_root);
    assert!(j2["counters"]["encapsulated"]["packets"].as_u64().unwrap() > j["counters"]["encapsulated"]["packets"].as_u64().unwrap());
}

#[test]
fn inspect_shows_direct_routes_in_host_gw_mode() {
    let c = Cluster::start_with(2, 0, 0, r#"{"Network":"10.42.0.0/16","Backend":{"Type":"host-gw"}}"#);
    wait_ping(&c.pods[0][0], c.pods[1][0].ip());
    let text = inspect_text(&c.agents[0].pin_root);
    let rows = section(&text, "remote subnets (1)");
    let cols: Vec<&str> = rows[1].split_whitespace().collect();
    // host-gw leases carry no VtepMAC: shown as "-".
    assert_eq!(cols, [c.subnet(1).to_string().as_str(), &c.tb.host(1).ip().to_string(), "direct", "-"], "{text}");
    let j = inspect_json(&c.agents[0].pin_root);
    assert_eq!(j["subnets"][0]["mode"], "direct");
    assert_eq!(j["subnets"][0]["next_hop"], c.tb.host(1).ip().to_string());
}

#[test]
fn inspect_without_pins_says_nothing_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("never-ran");
    let out = inspect_raw(&root, false);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let pins = root.join(format!("v{}", overlay_common::PIN_VERSION));
    assert_eq!(
        text,
        format!(
            "nothing installed: {} does not exist.\n\
             The agent has never run with --bpf-pin-dir={}, or `overlay-agent cleanup` removed its state.\n",
            pins.display(),
            root.display()
        )
    );
    let j: Value = serde_json::from_slice(&inspect_raw(&root, true).stdout).unwrap();
    assert_eq!(j, serde_json::json!({"pin_dir": pins.display().to_string(), "installed": false}));

    // A pin folder of another layout version is named, so the operator
    // knows which agent left it.
    std::fs::create_dir_all(root.join("v0")).unwrap();
    let text = String::from_utf8(inspect_raw(&root, false).stdout).unwrap();
    assert!(text.contains("nothing installed") && text.contains("v0"), "{text}");

    // The versioned folder exists but holds no maps (a half-removed state).
    std::fs::create_dir_all(&pins).unwrap();
    let out = inspect_raw(&root, false);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("nothing installed: {} holds no maps", pins.display())), "{text}");
}

// ---------------------------------------------------------------------------
// bpftool
// ---------------------------------------------------------------------------

#[test]
fn bpftool_shows_named_map_fields_and_our_tcx_programs() {
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    wait_ping(&c.pods[0][0], c.pods[1][0].ip());
    let pins = c.agents[0].pin_dir();
    let dump = |map: &str| -> String {
        let out = Command::new("bpftool").args(["map", "dump", "pinned"]).arg(pins.join(map)).output().expect("bpftool (cargo xtask setup installs it)");
        assert!(out.status.success(), "bpftool map dump {map}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let subnets = dump("SUBNETS");
    for field in ["\"public_ip\"", "\"vtep_mac\"", "\"mode\"", "\"key\"", "\"value\""] {
        assert!(subnets.contains(field), "SUBNETS dump lacks {field}:\n{subnets}");
    }
    let nodes = dump("NODES");
    assert!(nodes.contains("\"leases\""), "NODES dump lacks \"leases\":\n{nodes}");
    let config = dump("CONFIG");
    for field in ["\"local_ip\"", "\"public_ip\"", "\"cluster_net\"", "\"local_subnet\"", "\"vni\"", "\"vtep_mac\"", "\"uplink_mtu\""] {
        assert!(config.contains(field), "CONFIG dump lacks {field}:\n{config}");
    }

    // The attached programs. bpftool learnt about TCX links in 7.3: older
    // ones (Debian 12 ships 7.1) list nothing under `net show` and print
    // TCX links as "type 11", so there the ids `inspect` reports are
    // checked against `bpftool link/prog show` instead.
    let veth = c.pods[0][0].host_veth().to_string();
    let expected = [
        ("eth0", "tcx/ingress", "from_uplink"),
        ("cni0", "tcx/ingress", "from_pods"),
        ("overlay0", "tcx/egress", "from_host"),
        ("overlay0", "tcx/ingress", "from_tunnel"),
        (veth.as_str(), "tcx/ingress", "from_pods"),
        (veth.as_str(), "tcx/egress", "to_pods"),
    ];
    let version = Command::new("bpftool").arg("version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let (major, minor) = bpftool_version(&version).unwrap_or_else(|| panic!("bpftool version: {version}"));
    let net = c.tb.host(0).run(&["bpftool", "net", "show"]).unwrap();
    if (major, minor) >= (7, 3) {
        for (dev, hook, prog) in expected {
            assert!(
                net.lines().any(|l| l.starts_with(&format!("{dev}(")) && l.contains(hook) && l.contains(prog)),
                "bpftool net show lacks {dev} {hook} {prog}:\n{net}"
            );
        }
    } else {
        eprintln!("bpftool {major}.{minor} predates TCX: checking the links by id instead of `bpftool net show`");
        let pin_root = c.agents[0].pin_root.clone();
        let j = poll_until(Duration::from_secs(10), "the pod veth's attachment", || {
            let j = inspect_json(&pin_root);
            anyhow::ensure!(j["programs"].as_array().unwrap().len() == expected.len(), "{}", j["programs"]);
            Ok(j)
        })
        .unwrap();
        for (dev, _, prog) in expected {
            let pin = format!("{prog}@{dev}");
            let p = j["programs"].as_array().unwrap().iter().find(|p| p["pin"] == pin.as_str()).unwrap_or_else(|| panic!("{pin} not in {}", j["programs"]));
            let (link_id, prog_id) = (p["link_id"].as_u64().unwrap(), p["program_id"].as_u64().unwrap());
            let link: Value = serde_json::from_str(&c.tb.host(0).run(&["bpftool", "-j", "link", "show", "id", &link_id.to_string()]).unwrap()).unwrap();
            // BPF_LINK_TYPE_TCX = 11
            assert!(link["type"] == 11 || link["type"] == "tcx", "{pin}: {link}");
            assert_eq!(link["prog_id"].as_u64(), Some(prog_id), "{pin}: {link}");
            let shown: Value = serde_json::from_str(&c.tb.host(0).run(&["bpftool", "-j", "prog", "show", "id", &prog_id.to_string()]).unwrap()).unwrap();
            assert_eq!(shown["name"], prog, "{pin}: {shown}");
            assert_eq!(shown["type"], "sched_cls", "{pin}: {shown}");
        }
    }
}

/// (major, minor) of `bpftool version`'s first line: "bpftool v7.1.0".
fn bpftool_version(out: &str) -> Option<(u32, u32)> {
    let v = out.lines().next()?.split_whitespace().nth(1)?.trim_start_matches('v');
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

// ---------------------------------------------------------------------------
// /healthz /readyz /metrics
// ---------------------------------------------------------------------------

#[test]
fn health_endpoints_and_metrics() {
    let i = 2;
    let healthz = ["--healthz-ip=127.0.0.1", &format!("--healthz-port={HEALTHZ_PORT}")];
    let c = Cluster::build(3, 0, 0, VXLAN_CONFIG).agent_flags_for(i, &healthz).start();
    let host = c.tb.host(i);
    let pod = &c.pods[i][0];

    let r = get(host, HEALTHZ_PORT, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    let r = get(host, HEALTHZ_PORT, "/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"), "{r:?}");
    assert_eq!(get(host, HEALTHZ_PORT, "/readyz?verbose").status, 200);
    assert_eq!(get(host, HEALTHZ_PORT, "/nothing-here").status, 404);
    assert_eq!(http(host, HEALTHZ_PORT, "POST", "/healthz").unwrap().status, 405);
    // Only on the address asked for: nothing listens on the uplink's address.
    let uplink = SocketAddr::from((host.ip(), HEALTHZ_PORT));
    assert!(host.in_ns(|| TcpStream::connect_timeout(&uplink, Duration::from_secs(1))).is_err());

    // The watch reports "connected" once its first list is in.
    let m = poll_until(Duration::from_secs(10), "etcd connected and 2 leases known", || {
        let m = metrics(host, HEALTHZ_PORT);
        anyhow::ensure!(sample(&m, "overlay_etcd_connected") == 1.0 && sample(&m, "overlay_leases_known") == 2.0);
        Ok(m)
    })
    .unwrap();
    assert_eq!(sample(&m, "overlay_leases_known") as usize, c.peers(i).len());
    assert_eq!(sample(&m, "overlay_ready"), 1.0);
    let expiry = sample(&m, "overlay_lease_expiry_timestamp_seconds");
    let now = now_secs();
    // A fresh flannel lease lives 24 h.
    assert!(expiry > now + 23.0 * 3600.0 && expiry < now + 24.0 * 3600.0 + 60.0, "expiry {expiry}, now {now}");
    let last_sync = sample(&m, "overlay_etcd_last_sync_timestamp_seconds");
    assert!(last_sync <= now + 1.0 && last_sync > now - 120.0, "last sync {last_sync}, now {now}");
    for reason in ["encapsulated", "decap_to_pod", "drop_unknown_sender"] {
        sample(&m, &format!("overlay_packets_total{{reason=\"{reason}\"}}"));
        sample(&m, &format!("overlay_bytes_total{{reason=\"{reason}\"}}"));
    }
    assert_eq!(m["overlay_packets_total"].kind.as_deref(), Some("counter"));
    assert_eq!(m["overlay_leases_known"].kind.as_deref(), Some("gauge"));
    let before = sample(&m, "overlay_packets_total{reason=\"encapsulated\"}");

    // Traffic shows in the counters.
    wait_ping(pod, c.pods[0][0].ip());
    pod.run(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &c.pods[1][0].ip().to_string()]).unwrap();
    let m = metrics(host, HEALTHZ_PORT);
    let after = sample(&m, "overlay_packets_total{reason=\"encapsulated\"}");
    assert!(after >= before + 4.0, "encapsulated went from {before} to {after}");
    let counters = {
        let maps = DatapathMaps::open_pinned(&c.agents[i].pins()).unwrap();
        maps.stats().unwrap().get(overlay_common::stats::Reason::Encapsulated).packets
    };
    assert!(counters as f64 >= after, "metrics ({after}) ahead of the map ({counters})");

    // A lease appearing and going away moves overlay_leases_known.
    let extra = fake_lease(200, Ipv4Addr::new(192, 168, 77, 200), 1);
    c.etcd.put(&extra.etcd_key(PREFIX), &extra.etcd_value(1)).unwrap();
    poll_until(Duration::from_secs(10), "3 leases known", || {
        anyhow::ensure!(sample(&metrics(host, HEALTHZ_PORT), "overlay_leases_known") == 3.0);
        Ok(())
    })
    .unwrap();
    c.etcd.delete(&extra.etcd_key(PREFIX)).unwrap();
    poll_until(Duration::from_secs(10), "2 leases known", || {
        anyhow::ensure!(sample(&metrics(host, HEALTHZ_PORT), "overlay_leases_known") == 2.0);
        Ok(())
    })
    .unwrap();
    let m = metrics(host, HEALTHZ_PORT);
    assert!(sample(&m, "overlay_etcd_watch_events_total") >= 2.0);
}

/// While etcd cannot be reached the agent is not ready; it becomes ready,
/// with its subnet file written, once etcd answers.
#[test]
fn readyz_is_not_ready_until_etcd_answers() {
    ensure_bpffs().unwrap();
    let tb = Testbed::new(1).unwrap();
    let mut etcd = Etcd::start().unwrap();
    etcd.put(&format!("{PREFIX}/config"), VXLAN_CONFIG).unwrap();
    let endpoint = etcd.endpoint();
    etcd.stop();
    let agent = Agent::start_forwarded(
        tb.host(0),
        AgentOptions {
            etcd_endpoints: &endpoint,
            prefix: PREFIX,
            dir: tb.dir(),
            extra: vec!["--healthz-ip=127.0.0.1".into(), format!("--healthz-port={HEALTHZ_PORT}")],
        },
    )
    .unwrap();
    let host = tb.host(0);
    agent.wait_log("retrying", Duration::from_secs(20)).unwrap();
    let mut answers = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match http(host, HEALTHZ_PORT, "GET", "/readyz") {
            Ok(r) => {
                assert_ne!(r.status, 200, "ready while etcd is down");
                answers.insert(r.status.to_string());
            }
            Err(e) => {
                answers.insert(format!("{:?}", e.kind()));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!agent.subnet_file.exists());
    // The health server starts before etcd is reached: a plain "not ready".
    assert_eq!(answers, BTreeSet::from(["503".to_string()]), "/readyz while etcd is down");
    let live = http(host, HEALTHZ_PORT, "GET", "/healthz").unwrap();
    assert_eq!(live.status, 200, "/healthz while etcd is down");

    etcd.restart().unwrap();
    let r = poll_until(Duration::from_secs(30), "/readyz 200", || {
        let r = http(host, HEALTHZ_PORT, "GET", "/readyz")?;
        anyhow::ensure!(r.status == 200, "{r:?}");
        Ok(r)
    })
    .unwrap();
    assert_eq!(r.body, "ready\n");
    assert!(agent.subnet_file.exists(), "ready before the subnet file was written");
    drop(agent);
}

// ---------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------

/// The agent binary started by hand (for environment the harness does not
/// pass); killed and its pins removed on drop.
struct RawAgent {
    child: ChildHandle,
    pin_root: PathBuf,
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        self.child.kill();
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

#[test]
fn sd_notify_ready_comes_after_the_subnet_file() {
    ensure_bpffs().unwrap();
    let tb = Testbed::new(1).unwrap();
    let etcd = Etcd::start().unwrap();
    etcd.put(&format!("{PREFIX}/config"), VXLAN_CONFIG).unwrap();
    let target: SocketAddr = etcd.endpoint().trim_start_matches("http://").parse().unwrap();
    let fwd = PortForward::into_ns(tb.host(0), target).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let sock_path = scratch.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let subnet_file = scratch.path().join("subnet.env");
    let log = scratch.path().join("agent.log");
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/{}-notify", tb.host(0).name()));
    let mut cmd = tb.host(0).command(agent_binary().to_str().unwrap());
    cmd.args([
        format!("--etcd-endpoints={}", fwd.url()),
        format!("--etcd-prefix={PREFIX}"),
        "--iface=eth0".to_string(),
        format!("--subnet-file={}", subnet_file.display()),
        format!("--bpf-pin-dir={}", pin_root.display()),
    ])
    .env("NOTIFY_SOCKET", &sock_path)
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
    let agent = RawAgent { child: tb.host(0).spawn(cmd).unwrap(), pin_root };

    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no notification ({e}); log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    // Checked right when the datagram is in: the file must already be there.
    let env = std::fs::read_to_string(&subnet_file).expect("subnet file exists when READY=1 arrives");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(env.contains("FLANNEL_SUBNET=10.42.") && env.contains("FLANNEL_MTU=1450"), "{env}");
    assert!(agent.child.is_running());
    // Exactly one notification per start.
    sock.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    assert!(sock.recv(&mut buf).is_err(), "a second notification: {:?}", String::from_utf8_lossy(&buf));
    drop(agent);
    drop(fwd);
}

// ---------------------------------------------------------------------------
// logs
// ---------------------------------------------------------------------------

fn count_lines(agent: &Agent, needle: &str) -> usize {
    agent.log_text().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn one_info_line_per_lease_change() {
    let c = Cluster::start_with(2, 0, 0, VXLAN_CONFIG);
    let peer = c.subnet(1);
    c.agents[0].wait_log(&format!("peer added: {peer} via {}", c.tb.host(1).ip()), Duration::from_secs(10)).unwrap();

    let lease = fake_lease(201, Ipv4Addr::new(192, 168, 77, 201), 1);
    let subnet = format!("{}/24", lease.subnet);
    c.etcd.put(&lease.etcd_key(PREFIX), &lease.etcd_value(1)).unwrap();
    for a in &c.agents {
        let line = a.wait_log(&format!("peer added: {subnet}"), Duration::from_secs(10)).unwrap();
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("via 192.168.77.201") && line.contains("vxlan") && line.contains(&mac(&lease.vtep_mac)), "{line}");
    }
    let moved = VxlanLease { vtep_mac: [0x0e, 0, 0, 0, 201, 2], ..lease };
    c.etcd.put(&moved.etcd_key(PREFIX), &moved.etcd_value(1)).unwrap();
    for a in &c.agents {
        let line = a.wait_log(&format!("peer changed: {subnet}"), Duration::from_secs(10)).unwrap();
        assert!(line.contains(" INFO ") && line.contains(&mac(&moved.vtep_mac)), "{line}");
    }
    // The same value again is no change.
    c.etcd.put(&moved.etcd_key(PREFIX), &moved.etcd_value(1)).unwrap();
    c.etcd.delete(&lease.etcd_key(PREFIX)).unwrap();
    for a in &c.agents {
        let line = a.wait_log(&format!("peer removed: {subnet}"), Duration::from_secs(10)).unwrap();
        assert!(line.contains(" INFO ") && line.contains("was via 192.168.77.201"), "{line}");
    }
    // Resyncs (every 5 s) repeat none of it.
    std::thread::sleep(Duration::from_secs(6));
    for a in &c.agents {
        assert_eq!(count_lines(a, &format!("peer added: {subnet}")), 1, "{}", a.log_text());
        assert_eq!(count_lines(a, &format!("peer changed: {subnet}")), 1, "{}", a.log_text());
        assert_eq!(count_lines(a, &format!("peer removed: {subnet}")), 1, "{}", a.log_text());
    }
    assert_eq!(count_lines(&c.agents[0], &format!("peer added: {peer}")), 1);
    assert_eq!(count_lines(&c.agents[0], "peer removed:"), 1);
}

