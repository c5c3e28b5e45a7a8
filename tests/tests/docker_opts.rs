//! `docker-opts`: mk-docker-opts.sh's output, byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use overlay_agent::cli::{parse_from_env, Command, DockerOptsArgs};
use overlay_agent::docker_opts::{check, merge_vars, render, route_conflict, run, Options};

/// flannel's dist/sample_subnet.env.
const SAMPLE: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";

/// A scratch folder, removed when dropped.
fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("overlay-docker-opts-{tag}-")).tempdir().unwrap()
}

fn args(flags: &[&str]) -> DockerOptsArgs {
    let mut v = vec!["overlay-agent", "docker-opts"];
    v.extend_from_slice(flags);
    match parse_from_env(v, |_| None).unwrap().command {
        Command::DockerOpts(d) => d,
        c => panic!("{c:?}"),
    }
}

fn vars(text: &str) -> BTreeMap<String, String> {
    merge_vars(std::iter::empty(), Some(text))
}

fn out(text: &str, flags: &[&str]) -> String {
    render(&vars(text), &Options::from_args(&args(flags)))
}

#[test]
fn flannels_own_vectors() {
    // dist/mk_docker_opts_test.go, exact bytes
    assert_eq!(
        out(SAMPLE, &[]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
         DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
    assert_eq!(
        out(SAMPLE, &["-i"]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"
    );
    assert_eq!(
        out(SAMPLE, &["-c"]),
        "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
    assert_eq!(
        out(SAMPLE, &["-k", "CUSTOM_KEY"]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n\
         CUSTOM_KEY=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
    assert_eq!(
        out(SAMPLE, &["-m"]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n"
    );
}

#[test]
fn flag_combinations() {
    // -i -c is the same as neither
    assert_eq!(out(SAMPLE, &["-i", "-c"]), out(SAMPLE, &[]));
    assert_eq!(out(SAMPLE, &["-ic"]), out(SAMPLE, &[]));
    assert_eq!(
        out(SAMPLE, &["-c", "-m"]),
        "DOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n"
    );
    assert_eq!(
        out(SAMPLE, &["-i", "-m"]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"
    );
    assert_eq!(
        out(SAMPLE, &["-c", "-kX"]),
        "X=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
    assert_eq!(Options::from_args(&args(&[])), Options::default());
}

#[test]
fn ipmasq_is_inverted() {
    let on = SAMPLE.replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=true");
    assert_eq!(
        out(&on, &[]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n\
         DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n"
    );
    // -m drops it either way
    assert!(!out(&on, &["-m"]).contains("ip-masq"));
    // anything but true/false is the script's error (unless -m)
    let bad = vars(&SAMPLE.replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=True"));
    assert_eq!(
        check(&bad, &Options::default()).unwrap_err(),
        "Invalid value of FLANNEL_IPMASQ: True"
    );
    assert!(check(
        &bad,
        &Options {
            ip_masq: false,
            ..Options::default()
        }
    )
    .is_ok());
    assert!(check(&vars(SAMPLE), &Options::default()).is_ok());
}

/// flannel's mk-docker-opts.sh reads FLANNEL_SUBNET, FLANNEL_MTU and
/// FLANNEL_IPMASQ only: a dual-stack subnet.env (issue #15) gives the same
/// bytes as the IPv4 part alone, no `--ipv6` or `--fixed-cidr-v6`; an
/// IPv6-only node's file gives the MTU and ip-masq options alone.
#[test]
fn ipv6_lines_add_no_option_as_with_the_script() {
    let dual = format!("{SAMPLE}FLANNEL_IPV6_NETWORK=fd42::/48\nFLANNEL_IPV6_SUBNET=fd42:0:0:5::1/64\n");
    for flags in [&[][..], &["-i"], &["-c"], &["-m"], &["-k", "DOCKER_NETWORK_OPTIONS"]] {
        assert_eq!(out(&dual, flags), out(SAMPLE, flags), "{flags:?}");
    }
    assert_eq!(
        out("FLANNEL_IPV6_NETWORK=fd42::/48\nFLANNEL_IPV6_SUBNET=fd42:0:0:5::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n", &[]),
        "DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1430\"\nDOCKER_OPTS=\" --ip-masq=false --mtu=1430\"\n"
    );
}

#[test]
fn missing_values_are_left_out() {
    assert_eq!(out("", &[]), "DOCKER_OPTS=\"\"\n");
    assert_eq!(out("", &["-i"]), "");
    assert_eq!(
        out("FLANNEL_SUBNET=10.1.74.1/24\n", &[]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24\"\n"
    );
    assert_eq!(
        out("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\nFLANNEL_SUBNET=\n", &[]),
        "DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --ip-masq=false --mtu=1450\"\n"
    );
}

#[test]
fn sourced_like_the_shell() {
    // quotes, export, comments; DOCKER_OPT_* already set and the combined
    // key's current value are carried over, as when the script sources them
    let text = "# c\nexport FLANNEL_SUBNET=\"10.2.0.1/24\"\nFLANNEL_MTU='1400'\nDOCKER_OPT_EXTRA=\"--dns=8.8.8.8\"\n\
                DOCKER_OPTS=\"--x\"\nFLANNEL_IPMASQ=false\n";
    assert_eq!(
        out(text, &[]),
        "DOCKER_OPT_BIP=\"--bip=10.2.0.1/24\"\nDOCKER_OPT_EXTRA=\"--dns=8.8.8.8\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1400\"\nDOCKER_OPTS=\"--x  --bip=10.2.0.1/24 --dns=8.8.8.8 --ip-masq=true --mtu=1400\"\n"
    );
    // the environment counts too, the file wins over it
    let v = merge_vars(
        [
            ("FLANNEL_MTU".to_string(), "9000".to_string()),
            ("FLANNEL_SUBNET".to_string(), "10.9.9.1/24".to_string()),
        ],
        Some("FLANNEL_SUBNET=10.3.0.1/24\n"),
    );
    assert_eq!(
        render(&v, &Options::default()),
        "DOCKER_OPT_BIP=\"--bip=10.3.0.1/24\"\nDOCKER_OPT_MTU=\"--mtu=9000\"\nDOCKER_OPTS=\" --bip=10.3.0.1/24 --mtu=9000\"\n"
    );
}

#[test]
fn run_writes_the_output_file() {
    let tmp = scratch("run");
    let env = tmp.path().join("subnet.env");
    let outp = tmp.path().join("docker_opts.env");
    fs::write(&env, SAMPLE).unwrap();
    let a = args(&["-f", env.to_str().unwrap(), "-d", outp.to_str().unwrap()]);
    run(&a).unwrap();
    assert_eq!(fs::read_to_string(&outp).unwrap(), out(SAMPLE, &[]));
    assert_eq!(
        fs::metadata(&outp).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // replaced, not appended to
    run(&a).unwrap();
    assert_eq!(fs::read_to_string(&outp).unwrap(), out(SAMPLE, &[]));
    let mut names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["docker_opts.env", "subnet.env"]);
}

#[test]
fn seed_003_writes_into_the_subnet_file_itself() {
    // ExecStartPost=mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d /run/flannel/subnet.env
    let tmp = scratch("seed3");
    let env = tmp.path().join("subnet.env");
    fs::write(&env, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.8.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
    let a = args(&[
        "-k",
        "DOCKER_NETWORK_OPTIONS",
        "-f",
        env.to_str().unwrap(),
        "-d",
        env.to_str().unwrap(),
    ]);
    run(&a).unwrap();
    // what the seed shows in /run/flannel/subnet.env afterwards
    assert_eq!(
        fs::read_to_string(&env).unwrap(),
        "DOCKER_OPT_BIP=\"--bip=10.244.8.1/24\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
         DOCKER_OPT_MTU=\"--mtu=1450\"\n\
         DOCKER_NETWORK_OPTIONS=\" --bip=10.244.8.1/24 --ip-masq=false --mtu=1450\"\n"
    );
}

#[test]
fn run_errors() {
    let tmp = scratch("err");
    let env = tmp.path().join("subnet.env");
    let outp = tmp.path().join("out.env");
    fs::write(
        &env,
        SAMPLE.replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=1"),
    )
    .unwrap();
    let e = run(&args(&[
        "-f",
        env.to_str().unwrap(),
        "-d",
        outp.to_str().unwrap(),
    ]))
    .unwrap_err();
    assert_eq!(e.to_string(), "Invalid value of FLANNEL_IPMASQ: 1");
    assert!(
        !outp.exists(),
        "the script fails before touching the output"
    );
    // with -m the value is not looked at
    run(&args(&[
        "-m",
        "-f",
        env.to_str().unwrap(),
        "-d",
        outp.to_str().unwrap(),
    ]))
    .unwrap();
    assert!(outp.exists());

    // a missing env file is not an error (the process environment may hold the values)
    let outp2 = tmp.path().join("out2.env");
    run(&args(&[
        "-c",
        "-f",
        tmp.path().join("missing.env").to_str().unwrap(),
        "-d",
        outp2.to_str().unwrap(),
    ]))
    .unwrap();
    assert!(fs::read_to_string(&outp2)
        .unwrap()
        .starts_with("DOCKER_OPTS=\""));
}

#[test]
fn route_conflict_check() {
    let routes = "default via 192.168.1.1 dev ens33\n10.1.74.0/24 via 192.168.1.20 dev ens33\n10.1.75.0/24 dev docker0 scope link\n";
    assert_eq!(
        route_conflict("10.1.74.1/24", routes).as_deref(),
        Some("10.1.74.0/24 via 192.168.1.20 dev ens33")
    );
    assert_eq!(
        route_conflict("10.1.75.1/24", routes),
        None,
        "a link route is fine"
    );
    assert_eq!(route_conflict("10.1.76.1/24", routes), None);
}
