//! Tests of the harness itself: if these fail, every other integration test
//! is suspect. They need root, etcd/etcdctl, iproute2, ping and openssl.

use overlay_tests::etcd::{Etcd, EtcdCluster, EtcdOptions};
use overlay_tests::netns::{ensure_bpffs, Testbed};
use overlay_tests::poll_until;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Running (a zombie counts as dead: killed grandchildren are reparented to
/// init, which may take a moment to reap them).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `pid` has entered `ns` (nsenter needs a moment to switch).
fn wait_in_netns(pid: u32, ns: &overlay_tests::netns::Netns) -> anyhow::Result<()> {
    let want = format!("net:[{}]", std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(ns.path())?));
    poll_until(Duration::from_secs(5), "the process to enter the namespace", || {
        let link = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
        anyhow::ensure!(link.to_string_lossy() == want, "{pid} is in {}", link.display());
        Ok(())
    })
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

/// Interface names seen by the calling thread's network namespace.
fn interface_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    unsafe {
        let list = libc::if_nameindex();
        assert!(!list.is_null(), "if_nameindex failed");
        let mut p = list;
        while (*p).if_index != 0 {
            names.insert(std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned());
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn etcd_put_get_restart_keeps_data() -> anyhow::Result<()> {
    let mut etcd = Etcd::start()?;
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"), "{}", etcd.endpoint());
    assert!(etcd.tls_files().is_none());

    etcd.put("/coreos.com/network/config", r#"{"Network":"10.42.0.0/16"}"#)?;
    etcd.put("/coreos.com/network/subnets/10.42.1.0-24", "-starts with a dash\nand two lines")?;
    etcd.put("/coreos.com/network/subnets/10.42.2.0-24", "")?;
    assert_eq!(etcd.get("/coreos.com/network/config")?.as_deref(), Some(r#"{"Network":"10.42.0.0/16"}"#));
    assert_eq!(etcd.get("/nope")?, None);
    let subnets = etcd.get_prefix("/coreos.com/network/subnets/")?;
    assert_eq!(
        subnets,
        vec![
            ("/coreos.com/network/subnets/10.42.1.0-24".to_string(), "-starts with a dash\nand two lines".to_string()),
            ("/coreos.com/network/subnets/10.42.2.0-24".to_string(), String::new()),
        ]
    );
    etcd.delete("/coreos.com/network/subnets/10.42.2.0-24")?;
    assert_eq!(etcd.get_prefix("/coreos.com/network/subnets/")?.len(), 1);
    etcd.compact_to_latest()?;
    etcd.compact_to_latest()?; // again at the same revision: still fine

    let endpoint = etcd.endpoint();
    let first_pid = etcd.pid().expect("running");
    etcd.stop();
    assert_eq!(etcd.pid(), None);
    assert!(!pid_alive(first_pid));
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse()?;
    assert!(std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(), "a stopped etcd must not listen");
    assert!(etcd.data_dir().exists(), "stop keeps the data dir");

    etcd.restart()?;
    assert_eq!(etcd.endpoint(), endpoint, "restart keeps the ports");
    assert_eq!(etcd.get("/coreos.com/network/config")?.as_deref(), Some(r#"{"Network":"10.42.0.0/16"}"#));

    etcd.kill();
    etcd.restart()?;
    assert_eq!(etcd.get_prefix("/coreos.com/network/subnets/")?.len(), 1, "data survives SIGKILL");
    // restart() on a running server stops it first.
    let pid = etcd.pid();
    etcd.restart()?;
    assert_ne!(etcd.pid(), pid);
    let health = etcd.etcdctl(&["endpoint", "health"]);
    assert!(health.is_ok(), "{health:?}");
    Ok(())
}

#[test]
fn etcd_drop_kills_server_and_removes_data() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let pid = etcd.pid().expect("running");
    let dir = etcd.dir().to_path_buf();
    assert!(dir.exists() && pid_alive(pid));
    drop(etcd);
    assert!(!pid_alive(pid), "etcd {pid} still alive after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    Ok(())
}

#[test]
fn everything_is_cleaned_up_when_a_test_panics() {
    #[derive(Default)]
    struct Seen {
        pids: Vec<u32>,
        namespaces: Vec<String>,
        dirs: Vec<PathBuf>,
    }
    let seen = std::sync::Mutex::new(Seen::default());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let etcd = Etcd::start().unwrap();
        let tb = Testbed::new(2).unwrap();
        tb.host(0).add_bridge("cni0", Some("10.42.1.1/24"), 1450).unwrap();
        let pod = tb.host(0).add_pod("cni0", "10.42.1.2/24", Ipv4Addr::new(10, 42, 1, 1), 1450).unwrap();
        let sleeper = tb.host(1).spawn_argv(&["sleep", "600"]).unwrap();
        {
            let mut s = seen.lock().unwrap();
            s.pids.push(etcd.pid().unwrap());
            s.pids.push(sleeper.pid());
            s.dirs.push(etcd.dir().to_path_buf());
            s.dirs.push(tb.dir().to_path_buf());
            s.namespaces.push(tb.underlay().name().to_string());
            s.namespaces.extend(tb.hosts().iter().map(|h| h.name().to_string()));
            s.namespaces.push(pod.name().to_string());
        }
        panic!("deliberate panic to test cleanup");
    }));
    assert!(result.is_err());
    let seen = seen.into_inner().unwrap();
    assert_eq!((seen.pids.len(), seen.namespaces.len(), seen.dirs.len()), (2, 4, 2));
    for pid in &seen.pids {
        assert!(!pid_alive(*pid), "process {pid} survived the panic");
    }
    for ns in &seen.namespaces {
        assert!(!netns_exists(ns), "namespace {ns} survived the panic");
    }
    for dir in &seen.dirs {
        assert!(!dir.exists(), "{} survived the panic", dir.display());
    }
}

#[test]
fn etcd_cluster_survives_losing_one_member() -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start(3)?;
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints.iter().collect::<BTreeSet<_>>().len(), 3, "distinct endpoints");
    cluster.etcdctl(&["put", "/k", "before"])?;
    let members = cluster.etcdctl(&["member", "list"])?;
    assert_eq!(members.lines().count(), 3, "{members}");

    let pid = cluster.member_pid(0).expect("running");
    cluster.stop_member(0);
    assert!(!pid_alive(pid));
    // If member 0 was the leader, the others need an election first.
    poll_until(Duration::from_secs(15), "a write with one member down", || cluster.etcdctl(&["put", "/k", "after"]))?;
    assert_eq!(cluster.etcdctl(&["get", "/k", "--print-value-only"])?.trim(), "after");

    cluster.start_member(0)?;
    // The restarted member catches up from its peers.
    let ctl0 = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints[0]))
            .args(args)
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    poll_until(Duration::from_secs(10), "member 0 to catch up", || {
        let v = ctl0(&["get", "/k", "--print-value-only"])?;
        anyhow::ensure!(v.trim() == "after", "member 0 has {v:?}");
        Ok(())
    })?;
    Ok(())
}

#[test]
fn etcd_tls_with_client_cert_auth() -> anyhow::Result<()> {
    let etcd = Etcd::start_with(EtcdOptions { tls: true, client_cert_auth: true })?;
    assert!(etcd.endpoint().starts_with("https://127.0.0.1:"), "{}", etcd.endpoint());
    let tls = etcd.tls_files().expect("TLS files");
    for f in [&tls.ca, &tls.cert, &tls.key] {
        assert!(f.exists(), "{}", f.display());
    }
    etcd.put("/coreos.com/network/config", "tls")?;
    assert_eq!(etcd.get("/coreos.com/network/config")?.as_deref(), Some("tls"));

    // (A refused TLS handshake is retried until the command timeout: keep it short.)
    let quick = ["--dial-timeout=1s", "--command-timeout=1s"];
    let err = etcd.etcdctl_anonymous(&[&quick[..], &["get", "/coreos.com/network/config"]].concat()).unwrap_err();
    assert!(format!("{err:#}").contains("etcdctl"), "{err:#}");
    // Plain http against the TLS port fails too.
    let plain = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint().replace("https://", "http://")))
        .args(["--dial-timeout=1s", "--command-timeout=1s", "get", "/coreos.com/network/config"])
        .output()?;
    assert!(!plain.status.success());
    Ok(())
}

#[test]
fn etcd_tls_without_client_auth_accepts_anonymous_clients() -> anyhow::Result<()> {
    let etcd = Etcd::start_with(EtcdOptions { tls: true, client_cert_auth: false })?;
    assert!(etcd.endpoint().starts_with("https://"));
    etcd.put("/a", "b")?;
    assert!(etcd.etcdctl_anonymous(&["get", "/a", "--print-value-only"])?.contains('b'));
    Ok(())
}

#[test]
fn etcd_auth_refuses_without_credentials() -> anyhow::Result<()> {
    let mut etcd = Etcd::start()?;
    etcd.put("/coreos.com/network/config", "before auth")?;
    etcd.enable_auth("flannel", "s3cret")?;
    assert_eq!(etcd.credentials(), Some(("flannel", "s3cret")));
    assert_eq!(etcd.get("/coreos.com/network/config")?.as_deref(), Some("before auth"));
    etcd.put("/coreos.com/network/subnets/10.42.1.0-24", "x")?;
    assert!(etcd.put("outside-the-prefix", "x").is_err(), "the role only covers keys under /");

    let err = etcd.etcdctl_anonymous(&["get", "/coreos.com/network/config"]).unwrap_err();
    assert!(format!("{err:#}").contains("user name is empty") || format!("{err:#}").contains("permission denied"), "{err:#}");
    assert!(etcd.flannel_args().contains(&"--etcd-username=flannel".to_string()));

    etcd.compact_to_latest()?;
    etcd.restart()?;
    assert_eq!(etcd.get("/coreos.com/network/subnets/10.42.1.0-24")?.as_deref(), Some("x"));
    assert!(etcd.etcdctl_anonymous(&["get", "/coreos.com/network/config"]).is_err());
    Ok(())
}

#[test]
fn two_testbeds_have_different_names() -> anyhow::Result<()> {
    let a = Testbed::new(1)?;
    let b = Testbed::new(1)?;
    assert_ne!(a.id(), b.id());
    assert_ne!(a.host(0).name(), b.host(0).name());
    assert_ne!(a.underlay().name(), b.underlay().name());
    for tb in [&a, &b] {
        assert!(tb.host(0).name().contains(tb.id()));
        assert!(tb.underlay().name().contains(tb.id()));
        assert!(netns_exists(tb.host(0).name()));
        assert_eq!(tb.host(0).path(), Path::new("/var/run/netns").join(tb.host(0).name()));
    }
    // Same addresses in both, isolated from each other.
    assert_eq!(a.host(0).ip(), b.host(0).ip());
    Ok(())
}

#[test]
fn hosts_ping_each_other_over_the_underlay() -> anyhow::Result<()> {
    let mut tb = Testbed::new(2)?;
    assert_eq!(tb.host(0).ip(), Ipv4Addr::new(192, 168, 77, 10));
    assert_eq!(tb.host(1).ip(), Ipv4Addr::new(192, 168, 77, 11));
    assert_eq!(tb.host(0).uplink(), "eth0");
    assert_eq!(tb.underlay_bridge(), "br0");
    tb.host(0).ping(tb.host(1).ip())?;
    tb.host(1).ping(tb.host(0).ip())?;

    let stranger = tb.add_host()?.ip();
    assert_eq!(stranger, Ipv4Addr::new(192, 168, 77, 12));
    tb.host(2).ping(tb.host(0).ip())?;
    tb.host(0).ping(stranger)?;

    assert_eq!(tb.host(0).run(&["cat", "/proc/sys/net/ipv4/ip_forward"])?.trim(), "1");
    assert_eq!(tb.underlay().run(&["cat", "/proc/sys/net/ipv4/ip_forward"])?.trim(), "0");
    tb.host(1).ip_batch(&["link add flannel.1 type bridge".to_string()])?;
    tb.host(1).set_sysctl("net/ipv4/conf/flannel.1/rp_filter", "2")?;
    tb.host(1).set_sysctl("net.ipv4.conf.eth0.rp_filter", "2")?;
    assert_eq!(tb.host(1).run(&["cat", "/proc/sys/net/ipv4/conf/flannel.1/rp_filter"])?.trim(), "2");
    assert_eq!(tb.host(1).run(&["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"])?.trim(), "2");
    assert_eq!(tb.host(0).run(&["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"])?.trim(), "0", "per namespace");
    // (Not /sys/class/net: under nsenter /sys still shows the root namespace.)
    assert!(tb.host(0).run(&["ip", "-o", "link", "show", "eth0"])?.contains("mtu 1500"));
    Ok(())
}

#[test]
fn a_cable_joins_two_hosts_directly_and_is_cleaned_up() -> anyhow::Result<()> {
    let names;
    {
        let mut tb = Testbed::cable()?;
        names = [tb.host(0).ns().name().to_string(), tb.host(1).ns().name().to_string()];
        assert_eq!(tb.host(1).ip(), Ipv4Addr::new(192, 168, 77, 11));
        tb.host(0).ping(tb.host(1).ip())?;
        tb.host(1).ping(tb.host(0).ip())?;
        // One veth pair: each eth0's peer is the other host's eth0.
        for i in 0..2 {
            let link = tb.host(i).run(&["ip", "-o", "-d", "link", "show", "eth0"])?;
            assert!(link.contains("veth") && link.contains("mtu 1500"), "{link}");
        }
        assert!(tb.add_host().is_err(), "a cable has two ends");
    }
    let out = std::process::Command::new("ip").args(["netns", "list"]).output()?;
    let left = String::from_utf8_lossy(&out.stdout);
    for name in names {
        assert!(!left.lines().any(|l| l.split_whitespace().next() == Some(name.as_str())), "{name} left behind");
    }
    Ok(())
}

#[test]
fn custom_underlay() -> anyhow::Result<()> {
    let tb = Testbed::with_underlay(2, "192.168.78.0/24", 9000)?;
    assert_eq!(tb.host(1).ip(), Ipv4Addr::new(192, 168, 78, 11));
    assert!(tb.host(1).run(&["ip", "-o", "link", "show", "eth0"])?.contains("mtu 9000"));
    assert!(tb.underlay().run(&["ip", "-o", "link", "show", "br0"])?.contains("mtu 9000"));
    tb.host(1).ping(tb.host(0).ip())?;
    assert!(Testbed::with_underlay(1, "not-a-cidr", 1500).is_err());
    Ok(())
}

#[test]
fn pods_reach_their_bridge_and_each_other() -> anyhow::Result<()> {
    let tb = Testbed::new(1)?;
    let host = tb.host(0);
    host.add_bridge("cni0", Some("10.42.1.1/24"), 1450)?;
    let gw = Ipv4Addr::new(10, 42, 1, 1);
    let p1 = host.add_pod("cni0", "10.42.1.2/24", gw, 1450)?;
    let p2 = host.add_pod("cni0", "10.42.1.3/24", gw, 1450)?;
    assert_eq!(host.pods().len(), 2);
    assert_ne!(p1.name(), p2.name());
    assert_ne!(p1.host_veth(), p2.host_veth());
    assert_eq!(p1.ip(), Ipv4Addr::new(10, 42, 1, 2));

    p1.ping(gw)?;
    p2.ping(p1.ip())?;
    host.ping(p2.ip())?;

    // Pod side: eth0 with the MAC we were told, MTU, default route.
    assert_eq!(p1.mac(), p1.ns().mac("eth0")?);
    assert!(p1.run(&["ip", "-o", "link", "show", "eth0"])?.contains("mtu 1450"));
    assert!(p1.run(&["ip", "route", "show", "default"])?.contains("via 10.42.1.1 dev eth0"));
    // Host side: the veth is a port of cni0.
    let veth = host.run(&["ip", "-o", "link", "show", p1.host_veth()])?;
    assert!(veth.contains("master cni0") && veth.contains("mtu 1450"), "{veth}");
    Ok(())
}

#[test]
fn in_ns_sees_the_namespace() -> anyhow::Result<()> {
    let tb = Testbed::new(2)?;
    let host_ifs = tb.host(0).in_ns(interface_names);
    assert_eq!(host_ifs, ["eth0", "lo"].iter().map(|s| s.to_string()).collect());
    let ul_ifs = tb.underlay().in_ns(interface_names);
    assert_eq!(ul_ifs, ["br0", "h0", "h1", "lo"].iter().map(|s| s.to_string()).collect());
    // The calling thread stays where it was.
    assert_ne!(interface_names(), host_ifs);

    // Sockets opened inside belong to the namespace.
    tb.host(0).in_ns(|| std::net::UdpSocket::bind((Ipv4Addr::new(192, 168, 77, 10), 0)).map(drop))?;
    let bound_outside = std::net::UdpSocket::bind((Ipv4Addr::new(192, 168, 77, 10), 0));
    assert!(bound_outside.is_err(), "the address exists only inside the host namespace");

    // A panic inside propagates.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tb.host(0).in_ns(|| panic!("inside"))));
    assert!(r.is_err());
    Ok(())
}

#[test]
fn exec_run_and_sh() -> anyhow::Result<()> {
    let tb = Testbed::new(1)?;
    let h = tb.host(0);
    let out = h.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"])?;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let err = h.run(&["sh", "-c", "echo broken >&2; exit 2"]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("broken") && msg.contains(h.name()) && msg.contains("exit status: 2"), "{msg}");
    assert_eq!(h.sh("ip -o addr show dev eth0 | grep -c 192.168.77.10")?.trim(), "1");
    assert!(h.sh("exit 1").is_err());
    let out = h.command("sh").args(["-c", "echo $FOO"]).env("FOO", "bar").output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bar\n");
    Ok(())
}

#[test]
fn bpffs_is_visible_inside_host_namespaces() -> anyhow::Result<()> {
    ensure_bpffs()?;
    ensure_bpffs()?;
    let tb = Testbed::new(1)?;
    assert_eq!(tb.host(0).run(&["stat", "-f", "-c", "%T", "/sys/fs/bpf"])?.trim(), "bpf_fs");
    Ok(())
}

#[test]
fn child_handles_work_and_are_killed_with_the_testbed() -> anyhow::Result<()> {
    let tb = Testbed::new(1)?;
    let h = tb.host(0);

    // Piped output, exit status.
    let mut cmd = h.command("sh");
    cmd.args(["-c", "echo hello; exit 7"]).stdout(std::process::Stdio::piped());
    let echo = h.spawn(cmd)?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut echo.take_stdout().expect("piped"), &mut out)?;
    assert_eq!(out, "hello\n");
    assert_eq!(echo.wait_timeout(Duration::from_secs(5)).and_then(|s| s.code()), Some(7));
    assert!(echo.take_stdout().is_none());

    // Signals, and a timeout that expires.
    let sleeper = h.spawn_argv(&["sleep", "600"])?;
    assert!(sleeper.wait_timeout(Duration::from_millis(50)).is_none());
    sleeper.signal(libc::SIGTERM)?;
    let status = sleeper.wait_timeout(Duration::from_secs(5)).expect("exited");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
    assert!(sleeper.signal(libc::SIGTERM).is_err());

    // Left running: a plain process, one with a grandchild, and one started
    // without the harness's tracking.
    let lone = h.spawn_argv(&["sleep", "600"])?;
    let parent = h.spawn_argv(&["sh", "-c", "sleep 600 & wait"])?;
    let grandchild = poll_until(Duration::from_secs(5), "sh to fork sleep", || {
        children_of(parent.pid()).first().copied().ok_or_else(|| anyhow::anyhow!("no child yet"))
    })?;
    let mut untracked = tb.underlay().command("sleep").arg("600").spawn()?;
    wait_in_netns(untracked.id(), tb.underlay())?;
    let pids = [lone.pid(), parent.pid(), grandchild];
    assert!(pids.iter().all(|p| pid_alive(*p)));
    assert!(lone.is_running());

    drop(tb);
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} survived the testbed");
    }
    assert!(untracked.wait()?.code().is_none(), "the untracked process was killed");
    Ok(())
}

#[test]
fn child_handle_kill_and_terminate() -> anyhow::Result<()> {
    let tb = Testbed::new(1)?;
    let h = tb.host(0);
    let a = h.spawn_argv(&["sleep", "600"])?;
    a.kill();
    assert!(!a.is_running() && !pid_alive(a.pid()));
    a.kill(); // idempotent
    // A process that ignores SIGTERM gets SIGKILLed after the grace period.
    let b = h.spawn_argv(&["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])?;
    std::thread::sleep(Duration::from_millis(100));
    let status = b.terminate(Duration::from_millis(200)).expect("exited");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    Ok(())
}

const LEAK_HELPER_ENV: &str = "OVERLAY_TESTS_LEAK_HELPER";

/// Run by `leftovers_of_a_killed_test_process_are_cleaned_up` in a child
/// process: makes an etcd, a testbed and a process in it, reports them, and
/// dies by SIGKILL so that no destructor runs.
#[test]
#[ignore = "helper; only does something when run by another test"]
fn helper_leaks_and_dies() {
    if std::env::var_os(LEAK_HELPER_ENV).is_none() {
        return;
    }
    let etcd = Etcd::start().unwrap();
    let tb = Testbed::new(1).unwrap();
    let mut cmd = tb.host(0).command("sleep");
    cmd.arg("600").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let sleeper = tb.host(0).spawn(cmd).unwrap();
    // Report only once nsenter has moved it into the namespace: a process
    // still on its way in is not found there by the cleanup.
    wait_in_netns(sleeper.pid(), tb.host(0).ns()).unwrap();
    println!(
        "LEAK {} {} {} {} {}",
        etcd.pid().unwrap(),
        sleeper.pid(),
        tb.host(0).name(),
        etcd.dir().display(),
        tb.dir().display()
    );
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[test]
fn leftovers_of_a_killed_test_process_are_cleaned_up() -> anyhow::Result<()> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "helper_leaks_and_dies", "--ignored", "--nocapture", "--test-threads=1"])
        .env(LEAK_HELPER_ENV, "1")
        .stdin(std::process::Stdio::null())
        .output()?;
    // Whatever happens below, do not leave the helper's leftovers behind.
    struct CleanupOnExit;
    impl Drop for CleanupOnExit {
        fn drop(&mut self) {
            overlay_tests::cleanup_stale();
        }
    }
    let _cleanup = CleanupOnExit;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The test harness prints "test NAME ... " before the helper's own line.
    let line = stdout.lines().find_map(|l| l.split_once("LEAK ").map(|(_, rest)| rest)).unwrap_or_else(|| {
        panic!("helper said: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let f: Vec<&str> = line.split(' ').collect();
    let (etcd_pid, sleep_pid): (u32, u32) = (f[0].parse()?, f[1].parse()?);
    let (ns, etcd_dir, tb_dir) = (f[2], Path::new(f[3]), Path::new(f[4]));
    assert!(pid_alive(etcd_pid) && pid_alive(sleep_pid) && netns_exists(ns) && etcd_dir.exists() && tb_dir.exists());

    overlay_tests::cleanup_stale();
    poll_until(Duration::from_secs(5), "leftovers to go", || {
        anyhow::ensure!(!pid_alive(etcd_pid), "etcd {etcd_pid} alive");
        anyhow::ensure!(!pid_alive(sleep_pid), "sleep {sleep_pid} alive");
        Ok(())
    })?;
    assert!(!netns_exists(ns), "{ns}");
    assert!(!etcd_dir.exists() && !tb_dir.exists());
    Ok(())
}
