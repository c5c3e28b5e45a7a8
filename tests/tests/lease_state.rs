//! The peer maps are a function of the leases: with real agents on a real
//! etcd, whatever happens to the leases (added, changed in place, a
//! PublicIP moving or shared, removed in bulk, our own lease taken over,
//! the agent SIGKILLed while it writes), the pinned `SUBNETS` and `NODES`
//! maps end up holding exactly what the leases in etcd say, as
//! `overlay-agent inspect --json` shows them. The last test drives random
//! histories of all of these (`OVERLAY_MODEL_STEPS` steps, default 40;
//! `OVERLAY_MODEL_SEED` replays a printed seed).
//! Needs root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData};
use ipnet::Ipv4Net;
use overlay_common::maps::{NextHop, NodeEntry};
use overlay_tests::{
    agent::Agent,
    cluster::{put_host_2_behind_a_router, Cluster, PREFIX, VXLAN_CONFIG},
    control_plane::count_bpf_calls,
    flannel::{mac_str, VxlanLease},
    poll_until,
    traffic::wait_ping,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;

/// A /8 of /24s: room for hundreds of leases besides the agents'.
const WIDE_CONFIG: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
const SETTLE: Duration = Duration::from_secs(20);

/// What one agent's peer maps hold, or must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PeerMaps {
    /// subnet -> (PublicIP, VtepMAC), all in vxlan mode.
    subnets: BTreeMap<String, (String, String)>,
    /// PublicIP -> how many leases name it.
    senders: BTreeMap<String, u64>,
}

/// A lease as etcd holds it (whatever its value).
#[derive(Clone, Debug)]
struct EtcdLease {
    subnet: Ipv4Net,
    public_ip: Option<Ipv4Addr>,
    backend: Option<String>,
    vtep_mac: Option<String>,
}

fn etcd_leases(c: &Cluster) -> Result<Vec<EtcdLease>> {
    let dir = format!("{PREFIX}/subnets/");
    let mut out = Vec::new();
    for (key, value) in c.etcd.get_prefix(&dir)? {
        let name = key.strip_prefix(&dir).context("key under subnets/")?;
        let (ip, len) = name.split_once('-').with_context(|| format!("lease key {key}"))?;
        let subnet = Ipv4Net::new(ip.parse()?, len.parse()?)?;
        let v: Value = serde_json::from_str(&value).unwrap_or(Value::Null);
        out.push(EtcdLease {
            subnet,
            public_ip: v["PublicIP"].as_str().and_then(|s| s.parse().ok()),
            backend: v["BackendType"].as_str().map(str::to_string),
            vtep_mac: v["BackendData"]["VtepMAC"].as_str().map(str::to_lowercase),
        })
    }
    Ok(out)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// The reference, written for this test: what a node with PublicIP `own_ip`
/// and lease `own` must install for `leases`. Every other vxlan lease with
/// a VtepMAC that neither overlaps ours nor claims our PublicIP; and each
/// PublicIP those name, with how many name it.
fn model(leases: &[EtcdLease], own: Ipv4Net, own_ip: Ipv4Addr) -> PeerMaps {
    let mut want = PeerMaps::default();
    for l in leases {
        let (Some(ip), Some(mac)) = (l.public_ip, &l.vtep_mac) else { continue };
        if overlaps(l.subnet, own) || ip == own_ip || l.backend.as_deref() != Some("vxlan") {
            continue;
        }
        want.subnets.insert(l.subnet.to_string(), (ip.to_string(), mac.clone()));
        *want.senders.entry(ip.to_string()).or_default() += 1;
    }
    want
}

/// The agent's pinned maps through `overlay-agent inspect --json`, and the
/// subnet its CONFIG names.
fn observed(agent: &Agent) -> Result<(Ipv4Net, PeerMaps)> {
    let j = agent.inspect()?;
    let own: Ipv4Net = j["config"]["subnet"].as_str().context("config.subnet")?.parse()?;
    let mut got = PeerMaps::default();
    for s in j["subnets"].as_array().context("subnets")? {
        let f = |k: &str| s[k].as_str().map(str::to_string).with_context(|| format!("{k} in {s}"));
        ensure!(f("mode")? == "vxlan", "{s}");
        got.subnets.insert(f("subnet")?, (f("public_ip")?, f("vtep_mac")?));
    }
    for n in j["nodes"].as_array().context("nodes")? {
        let ip = n["public_ip"].as_str().context("public_ip")?.to_string();
        // An agent that does not count the leases per sender (an older
        // one, run with OVERLAY_AGENT_BIN): the subnets that name it.
        let leases = match n["leases"].as_u64() {
            Some(count) => count,
            None => got.subnets.values().filter(|(p, _)| *p == ip).count() as u64,
        };
        got.senders.insert(ip, leases);
    }
    Ok((own, got))
}

/// Waits until agent `i`'s maps equal [`model`] of the leases in etcd, with
/// its own lease the one its CONFIG names, which must be a lease etcd holds
/// under its PublicIP; fails naming the difference.
fn maps_follow_leases(c: &Cluster, i: usize, own_ip: Ipv4Addr) -> Result<PeerMaps> {
    poll_until(SETTLE, &format!("agent {i}'s maps to equal its leases"), || {
        let leases = etcd_leases(c)?;
        let ours: Vec<Ipv4Net> = leases.iter().filter(|l| l.public_ip == Some(own_ip)).map(|l| l.subnet).collect();
        let (own, got) = observed(&c.agents[i])?;
        ensure!(ours.contains(&own), "CONFIG names {own}, etcd holds {ours:?} under our PublicIP {own_ip}");
        let want = model(&leases, own, own_ip);
        let stale: Vec<&String> = got.senders.keys().filter(|ip| !want.senders.contains_key(*ip)).collect();
        ensure!(stale.is_empty(), "senders no lease names are still accepted: {stale:?}\nmaps {got:#?}\nleases {want:#?}");
        ensure!(got == want, "maps {got:#?}\nleases say {want:#?}");
        Ok(want)
    })
}

fn phantom(subnet: Ipv4Net, public_ip: Ipv4Addr, mac_tail: u8) -> VxlanLease {
    VxlanLease { subnet: subnet.network(), prefix_len: subnet.prefix_len(), public_ip, vtep_mac: [0x0e, 0, 0, 0, 0xaa, mac_tail] }
}

fn put(c: &Cluster, l: &VxlanLease) {
    c.etcd.put(&l.etcd_key(PREFIX), &l.etcd_value(1)).unwrap();
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn kill_and_restart(c: &mut Cluster, i: usize, between: impl FnOnce(&Cluster)) {
    let starts = c.agents[i].ready_count();
    c.agents[i].kill();
    between(c);
    let host = c.agent_hosts[i];
    let Cluster { agents, tb, .. } = c;
    agents[i].restart(tb.host(host)).unwrap();
    agents[i].wait_ready_n(starts + 1, Duration::from_secs(30)).unwrap();
}

/// issue #17: a lease whose PublicIP changes in place. The old address must
/// stop being an accepted VXLAN sender, and stay so across a restart (the
/// maps are pinned, so a restart must repair them too).
#[test]
fn a_changed_public_ip_is_no_longer_an_accepted_sender() {
    let mut c = Cluster::start_with(1, 0, 0, VXLAN_CONFIG);
    let own_ip = c.tb.host(0).ip();
    let s = net("10.42.200.0/24");
    let (a, b, d) = (Ipv4Addr::new(192, 168, 77, 201), Ipv4Addr::new(192, 168, 77, 202), Ipv4Addr::new(192, 168, 77, 203));
    put(&c, &phantom(s, a, 1));
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    assert_eq!(want.senders.get(&a.to_string()), Some(&1));

    put(&c, &phantom(s, b, 1));
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    assert!(!want.senders.contains_key(&a.to_string()) && want.senders.contains_key(&b.to_string()));

    // Changed while the agent is down: the restart repairs the pinned maps.
    kill_and_restart(&mut c, 0, |c| put(c, &phantom(s, d, 1)));
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    assert_eq!(want.senders.keys().cloned().collect::<Vec<_>>(), [d.to_string()]);
}

/// issue #17: two leases naming one PublicIP. Both subnets are installed
/// and the address is a sender for both; it stays one while any lease
/// names it. (That VXLAN from either subnet is accepted is checked on the
/// programs themselves in bpf_programs.rs.)
#[test]
fn leases_sharing_a_public_ip_are_all_installed() {
    let c = Cluster::start_with(1, 0, 0, VXLAN_CONFIG);
    let own_ip = c.tb.host(0).ip();
    let shared = Ipv4Addr::new(192, 168, 77, 210);
    let (s1, s2) = (net("10.42.201.0/24"), net("10.42.202.0/24"));
    put(&c, &phantom(s1, shared, 1));
    put(&c, &phantom(s2, shared, 2));
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    assert_eq!(want.senders.get(&shared.to_string()), Some(&2));
    let inspect = c.agents[0].inspect().unwrap();
    let node = inspect["nodes"].as_array().unwrap().iter().find(|n| n["public_ip"] == shared.to_string()).cloned();
    assert_eq!(
        node.map(|n| n["subnets"].clone()),
        Some(serde_json::json!([s1.to_string(), s2.to_string()])),
        "inspect names the subnets a sender may send from"
    );
    c.etcd.delete(&phantom(s1, shared, 1).etcd_key(PREFIX)).unwrap();
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    assert_eq!(want.senders.get(&shared.to_string()), Some(&1));
    c.etcd.delete(&phantom(s2, shared, 2).etcd_key(PREFIX)).unwrap();
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    assert!(want.senders.is_empty());
}

/// issue #17, with real traffic: a flannel kernel node holds two leases
/// under one PublicIP (a second subnet on its own bridge). Pods of both
/// subnets reach a pod behind our agent and get answers: VXLAN from that
/// address is accepted from each subnet its leases name. (With one subnet
/// per sender, whichever lease was written last wins and the other
/// subnet's packets are dropped as spoofed.)
#[test]
fn two_subnets_behind_one_public_ip_both_reach_our_pods() {
    let c = Cluster::start_with(1, 1, 0, VXLAN_CONFIG);
    let own_ip = c.tb.host(0).ip();
    let kernel = c.kernel_leases[0];
    let second = VxlanLease { subnet: Ipv4Addr::new(10, 42, 249, 0), ..kernel };
    put(&c, &second);
    let k = c.tb.host(1);
    let pod2 = k.add_pod("cni1", "10.42.249.2/24", second.gateway(), 1450).unwrap();
    // The reference flannel node on host 1 takes the second lease for a
    // peer's, as flanneld would (only its own subnet is skipped), and routes
    // it into flannel.1 over cni1's own route. Here host 1 stands for two
    // nodes behind one address, so the second subnet stays on cni1.
    overlay_tests::poll_until(Duration::from_secs(10), "the reference node routed 10.42.249.0/24", || {
        let r = k.run(&["ip", "route", "show", "10.42.249.0/24"])?;
        anyhow::ensure!(r.contains("flannel.1"), "{r}");
        Ok(())
    })
    .unwrap();
    k.run(&["ip", "route", "replace", "10.42.249.0/24", "dev", "cni1", "src", "10.42.249.1"]).unwrap();
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    assert_eq!(want.senders.get(&kernel.public_ip.to_string()), Some(&2));
    let ours = &c.pods[0][0];
    for pod in [&c.pods[1][0], &pod2] {
        wait_ping(pod.ns(), ours.ip());
    }
    let counters = c.counters(0);
    assert_eq!(counters["drop_spoofed_source"], 0, "{counters:?}");
}

/// issue #17: removing k of N leases must cost a few map syscalls per lease
/// (the main loop serves nothing else meanwhile: no events, no SIGTERM),
/// not a scan of the whole SUBNETS map per lease (O(k*N)). Counted with
/// strace on the running agent: every bpf(2) call while 250 of 500 leases
/// go. A scan per removal would make ~250 * 500 * 2 calls.
#[test]
fn removing_leases_costs_a_few_map_syscalls_each() {
    let c = Cluster::start_with(1, 0, 0, WIDE_CONFIG);
    let own_ip = c.tb.host(0).ip();
    let (n, k) = (500usize, 250usize);
    let leases: Vec<VxlanLease> = (0..n)
        .map(|j| {
            let subnet = Ipv4Net::new(Ipv4Addr::new(10, 200 + (j / 250) as u8, (j % 250) as u8, 0), 24).unwrap();
            phantom(subnet, Ipv4Addr::new(192, 168, 78, (j % 250) as u8 + 1), (j % 250) as u8)
        })
        .collect();
    put_all(&c, &leases).unwrap();
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    assert_eq!(want.subnets.len(), n);

    let pid = c.agents[0].pid().expect("agent running");
    let (calls, ()) = count_bpf_calls(pid, c.tb.dir(), || {
        c.etcd.etcdctl(&["del", "--prefix", &format!("{PREFIX}/subnets/10.201.")]).unwrap();
        let want = maps_follow_leases(&c, 0, own_ip).unwrap();
        assert_eq!(want.subnets.len(), n - k);
    })
    .unwrap();
    eprintln!("removing {k} of {n} leases: {calls} bpf calls");
    // Per lease: the SUBNETS delete and the NODES delete; plus the agent's
    // once-a-second endpoint sync and whatever runs while we wait.
    assert!(calls <= 8 * k as u64, "{calls} bpf calls to remove {k} of {n} leases: more than a few per lease");
}

/// Writes many leases at once (one etcd client, not an etcdctl per key).
fn put_all(c: &Cluster, leases: &[VxlanLease]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([c.etcd.endpoint()], None).await?;
        for l in leases {
            client.put(l.etcd_key(PREFIX), l.etcd_value(1), None).await?;
        }
        Ok(())
    })
}

/// issue #17: our lease is taken over (overwritten in etcd, as after it
/// expired during a partition and another node got the subnet). The agent
/// moves to another subnet, and the node that took our old one must be
/// installed like any peer, though its lease arrived while it still
/// overlapped ours. (flanneld exits when it loses its lease.)
#[test]
fn when_our_lease_is_taken_the_node_that_took_it_is_installed() {
    let c = Cluster::start_with(1, 0, 0, VXLAN_CONFIG);
    let own_ip = c.tb.host(0).ip();
    let old = c.subnet(0);
    let taker = phantom(old, Ipv4Addr::new(192, 168, 77, 220), 7);
    put(&c, &taker);
    let want = maps_follow_leases(&c, 0, own_ip).unwrap();
    // The maps follow the move before subnet.env is rewritten: wait for the file too.
    poll_until(SETTLE, "the agent to write its new subnet to subnet.env", || {
        ensure!(c.subnet(0) != old, "subnet.env still names {old}");
        Ok(())
    })
    .unwrap();
    assert_eq!(
        want.subnets.get(&old.to_string()),
        Some(&(taker.public_ip.to_string(), mac_str(&taker.vtep_mac))),
        "our old subnet now routes to the node that took it"
    );
}

/// issue #17: `--public-ip` behind a 1:1 NAT. Host 2 sits behind a router
/// that maps PublicIP 192.168.77.200 to its own address 192.168.88.10; its
/// agent runs with `--public-ip=192.168.77.200`. Peers send to and accept
/// from the PublicIP; the agent sends from and accepts at its interface's
/// address (as flannel.1's `local`). Pods on both sides reach each other.
#[test]
fn behind_a_nat_public_ip_pods_reach_each_other_both_ways() {
    let public = Ipv4Addr::new(192, 168, 77, 200);
    let c = Cluster::build(3, 0, 1, VXLAN_CONFIG)
        .prepare(|tb| {
            put_host_2_behind_a_router(tb, 1500);
            let router = tb.host(3);
            router.ip_batch(&[format!("addr add {public}/24 dev eth0")]).unwrap();
            for rule in [
                format!("-t nat -A PREROUTING -d {public} -j DNAT --to-destination 192.168.88.10"),
                format!("-t nat -A POSTROUTING -s 192.168.88.10 -j SNAT --to-source {public}"),
            ] {
                let argv: Vec<&str> = std::iter::once("iptables").chain(rule.split_whitespace()).collect();
                router.ns().run(&argv).unwrap();
            }
        })
        .agent_flags_for(2, &[&format!("--public-ip={public}")])
        .start();
    let leases = etcd_leases(&c).unwrap();
    assert!(leases.iter().any(|l| l.public_ip == Some(public)), "the lease carries the PublicIP: {leases:?}");
    let (near, far) = (&c.pods[0][0], &c.pods[2][0]);
    wait_ping(near.ns(), far.ip());
    wait_ping(far.ns(), near.ip());
    let inspect = c.agents[2].inspect().unwrap();
    assert_eq!(inspect["config"]["public_ip"], public.to_string());
    assert_eq!(inspect["config"]["local_ip"], "192.168.88.10", "inspect shows the tunnel address");
    for i in [0, 2] {
        let counters = c.counters(i);
        let drops: u64 = counters.iter().filter(|(r, _)| r.starts_with("drop_")).map(|(_, n)| n).sum();
        assert_eq!(drops, 0, "agent {i} dropped: {counters:?}");
    }
}

/// Partial states a SIGKILL between two map writes leaves (or an agent of
/// another version): written straight into the pinned maps while the agent
/// is down.
#[derive(Clone, Copy, Debug)]
enum Torn {
    /// A sender no lease names.
    StraySender,
    /// A subnet whose sender entry is missing.
    MissingSender,
    /// A subnet no lease has.
    StraySubnet,
    /// A sender with the wrong count.
    WrongCount,
}

fn tear(agent: &Agent, torn: Torn, rng: &mut StdRng) -> Result<()> {
    let pins = agent.pins();
    let open = |name: &str| -> Result<Map> { Ok(Map::from_map_data(MapData::from_pin(pins.map(name))?)?) };
    let mut nodes: BpfHashMap<MapData, [u8; 4], NodeEntry> = BpfHashMap::try_from(open("NODES")?)?;
    let mut subnets: LpmTrie<MapData, [u8; 4], NextHop> = LpmTrie::try_from(open("SUBNETS")?)?;
    let keys: Vec<[u8; 4]> = nodes.keys().collect::<Result<_, _>>()?;
    match torn {
        Torn::StraySender => nodes.insert([192, 168, 79, rng.random_range(1..250)], NodeEntry { leases: 1 }, 0)?,
        Torn::MissingSender | Torn::WrongCount if keys.is_empty() => {}
        Torn::MissingSender => nodes.remove(&keys[rng.random_range(0..keys.len())])?,
        Torn::WrongCount => nodes.insert(keys[rng.random_range(0..keys.len())], NodeEntry { leases: 9 }, 0)?,
        Torn::StraySubnet => {
            let hop = NextHop { public_ip: [192, 168, 79, 1], vtep_mac: [0x0e, 0, 0, 0, 0xbb, 1], mode: 1, _pad: 0 };
            subnets.insert(&aya::maps::lpm_trie::Key::new(24, [10, 42, rng.random_range(150..160), 0]), hop, 0)?;
        }
    }
    Ok(())
}

/// The model-based test: random histories of lease adds, changes (VtepMAC,
/// PublicIP, to a PublicIP another lease has), removals (one, or a burst),
/// invalid leases (our PublicIP, another backend, no VtepMAC), our own
/// lease taken over, and SIGKILLs (right after a burst of changes, and
/// with the pinned maps torn as a kill between two writes leaves them),
/// against a real etcd and the real agent. After every step the maps must
/// equal what the leases say. The seed is printed; `OVERLAY_MODEL_SEED`
/// replays one, `OVERLAY_MODEL_STEPS` runs longer (default 40).
#[test]
fn maps_follow_random_lease_histories() {
    let steps: usize = std::env::var("OVERLAY_MODEL_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let seed: u64 = std::env::var("OVERLAY_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from_str_radix(&overlay_tests::random_hex(8), 16).unwrap());
    eprintln!("model test: {steps} steps, seed {seed} (OVERLAY_MODEL_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Cluster::start_with(1, 0, 0, VXLAN_CONFIG);
    let own_ip = c.tb.host(0).ip();
    // A small pool of addresses, so leases often share one.
    let ips: Vec<Ipv4Addr> = (0..5).map(|j| Ipv4Addr::new(192, 168, 77, 230 + j)).collect();
    // Subnets the test adds come from 10.42.100-249.0/24; when those run
    // out (a long run), an add takes one back first.
    let free_subnet = |c: &Cluster, rng: &mut StdRng| -> Ipv4Net {
        let leases = etcd_leases(c).unwrap();
        let taken: BTreeSet<Ipv4Net> = leases.iter().map(|l| l.subnet).collect();
        let free: Vec<Ipv4Net> = (100..250)
            .map(|o| Ipv4Net::new(Ipv4Addr::new(10, 42, o, 0), 24).unwrap())
            .filter(|s| !taken.contains(s))
            .collect();
        if let Some(s) = free.get(rng.random_range(0..free.len().max(1))) {
            return *s;
        }
        let s = leases
            .iter()
            .filter(|l| l.public_ip != Some(own_ip))
            .map(|l| l.subnet)
            .find(|s| s.network().octets()[2] >= 100)
            .expect("a test lease");
        c.etcd.delete(&format!("{PREFIX}/subnets/{}-{}", s.network(), s.prefix_len())).unwrap();
        s
    };
    let key = |s: Ipv4Net| format!("{PREFIX}/subnets/{}-{}", s.network(), s.prefix_len());
    let others = |c: &Cluster| -> Vec<Ipv4Net> {
        etcd_leases(c).unwrap().into_iter().filter(|l| l.public_ip != Some(own_ip)).map(|l| l.subnet).collect()
    };
    let random_lease = |rng: &mut StdRng, subnet: Ipv4Net| phantom(subnet, ips[rng.random_range(0..ips.len())], rng.random());
    let mut log = Vec::new();
    for step in 0..steps {
        let existing = others(&c);
        let pick = |rng: &mut StdRng| existing.get(rng.random_range(0..existing.len().max(1))).copied();
        let action = rng.random_range(0..100);
        let what = match action {
            0..=29 => {
                let s = free_subnet(&c, &mut rng);
                put(&c, &random_lease(&mut rng, s));
                format!("add {s}")
            }
            30..=49 => match pick(&mut rng) {
                Some(s) => {
                    let l = random_lease(&mut rng, s);
                    put(&c, &l);
                    format!("change {s} to {} {}", l.public_ip, mac_str(&l.vtep_mac))
                }
                None => "nothing to change".into(),
            },
            50..=64 => match pick(&mut rng) {
                Some(s) => {
                    c.etcd.delete(&key(s)).unwrap();
                    format!("remove {s}")
                }
                None => "nothing to remove".into(),
            },
            65..=71 => {
                let s = free_subnet(&c, &mut rng);
                let value = match rng.random_range(0..3) {
                    0 => phantom(s, own_ip, 1).etcd_value(1),
                    1 => format!(r#"{{"PublicIP":"{}","BackendType":"host-gw"}}"#, ips[0]),
                    _ => format!(r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1}}}}"#, ips[1]),
                };
                c.etcd.put(&key(s), &value).unwrap();
                format!("invalid lease {s}: {value}")
            }
            72..=79 => {
                let old = c.subnet(0);
                let l = random_lease(&mut rng, old);
                put(&c, &l);
                format!("our lease {old} taken by {}", l.public_ip)
            }
            80..=89 => {
                // A burst, then a SIGKILL while the agent may still be writing.
                let mut done = Vec::new();
                for _ in 0..rng.random_range(2..6) {
                    let s = free_subnet(&c, &mut rng);
                    put(&c, &random_lease(&mut rng, s));
                    done.push(s.to_string());
                }
                if let Some(s) = pick(&mut rng) {
                    c.etcd.delete(&key(s)).unwrap();
                    done.push(format!("-{s}"));
                }
                kill_and_restart(&mut c, 0, |_| {});
                format!("burst {done:?}, SIGKILL, restart")
            }
            _ => {
                let torn = [Torn::StraySender, Torn::MissingSender, Torn::StraySubnet, Torn::WrongCount]
                    [rng.random_range(0..4)];
                let mut changed = None;
                kill_and_restart(&mut c, 0, |c| {
                    tear(&c.agents[0], torn, &mut rng).unwrap();
                    if let Some(s) = pick(&mut rng) {
                        let l = random_lease(&mut rng, s);
                        put(c, &l);
                        changed = Some(format!("{s} to {}", l.public_ip));
                    }
                });
                format!("SIGKILL, maps torn ({torn:?}), changed while down: {changed:?}, restart")
            }
        };
        log.push(format!("step {step}: {what}"));
        if let Err(e) = maps_follow_leases(&c, 0, own_ip) {
            panic!("seed {seed}, after:\n{}\n{e:#}", log.join("\n"));
        }
    }
    eprintln!("seed {seed}: {steps} steps, maps followed the leases after each:\n{}", log.join("\n"));
}
