//! The command line: every flanneld command line found in the seeds parses
//! verbatim to the settings flanneld would use; defaults; FLANNELD_*
//! environment fallback and its precedence; errors.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use overlay_agent::cli::{
    parse_from, parse_from_env, CleanupArgs, Cli, Command, DockerOptsArgs, InspectArgs, RunArgs,
};
use overlay_tests::agent::agent_binary;

fn no_env(_: &str) -> Option<String> {
    None
}

fn argv(args: &[&str]) -> Vec<String> {
    std::iter::once("overlay-agent")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> RunArgs {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match parse_from_env(argv(args), |k| env.get(k).cloned()) {
        Ok(Cli {
            command: Command::Run(r),
        }) => r,
        Ok(other) => panic!("{args:?}: expected the daemon, got {other:?}"),
        Err(e) => panic!("{args:?}: {}", e.render()),
    }
}

fn run(args: &[&str]) -> RunArgs {
    run_with_env(args, &[])
}

fn err(args: &[&str]) -> String {
    err_with_env(args, &[])
}

fn err_with_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match parse_from_env(argv(args), |k| env.get(k).cloned()) {
        Ok(c) => panic!("{args:?} should fail, parsed to {c:?}"),
        Err(e) => {
            assert_ne!(e.exit_code(), 0, "{args:?}: {e}");
            e.render().to_string()
        }
    }
}

fn endpoints(r: &RunArgs) -> Vec<&str> {
    r.etcd.endpoints.iter().map(String::as_str).collect()
}

#[test]
fn defaults_are_flanneld_defaults() {
    let r = run(&[]);
    assert_eq!(
        endpoints(&r),
        ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    );
    assert_eq!(r.etcd.prefix, "/coreos.com/network");
    assert_eq!(r.etcd.keyfile, None);
    assert_eq!(r.etcd.certfile, None);
    assert_eq!(r.etcd.cafile, None);
    assert_eq!(r.etcd.username, None);
    assert_eq!(r.etcd.password, None);
    assert!(r.etcd.client_tls().is_none());
    assert!(r.iface.is_empty());
    assert!(r.iface_regex.is_empty());
    assert_eq!(r.iface_can_reach, None);
    assert_eq!(r.public_ip, None);
    assert_eq!(r.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(r.subnet_lease_renew_margin, 60);
    assert!(!r.ip_masq);
    assert!(!r.ip_masq_fully_random_disable);
    assert_eq!(r.iptables_resync, 5);
    assert!(r.iptables_forward_rules);
    assert_eq!(r.healthz_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(r.healthz_port, 0);
    assert_eq!(r.verbosity, 0);
    assert_eq!(r.bridge, None, "by default the pod bridge is found by its gateway address");
    assert!(!r.kernel_forwarding);
    assert_eq!(r.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/overlay"));
    assert!(!r.xdp_guard);
    assert!(!r.print_config);
    assert_eq!(r, RunArgs::default());
}

// --- the seeds, verbatim ---------------------------------------------------

#[test]
fn seed_000_iface_endpoint_prefix() {
    // ./flanneld --iface=eth1 --etcd-endpoints=http://172.31.0.3:2379 --etcd-prefix=/flannel/network
    let r = run(&[
        "--iface=eth1",
        "--etcd-endpoints=http://172.31.0.3:2379",
        "--etcd-prefix=/flannel/network",
    ]);
    assert_eq!(r.iface, ["eth1"]);
    assert_eq!(endpoints(&r), ["http://172.31.0.3:2379"]);
    assert_eq!(r.etcd.prefix, "/flannel/network");
    assert!(!r.ip_masq);
    assert_eq!(r.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
}

#[test]
fn seed_001_rpm_sysconfig() {
    // CentOS/RHEL package: flanneld-start runs
    //   flanneld -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS} -etcd-prefix=${FLANNEL_ETCD_PREFIX} $FLANNEL_OPTIONS
    // with /etc/sysconfig/flanneld of seed 001 (FLANNEL_OPTIONS="").
    let r = run(&[
        "-etcd-endpoints=http://etcd:2379",
        "-etcd-prefix=/atomic.io/network",
    ]);
    assert_eq!(endpoints(&r), ["http://etcd:2379"]);
    assert_eq!(r.etcd.prefix, "/atomic.io/network");
}

#[test]
fn seed_002_quoted_endpoint_and_ip_masq_true() {
    // flanneld --etcd-endpoints="http://etcd1.mritd.me:2379" --ip-masq=true  (after the shell)
    let r = run(&[
        "--etcd-endpoints=http://etcd1.mritd.me:2379",
        "--ip-masq=true",
    ]);
    assert_eq!(endpoints(&r), ["http://etcd1.mritd.me:2379"]);
    assert!(r.ip_masq);
    assert_eq!(r.etcd.prefix, "/coreos.com/network");
    // the same line where the quotes survive (no shell in between)
    let q = run(&[
        "--etcd-endpoints=\"http://etcd1.mritd.me:2379\"",
        "--ip-masq=true",
    ]);
    assert_eq!(q, r);
    // the seed's sysconfig variant: FLANNEL_ETCD / FLANNEL_ETCD_KEY through the old unit
    let s = run(&[
        "-etcd-endpoints=http://etcd1.mritd.me:2379",
        "-etcd-prefix=/coreos.com/network",
    ]);
    assert_eq!(endpoints(&s), ["http://etcd1.mritd.me:2379"]);
}

#[test]
fn seed_003_systemd_multiline_tls_and_bare_ip_masq() {
    // ExecStart=/usr/local/flannel/flanneld --ip-masq \
    // --etcd-cafile=/etc/kubernetes/pki/etcd/etcd_ca.crt \
    // --etcd-certfile=/etc/kubernetes/pki/etcd/etcd_client.crt \
    // --etcd-keyfile=/etc/kubernetes/pki/etcd/etcd_client.key \
    // --etcd-endpoints=https://etcd:2379 \
    // --etcd-prefix=/coreos.com/network
    let r = run(&[
        "--ip-masq",
        "--etcd-cafile=/etc/kubernetes/pki/etcd/etcd_ca.crt",
        "--etcd-certfile=/etc/kubernetes/pki/etcd/etcd_client.crt",
        "--etcd-keyfile=/etc/kubernetes/pki/etcd/etcd_client.key",
        "--etcd-endpoints=https://etcd:2379",
        "--etcd-prefix=/coreos.com/network",
    ]);
    assert!(r.ip_masq);
    assert_eq!(
        r.etcd.cafile,
        Some(PathBuf::from("/etc/kubernetes/pki/etcd/etcd_ca.crt"))
    );
    assert_eq!(
        r.etcd.certfile,
        Some(PathBuf::from("/etc/kubernetes/pki/etcd/etcd_client.crt"))
    );
    assert_eq!(
        r.etcd.keyfile,
        Some(PathBuf::from("/etc/kubernetes/pki/etcd/etcd_client.key"))
    );
    assert!(r.etcd.client_tls().is_some());
    assert_eq!(endpoints(&r), ["https://etcd:2379"]);
    assert_eq!(r.etcd.prefix, "/coreos.com/network");

    // ExecStartPost=/usr/local/flannel/mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d /run/flannel/subnet.env
    let d = docker_opts(&[
        "-k",
        "DOCKER_NETWORK_OPTIONS",
        "-d",
        "/run/flannel/subnet.env",
    ]);
    assert_eq!(
        d,
        DockerOptsArgs {
            env_file: "/run/flannel/subnet.env".into(),
            out_file: "/run/flannel/subnet.env".into(),
            individual: false,
            combined: false,
            no_ip_masq: false,
            key: "DOCKER_NETWORK_OPTIONS".into(),
        }
    );
}

#[test]
fn seed_004_single_dash_go_syntax() {
    // nohup ./flanneld -etcd-endpoints=http://10.29.76.96:2379 &
    let r = run(&["-etcd-endpoints=http://10.29.76.96:2379"]);
    assert_eq!(endpoints(&r), ["http://10.29.76.96:2379"]);
    assert_eq!(
        RunArgs {
            etcd: r.etcd.clone(),
            ..RunArgs::default()
        },
        r
    );
}

// --- Go flag syntax ---------------------------------------------------------

#[test]
fn go_syntax_variants_mean_the_same() {
    let canonical = run(&[
        "--etcd-prefix=/p",
        "--iface=eth0",
        "--ip-masq=true",
        "--subnet-lease-renew-margin=30",
    ]);
    for args in [
        &[
            "-etcd-prefix=/p",
            "-iface=eth0",
            "-ip-masq",
            "-subnet-lease-renew-margin=30",
        ][..],
        &[
            "--etcd-prefix",
            "/p",
            "--iface",
            "eth0",
            "--ip-masq",
            "--subnet-lease-renew-margin",
            "30",
        ],
        &[
            "-etcd-prefix",
            "/p",
            "-iface",
            "eth0",
            "-ip-masq=1",
            "-subnet-lease-renew-margin",
            "30",
        ],
        &[
            "--ip-masq=True",
            "--etcd-prefix=/p",
            "--iface=eth0",
            "--subnet-lease-renew-margin=0x1e",
        ],
        &[
            "--ip-masq=t",
            "--etcd-prefix=/p",
            "--iface=eth0",
            "--subnet-lease-renew-margin=036",
        ],
    ] {
        assert_eq!(run(args), canonical, "{args:?}");
    }
}

#[test]
fn bools_take_go_values() {
    for (v, want) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("t", true),
        ("false", false),
        ("F", false),
        ("0", false),
    ] {
        assert_eq!(run(&[&format!("--ip-masq={v}")]).ip_masq, want, "{v}");
    }
    assert!(!run(&["--iptables-forward-rules=false"]).iptables_forward_rules);
    assert!(!run(&["-iptables-forward-rules=0"]).iptables_forward_rules);
    assert!(run(&["--ip-masq-fully-random-disable"]).ip_masq_fully_random_disable);
    assert!(run(&["--ip-masq-random-fully-disable=true"]).ip_masq_fully_random_disable);
    assert!(run(&["--xdp-guard"]).xdp_guard);
    assert!(run(&["--xdp-decap"]).xdp_decap);
    assert_eq!(run(&["--xdp-mode=generic"]).xdp_mode, overlay_agent::cli::XdpModeArg::Generic);
    assert_eq!(run(&[]).xdp_mode, overlay_agent::cli::XdpModeArg::Native);
    assert!(run(&["--bpf-log-drops"]).bpf_log_drops);
    assert!(!run(&[]).bpf_log_drops);
    assert!(run(&["--kernel-forwarding"]).kernel_forwarding);
    assert!(!run(&["--kernel-forwarding=false"]).kernel_forwarding);
    // a later occurrence wins, as in Go
    assert!(!run(&["--ip-masq", "--ip-masq=false"]).ip_masq);
    assert_eq!(
        run(&["--etcd-prefix=/a", "-etcd-prefix=/b"]).etcd.prefix,
        "/b"
    );
    assert_eq!(
        endpoints(&run(&[
            "--etcd-endpoints=http://a:1,http://b:2",
            "--etcd-endpoints=http://c:3"
        ])),
        ["http://c:3"]
    );
    let c = parse_from_env(argv(&["cleanup", "--bridge=a", "--bridge=b"]), no_env).unwrap();
    assert!(matches!(c.command, Command::Cleanup(CleanupArgs { ref bridge, .. }) if bridge.as_deref() == Some("b")));
    let e = err(&["--ip-masq=yes"]);
    assert!(e.contains("--ip-masq") && e.contains("yes"), "{e}");
}

#[test]
fn bool_with_separate_word_is_refused_clearly() {
    // Go would stop parsing at "true" and silently ignore everything after it.
    let e = err(&["--ip-masq", "true", "--etcd-prefix=/x"]);
    assert!(e.contains("--ip-masq=true"), "{e}");
}

#[test]
fn all_flags_parse() {
    let r = run(&[
        "--etcd-endpoints=http://a:2379, http://b:2379,",
        "--etcd-prefix=/p",
        "--etcd-keyfile=/k",
        "--etcd-certfile=/c",
        "--etcd-cafile=/ca",
        "--etcd-username=u",
        "--etcd-password=secret",
        "--iface=eth1",
        "--iface=10.0.0.5",
        "--iface-regex=^en",
        "--iface-regex=^eth",
        "--iface-can-reach=10.0.0.1",
        "--public-ip=192.0.2.7",
        "--subnet-file=/tmp/x/subnet.env",
        "--subnet-lease-renew-margin=1439",
        "--ip-masq",
        "--ip-masq-fully-random-disable",
        "--iptables-resync=30",
        "--iptables-forward-rules=false",
        "--healthz-ip=127.0.0.1",
        "--healthz-port=8471",
        "-v=2",
        "--bridge=br-pods",
        "--bpf-pin-dir=/sys/fs/bpf/other",
        "--xdp-guard=true",
        "--ip-blackhole-route",
        "-logtostderr=true",
        "-alsologtostderr",
        "-log_dir=/var/log",
        "-stderrthreshold=INFO",
        "--kube-subnet-mgr=false",
    ]);
    assert_eq!(endpoints(&r), ["http://a:2379", "http://b:2379"]);
    assert_eq!(r.etcd.username.as_deref(), Some("u"));
    assert_eq!(r.etcd.password.as_deref(), Some("secret"));
    assert_eq!(r.iface, ["eth1", "10.0.0.5"]);
    assert_eq!(r.iface_regex, ["^en", "^eth"]);
    assert_eq!(r.iface_can_reach, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(r.public_ip, Some(Ipv4Addr::new(192, 0, 2, 7)));
    assert_eq!(r.subnet_file, PathBuf::from("/tmp/x/subnet.env"));
    assert_eq!(r.subnet_lease_renew_margin, 1439);
    assert!(r.ip_masq && r.ip_masq_fully_random_disable);
    assert_eq!(r.iptables_resync, 30);
    assert!(!r.iptables_forward_rules);
    assert_eq!(r.healthz_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(r.healthz_port, 8471);
    assert_eq!(r.verbosity, 2);
    assert_eq!(r.log_level(), log::LevelFilter::Debug);
    assert_eq!(r.bridge.as_deref(), Some("br-pods"));
    assert_eq!(r.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/other"));
    assert!(r.xdp_guard);
    assert!(r.ip_blackhole_route);
}

/// What one flanneld flag does here.
enum Expect {
    /// parsed into the setting the daemon uses (the check shows it changed)
    Works(fn(&RunArgs) -> bool),
    /// refused, the message naming the flag and saying why
    Refused(&'static str),
}

/// Every flag flanneld v0.28 has in etcd mode (and the glog flags of older
/// releases) either works or is refused with a reason; none is accepted
/// and ignored. The table must name every flag the command knows.
#[test]
fn every_flanneld_flag_works_or_is_refused() {
    use Expect::*;
    let table: &[(&str, &[&str], Expect)] = &[
        ("etcd-endpoints", &["--etcd-endpoints=http://e:2379"], Works(|r| r.etcd.endpoints == ["http://e:2379"])),
        ("etcd-prefix", &["--etcd-prefix=/p"], Works(|r| r.etcd.prefix == "/p")),
        ("etcd-keyfile", &["--etcd-keyfile=/k"], Works(|r| r.etcd.keyfile.is_some())),
        ("etcd-certfile", &["--etcd-certfile=/c"], Works(|r| r.etcd.certfile.is_some())),
        ("etcd-cafile", &["--etcd-cafile=/ca"], Works(|r| r.etcd.cafile.is_some())),
        ("etcd-username", &["--etcd-username=u"], Works(|r| r.etcd.username.as_deref() == Some("u"))),
        ("etcd-password", &["--etcd-password=p"], Works(|r| r.etcd.password.as_deref() == Some("p"))),
        ("iface", &["--iface=eth1"], Works(|r| r.iface == ["eth1"])),
        ("iface-regex", &["--iface-regex=^e"], Works(|r| r.iface_regex == ["^e"])),
        ("iface-can-reach", &["--iface-can-reach=10.0.0.1"], Works(|r| r.iface_can_reach.is_some())),
        ("public-ip", &["--public-ip=192.0.2.7"], Works(|r| r.public_ip.is_some())),
        ("public-ipv6", &["--public-ipv6=fd00::1"], Works(|r| r.public_ipv6 == Some("fd00::1".parse().unwrap()))),
        ("iface", &["--iface=fd00:77::10"], Works(|r| r.iface == ["fd00:77::10"])),
        ("subnet-file", &["--subnet-file=/s.env"], Works(|r| r.subnet_file == std::path::Path::new("/s.env"))),
        ("subnet-lease-renew-margin", &["--subnet-lease-renew-margin=5"], Works(|r| r.subnet_lease_renew_margin == 5)),
        ("ip-masq", &["--ip-masq"], Works(|r| r.ip_masq)),
        ("ip-masq-fully-random-disable", &["--ip-masq-fully-random-disable"], Works(|r| r.ip_masq_fully_random_disable)),
        ("iptables-resync", &["--iptables-resync=9"], Works(|r| r.iptables_resync == 9)),
        ("iptables-forward-rules", &["--iptables-forward-rules=false"], Works(|r| !r.iptables_forward_rules)),
        ("ip-blackhole-route", &["--ip-blackhole-route"], Works(|r| r.ip_blackhole_route)),
        ("healthz-ip", &["--healthz-ip=127.0.0.1"], Works(|r| r.healthz_ip == IpAddr::V4(Ipv4Addr::LOCALHOST))),
        ("healthz-port", &["--healthz-port=8471"], Works(|r| r.healthz_port == 8471)),
        ("v", &["-v=2"], Works(|r| r.log_level() == log::LevelFilter::Debug)),
        // glog flags of old flanneld releases: what they ask for is what this agent does
        ("logtostderr", &["-logtostderr=true"], Works(|r| r == &RunArgs { compat: r.compat.clone(), ..RunArgs::default() })),
        ("alsologtostderr", &["-alsologtostderr"], Works(|r| r.compat.alsologtostderr == Some(true))),
        ("log_dir", &["-log_dir=/var/log"], Works(|r| r.compat.log_dir.is_some())),
        ("stderrthreshold", &["-stderrthreshold=INFO"], Works(|r| r.compat.stderrthreshold.is_some())),
        ("logtostderr", &["-logtostderr=false"], Refused("logs to stderr only")),
        ("kube-subnet-mgr", &["--kube-subnet-mgr"], Refused("uses etcd for subnet leases")),
        ("kube-api-url", &["--kube-api-url=https://k"], Refused("Kubernetes subnet manager")),
        ("kubeconfig-file", &["--kubeconfig-file=/kc"], Refused("Kubernetes subnet manager")),
        ("kube-annotation-prefix", &["--kube-annotation-prefix=x"], Refused("Kubernetes subnet manager")),
        ("net-config-path", &["--net-config-path=/n"], Refused("read from etcd")),
        ("set-node-network-unavailable", &["--set-node-network-unavailable=false"], Refused("Kubernetes subnet manager")),
        ("vmodule", &["--vmodule=foo=2"], Refused("use -v=N")),
        ("log_backtrace_at", &["--log_backtrace_at=x.go:1"], Refused("no counterpart")),
    ];
    for (flag, args, expect) in table {
        match expect {
            Works(check) => {
                let r = run(args);
                assert!(check(&r), "--{flag}: {args:?} parsed to {r:?}");
            }
            Refused(why) => {
                let e = err(args);
                assert!(e.contains(&format!("--{flag} is not supported")) && e.contains(why), "--{flag}: {e}");
                // the same through the environment, which is named
                let name = format!("FLANNELD_{}", flag.to_ascii_uppercase().replace('-', "_"));
                let value = args[0].split_once('=').map_or("true", |(_, v)| v);
                let e = err_with_env(&[], &[(&name, value)]);
                assert!(e.contains(&name) && e.contains(why), "{name}={value}: {e}");
            }
        }
    }
    // --version works (help_and_version); ours: --bridge ... (all_flags_parse)
    let ours = [
        "help",
        "version",
        "bridge",
        "kernel-forwarding",
        "bpf-pin-dir",
        "xdp-guard",
        "xdp-decap",
        "xdp-mode",
        "bpf-log-drops",
        "print-config",
    ];
    let mut cmd = overlay_agent::cli::command();
    cmd.build();
    let known: std::collections::BTreeSet<String> =
        cmd.get_arguments().filter_map(|a| a.get_long().map(str::to_owned)).collect();
    let covered: std::collections::BTreeSet<String> =
        table.iter().map(|(f, _, _)| f.to_string()).chain(ours.iter().map(|f| f.to_string())).collect();
    assert_eq!(known, covered, "every flag must be in the table above (works or refused)");
}

#[test]
fn empty_values_mean_unset_like_go() {
    let r = run(&[
        "--etcd-keyfile=",
        "--etcd-certfile",
        "",
        "--public-ip=",
        "--public-ipv6=",
        "--iface-can-reach=",
        "--etcd-username=",
    ]);
    assert_eq!(r, RunArgs::default());
    // given (even empty) on the command line, the environment is not consulted
    let r = run_with_env(
        &["--etcd-keyfile="],
        &[("FLANNELD_ETCD_KEYFILE", "/env/key")],
    );
    assert_eq!(r.etcd.keyfile, None);
}

#[test]
fn klog_v_forms() {
    assert_eq!(run(&["-v=3"]).verbosity, 3);
    assert_eq!(run(&["--v=3"]).verbosity, 3);
    assert_eq!(run(&["-v", "4"]).verbosity, 4);
    assert_eq!(run(&["--v", "5"]).verbosity, 5);
    assert_eq!(run(&["--v=5"]).log_level(), log::LevelFilter::Trace);
    assert_eq!(run(&[]).log_level(), log::LevelFilter::Info);
}

// --- errors -----------------------------------------------------------------

#[test]
fn renew_margin_range() {
    assert_eq!(
        run(&["--subnet-lease-renew-margin=1"]).subnet_lease_renew_margin,
        1
    );
    assert_eq!(
        run(&["--subnet-lease-renew-margin=1439"]).subnet_lease_renew_margin,
        1439
    );
    for bad in ["0", "1440", "-5", "99999", "abc"] {
        let e = err(&[&format!("--subnet-lease-renew-margin={bad}")]);
        assert!(e.contains("--subnet-lease-renew-margin"), "{e}");
        if bad != "abc" {
            assert!(e.contains("between 1 and 1439"), "{e}");
        }
    }
}

#[test]
fn unknown_flags_are_errors() {
    for args in [
        &["--no-such-flag"][..],
        &["-no-such-flag=1"],
        &["--etcd-endpoint=http://x:2379"],
        &["-x"],
    ] {
        let e = err(args);
        assert!(e.contains("unexpected argument"), "{args:?}: {e}");
    }
    // the long form is named, so the message points at the right word
    assert!(err(&["-no-such-flag=1"]).contains("--no-such-flag"));
    // a stray positional word
    assert!(!err(&["--iface=eth0", "stray"]).is_empty());
}

#[test]
fn kube_subnet_mgr_is_refused() {
    for args in [
        &["--kube-subnet-mgr"][..],
        &["-kube-subnet-mgr=true"],
        &["--kube-subnet-mgr", "--iface=eth0"],
    ] {
        let e = err(args);
        assert!(e.contains("--kube-subnet-mgr is not supported"), "{e}");
        assert!(e.contains("etcd"), "{e}");
    }
    let e = err_with_env(&[], &[("FLANNELD_KUBE_SUBNET_MGR", "true")]);
    assert!(
        e.contains("not supported") && e.contains("FLANNELD_KUBE_SUBNET_MGR"),
        "{e}"
    );
    // explicitly off is fine
    run(&["--kube-subnet-mgr=false"]);
}

#[test]
fn bad_values_are_errors() {
    assert!(err(&["--public-ip=not-an-ip"]).contains("--public-ip"));
    assert!(err(&["--public-ip=fd00::1"]).contains("IPv4"));
    let e = err(&["--public-ipv6=192.0.2.7"]);
    assert!(e.contains("--public-ipv6") && e.contains("IPv6"), "{e}");
    assert!(err(&["--healthz-port=70000"]).contains("--healthz-port"));
    assert!(err(&["--iptables-resync=0"]).contains("at least 1 second"));
    assert!(err(&["--healthz-ip=x"]).contains("--healthz-ip"));
    assert!(err(&["--etcd-endpoints=,"]).contains("no etcd endpoint"));
    assert!(
        err(&["--etcd-prefix"]).contains("--etcd-prefix"),
        "missing value"
    );
}

#[test]
fn help_and_version() {
    let e = parse_from_env(argv(&["--help"]), no_env).unwrap_err();
    assert_eq!(e.exit_code(), 0);
    let help = e.render().to_string();
    for flag in [
        "--etcd-endpoints",
        "--etcd-prefix",
        "--etcd-keyfile",
        "--etcd-certfile",
        "--etcd-cafile",
        "--etcd-username",
        "--etcd-password",
        "--iface ",
        "--iface-regex",
        "--iface-can-reach",
        "--public-ip",
        "--subnet-file",
        "--subnet-lease-renew-margin",
        "--ip-masq",
        "--ip-masq-fully-random-disable",
        "--iptables-resync",
        "--iptables-forward-rules",
        "--healthz-ip",
        "--healthz-port",
        "--v ",
        "--kube-subnet-mgr",
        "--bridge",
        "--bpf-pin-dir",
        "--xdp-guard",
        "--print-config",
        "--version",
        "cleanup",
        "inspect",
        "docker-opts",
        "FLANNELD_ETCD_ENDPOINTS",
        "http://127.0.0.1:4001,http://127.0.0.1:2379",
        "/run/flannel/subnet.env",
    ] {
        assert!(help.contains(flag), "help lacks {flag:?}:\n{help}");
    }
    for args in [&["--version"][..], &["-version"], &["--version=true"]] {
        let e = parse_from_env(argv(args), no_env).unwrap_err();
        assert_eq!(e.exit_code(), 0, "{args:?}");
        assert!(
            e.render().to_string().contains(env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
    }
    // -h and -help too
    assert_eq!(
        parse_from_env(argv(&["-h"]), no_env)
            .unwrap_err()
            .exit_code(),
        0
    );
    assert_eq!(
        parse_from_env(argv(&["-help"]), no_env)
            .unwrap_err()
            .exit_code(),
        0
    );
    let sub = parse_from_env(argv(&["docker-opts", "-h"]), no_env)
        .unwrap_err()
        .render()
        .to_string();
    assert!(sub.contains("-k <COMBINED-KEY>"), "{sub}");
}

// --- environment ------------------------------------------------------------

#[test]
fn env_fills_absent_flags() {
    let r = run_with_env(
        &[],
        &[
            ("FLANNELD_ETCD_ENDPOINTS", "http://e1:2379,http://e2:2379"),
            ("FLANNELD_ETCD_PREFIX", "/env/prefix"),
            ("FLANNELD_ETCD_KEYFILE", "/env/key"),
            ("FLANNELD_ETCD_CERTFILE", "/env/cert"),
            ("FLANNELD_ETCD_CAFILE", "/env/ca"),
            ("FLANNELD_ETCD_USERNAME", "envuser"),
            ("FLANNELD_ETCD_PASSWORD", "envpass"),
            ("FLANNELD_IFACE", "eth9"),
            ("FLANNELD_IFACE_REGEX", "^wl"),
            ("FLANNELD_IFACE_CAN_REACH", "8.8.8.8"),
            ("FLANNELD_PUBLIC_IP", "198.51.100.4"),
            ("FLANNELD_SUBNET_FILE", "/env/subnet.env"),
            ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "120"),
            ("FLANNELD_IP_MASQ", "true"),
            ("FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", "true"),
            ("FLANNELD_IPTABLES_RESYNC", "9"),
            ("FLANNELD_IPTABLES_FORWARD_RULES", "false"),
            ("FLANNELD_HEALTHZ_IP", "127.0.0.2"),
            ("FLANNELD_HEALTHZ_PORT", "9999"),
            ("FLANNELD_V", "4"),
            ("FLANNELD_BRIDGE", "brenv"),
            ("FLANNELD_BPF_PIN_DIR", "/sys/fs/bpf/env"),
            ("FLANNELD_XDP_GUARD", "1"),
        ],
    );
    assert_eq!(endpoints(&r), ["http://e1:2379", "http://e2:2379"]);
    assert_eq!(r.etcd.prefix, "/env/prefix");
    assert_eq!(r.etcd.keyfile, Some(PathBuf::from("/env/key")));
    assert_eq!(r.etcd.certfile, Some(PathBuf::from("/env/cert")));
    assert_eq!(r.etcd.cafile, Some(PathBuf::from("/env/ca")));
    assert_eq!(r.etcd.username.as_deref(), Some("envuser"));
    assert_eq!(r.etcd.password.as_deref(), Some("envpass"));
    assert_eq!(r.iface, ["eth9"]);
    assert_eq!(r.iface_regex, ["^wl"]);
    assert_eq!(r.iface_can_reach, Some("8.8.8.8".parse().unwrap()));
    assert_eq!(r.public_ip, Some(Ipv4Addr::new(198, 51, 100, 4)));
    assert_eq!(r.subnet_file, PathBuf::from("/env/subnet.env"));
    assert_eq!(r.subnet_lease_renew_margin, 120);
    assert!(r.ip_masq);
    assert!(r.ip_masq_fully_random_disable);
    assert_eq!(r.iptables_resync, 9);
    assert!(!r.iptables_forward_rules);
    assert_eq!(r.healthz_ip, "127.0.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(r.healthz_port, 9999);
    assert_eq!(r.verbosity, 4);
    assert_eq!(r.bridge.as_deref(), Some("brenv"));
    assert_eq!(r.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/env"));
    assert!(r.xdp_guard);
}

#[test]
fn command_line_wins_over_env() {
    let env = [
        ("FLANNELD_ETCD_ENDPOINTS", "http://env:2379"),
        ("FLANNELD_ETCD_PREFIX", "/env"),
        ("FLANNELD_IP_MASQ", "true"),
        ("FLANNELD_IFACE", "eth-env"),
        ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "0"), // invalid, but overridden
    ];
    // every syntax of the flag counts as "given"
    for args in [
        &[
            "--etcd-endpoints=http://cli:2379",
            "--ip-masq=false",
            "--iface=eth-cli",
            "--subnet-lease-renew-margin=10",
        ][..],
        &[
            "-etcd-endpoints",
            "http://cli:2379",
            "-ip-masq=false",
            "-iface",
            "eth-cli",
            "-subnet-lease-renew-margin=10",
        ],
    ] {
        let r = run_with_env(args, &env);
        assert_eq!(endpoints(&r), ["http://cli:2379"], "{args:?}");
        assert!(!r.ip_masq, "{args:?}");
        assert_eq!(r.iface, ["eth-cli"], "{args:?}");
        assert_eq!(r.subnet_lease_renew_margin, 10);
        // not on the command line: from the environment
        assert_eq!(r.etcd.prefix, "/env");
    }
    // a bare bool flag on the command line beats FLANNELD_...=false
    assert!(run_with_env(&["--ip-masq"], &[("FLANNELD_IP_MASQ", "false")]).ip_masq);
}

#[test]
fn empty_env_values_are_ignored_and_bad_ones_named() {
    // Go's SetFlagsFromEnv skips empty values
    let r = run_with_env(
        &[],
        &[("FLANNELD_ETCD_PREFIX", ""), ("FLANNELD_IP_MASQ", "")],
    );
    assert_eq!(r.etcd.prefix, "/coreos.com/network");
    assert!(!r.ip_masq);
    let e = err_with_env(&[], &[("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "5000")]);
    assert!(
        e.contains("FLANNELD_SUBNET_LEASE_RENEW_MARGIN") && e.contains("1439"),
        "{e}"
    );
    let e = err_with_env(&[], &[("FLANNELD_IP_MASQ", "maybe")]);
    assert!(e.contains("FLANNELD_IP_MASQ"), "{e}");
    // --help / --version / --print-config are never taken from the environment
    let r = run_with_env(
        &[],
        &[
            ("FLANNELD_PRINT_CONFIG", "true"),
            ("FLANNELD_VERSION", "true"),
            ("FLANNELD_HELP", "true"),
        ],
    );
    assert!(!r.print_config);
}

#[test]
fn env_applies_to_cleanup_too() {
    let env: HashMap<&str, &str> = [
        ("FLANNELD_ETCD_ENDPOINTS", "http://env:2379"),
        ("FLANNELD_BPF_PIN_DIR", "/env/pins"),
    ]
    .into();
    let c = parse_from_env(
        argv(&["cleanup", "-etcd-prefix=/p", "--release-lease"]),
        |k| env.get(k).map(|s| s.to_string()),
    )
    .unwrap();
    let Command::Cleanup(c) = c.command else {
        panic!()
    };
    assert_eq!(
        c,
        CleanupArgs {
            release_lease: true,
            subnet_file: "/run/flannel/subnet.env".into(),
            bridge: None,
            bpf_pin_dir: "/env/pins".into(),
            etcd: overlay_agent::cli::EtcdArgs {
                endpoints: vec!["http://env:2379".into()],
                prefix: "/p".into(),
                ..RunArgs::default().etcd
            },
        }
    );
}

/// The real process-environment path ([`parse_from`] reading std::env):
/// this test re-runs its own binary with FLANNELD_* set, where
/// `child_prints_config` prints what it parsed.
#[test]
fn process_environment_is_read() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "child_prints_config",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "OVERLAY_CLI_TEST_CHILD",
            "--etcd-prefix=/cli\x1f-ip-masq=false",
        )
        .env("FLANNELD_ETCD_PREFIX", "/env")
        .env(
            "FLANNELD_ETCD_ENDPOINTS",
            "http://env-a:2379,http://env-b:2379",
        )
        .env("FLANNELD_IP_MASQ", "true")
        .env("FLANNELD_ETCD_PASSWORD", "hunter2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout.find("CONFIG<<").expect("child output") + "CONFIG<<".len();
    let end = stdout.find(">>CONFIG").unwrap();
    let json: serde_json::Value = serde_json::from_str(&stdout[start..end]).unwrap();
    assert_eq!(json["etcd-prefix"], "/cli");
    assert_eq!(
        json["etcd-endpoints"],
        serde_json::json!(["http://env-a:2379", "http://env-b:2379"])
    );
    assert_eq!(json["ip-masq"], false);
    assert_eq!(json["etcd-password"], "<redacted>");
    assert!(!stdout.contains("hunter2"));
    assert_eq!(json["subnet-lease-renew-margin"], 60);
    assert_eq!(json["iptables-forward-rules"], true);
    assert_eq!(json["bpf-pin-dir"], "/sys/fs/bpf/overlay");
}

#[test]
#[ignore = "helper; run by process_environment_is_read"]
fn child_prints_config() {
    let args = std::env::var("OVERLAY_CLI_TEST_CHILD")
        .expect("OVERLAY_CLI_TEST_CHILD unset: this helper is run by process_environment_is_read");
    let args: Vec<&str> = args.split('\x1f').collect();
    let Cli {
        command: Command::Run(r),
    } = parse_from(argv(&args)).unwrap()
    else {
        panic!()
    };
    print!("CONFIG<<{}>>CONFIG", r.print_config_text());
}

#[test]
fn print_config_flag_and_json() {
    let r = run(&[
        "--print-config",
        "--iface=eth1",
        "--etcd-endpoints=http://172.31.0.3:2379",
        "--etcd-prefix=/flannel/network",
    ]);
    assert!(r.print_config);
    let json: serde_json::Value = serde_json::from_str(&r.print_config_text()).unwrap();
    assert_eq!(json["iface"], serde_json::json!(["eth1"]));
    assert_eq!(json["etcd-prefix"], "/flannel/network");
    assert_eq!(json["etcd-password"], serde_json::Value::Null);
    assert_eq!(json["healthz-ip"], "0.0.0.0");
    assert!(json.get("print-config").is_none());
}

// --- subcommands ------------------------------------------------------------

fn docker_opts(args: &[&str]) -> DockerOptsArgs {
    let mut v = vec!["docker-opts"];
    v.extend_from_slice(args);
    match parse_from_env(argv(&v), no_env) {
        Ok(Cli {
            command: Command::DockerOpts(d),
        }) => d,
        other => panic!("{args:?}: {other:?}"),
    }
}

#[test]
fn docker_opts_getopts_flags_are_not_rewritten() {
    let d = docker_opts(&[]);
    assert_eq!(d.env_file, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(d.out_file, PathBuf::from("/run/docker_opts.env"));
    assert_eq!(d.key, "DOCKER_OPTS");
    assert!(!d.individual && !d.combined && !d.no_ip_masq);
    let d = docker_opts(&["-ic", "-m", "-kFOO", "-f", "/a", "-d/b"]);
    assert!(d.individual && d.combined && d.no_ip_masq);
    assert_eq!(d.key, "FOO");
    assert_eq!(d.env_file, PathBuf::from("/a"));
    assert_eq!(d.out_file, PathBuf::from("/b"));
    // FLANNELD_* does not leak into docker-opts
    let env: HashMap<&str, &str> = [("FLANNELD_SUBNET_FILE", "/nope")].into();
    let c = parse_from_env(argv(&["docker-opts"]), |k| {
        env.get(k).map(|s| s.to_string())
    })
    .unwrap();
    let Command::DockerOpts(d) = c.command else {
        panic!()
    };
    assert_eq!(d.env_file, PathBuf::from("/run/flannel/subnet.env"));
    assert!(parse_from_env(argv(&["docker-opts", "-k", "1BAD"]), no_env).is_err());
    assert!(parse_from_env(argv(&["docker-opts", "-x"]), no_env).is_err());
}

#[test]
fn cleanup_and_inspect() {
    let c = parse_from_env(argv(&["cleanup"]), no_env).unwrap();
    let Command::Cleanup(c) = c.command else {
        panic!()
    };
    assert!(!c.release_lease);
    assert_eq!(c.bridge, None);
    assert_eq!(c.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/overlay"));
    assert_eq!(c.etcd, RunArgs::default().etcd);
    let c = parse_from_env(
        argv(&[
            "cleanup",
            "--release-lease",
            "--bridge",
            "br1",
            "-bpf-pin-dir=/p",
            "--etcd-endpoints=https://e:2379",
            "--etcd-cafile=/ca",
        ]),
        no_env,
    )
    .unwrap();
    let Command::Cleanup(c) = c.command else {
        panic!()
    };
    assert!(c.release_lease);
    assert_eq!(c.bridge.as_deref(), Some("br1"));
    assert_eq!(c.bpf_pin_dir, PathBuf::from("/p"));
    assert_eq!(c.etcd.endpoints, ["https://e:2379"]);
    assert_eq!(c.etcd.cafile, Some(PathBuf::from("/ca")));

    let i = parse_from_env(argv(&["inspect"]), no_env).unwrap();
    assert_eq!(
        i.command,
        Command::Inspect(InspectArgs {
            json: false,
            bpf_pin_dir: "/sys/fs/bpf/overlay".into()
        })
    );
    let i = parse_from_env(argv(&["inspect", "--json", "--bpf-pin-dir", "/x"]), no_env).unwrap();
    assert_eq!(
        i.command,
        Command::Inspect(InspectArgs {
            json: true,
            bpf_pin_dir: "/x".into()
        })
    );
    let i = parse_from_env(argv(&["inspect", "-json"]), no_env).unwrap();
    assert_eq!(
        i.command,
        Command::Inspect(InspectArgs {
            json: true,
            bpf_pin_dir: "/sys/fs/bpf/overlay".into()
        })
    );

    // daemon flags do not mix with subcommands
    assert!(parse_from_env(argv(&["--ip-masq", "cleanup"]), no_env).is_err());
    assert!(parse_from_env(argv(&["inspect", "--ip-masq"]), no_env).is_err());
}

/// The agent binary the integration tests run ([`agent_binary`]), which
/// must be newer than the flag definitions (cli/args.rs): cargo does not build another package's binary
/// for this test crate (`cargo xtask test` does), and running cargo from
/// inside a test can deadlock on the build lock.
fn fresh_binary() -> PathBuf {
    let bin = agent_binary();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../overlay-agent/src/cli/args.rs");
    let modified = |p: &PathBuf| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    assert!(
        modified(&bin) >= modified(&src),
        "{} is older than overlay-agent/src/cli/args.rs: run cargo build -p overlay-agent (cargo xtask test does)",
        bin.display()
    );
    bin
}

#[test]
fn binary_print_config_with_env() {
    let bin = fresh_binary();
    let out = std::process::Command::new(&bin)
        .args([
            "--print-config",
            "--iface=eth1",
            "-etcd-endpoints=http://172.31.0.3:2379",
        ])
        .env("FLANNELD_ETCD_PREFIX", "/flannel/network")
        .env("FLANNELD_ETCD_ENDPOINTS", "http://ignored:2379")
        .env("FLANNELD_IP_MASQ", "true")
        .env("FLANNELD_IPTABLES_RESYNC", "7")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["etcd-endpoints"],
        serde_json::json!(["http://172.31.0.3:2379"])
    );
    assert_eq!(json["etcd-prefix"], "/flannel/network");
    assert_eq!(json["ip-masq"], true);
    assert_eq!(json["iptables-resync"], 7);
    assert_eq!(json["iface"], serde_json::json!(["eth1"]));

    let out = std::process::Command::new(&bin)
        .arg("--kube-subnet-mgr")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
    let out = std::process::Command::new(&bin)
        .arg("--subnet-lease-renew-margin=1440")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 1 and 1439"));
}
