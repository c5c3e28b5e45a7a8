//! The deployment artifacts: the Kubernetes manifest, the Dockerfile, the
//! systemd unit and its environment file. Each is checked against what the
//! agent really accepts (its flag set, `--print-config`, its config parser,
//! the `docker-opts` command line), the scripts in them are run (the
//! DaemonSet's config-seeding init container against a real etcd, the
//! image's iptables wrapper in a network namespace, the flanneld sysconfig
//! shim), and the unit goes through `systemd-analyze verify` when that is
//! installed. Nothing here can build the image or start systemd: that needs
//! a docker engine and a booted systemd, neither of which the test machines
//! have.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use overlay_tests::{agent::agent_binary, etcd::Etcd, netns::Testbed};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `FLANNELD_<NAME>` for every daemon flag the agent reads from the
/// environment (all but help, version and print-config).
fn flag_env_names() -> BTreeSet<String> {
    let cmd = overlay_agent::cli::command();
    cmd.get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !["help", "version", "print-config"].contains(l))
        .map(overlay_agent::cli::env_name)
        .collect()
}

/// `overlay-agent [args] --print-config` with exactly `env` as environment.
fn print_config(program: &Path, args: &[&str], env: &BTreeMap<String, String>) -> Value {
    let out = Command::new(program)
        .args(args)
        .arg("--print-config")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "--print-config with {env:?} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

// ---------------------------------------------------------------------------
// Kubernetes manifest
// ---------------------------------------------------------------------------

fn manifest() -> Vec<Value> {
    let text = read("deploy/kubernetes/overlay-agent.yaml");
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: serde_norway::Value = serde::Deserialize::deserialize(doc).expect("the manifest is valid YAML");
        if v.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(v).expect("string keys"));
    }
    docs
}

fn object<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// A container's environment as the kubelet would set it, with the
/// ConfigMap `cm` (optional keys that are absent leave the variable unset)
/// and `pod_ip` for status.podIP.
fn resolve_env(container: &Value, cm: &BTreeMap<String, String>, pod_ip: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        if let Some(v) = e.get("value") {
            let v = v.as_str().unwrap_or_else(|| panic!("{name}: env values are strings in Kubernetes: {v}")).to_string();
            env.insert(name, v);
        } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
            assert_eq!(r["name"], "overlay-agent-cfg", "{e}");
            match cm.get(r["key"].as_str().unwrap()) {
                Some(v) => {
                    env.insert(name, v.clone());
                }
                None => assert_eq!(r["optional"], true, "{name}: key {} missing from the ConfigMap", r["key"]),
            }
        } else if let Some(f) = e.pointer("/valueFrom/fieldRef/fieldPath") {
            assert_eq!(f, "status.podIP", "{e}");
            env.insert(name, pod_ip.to_string());
        } else {
            panic!("unexpected env entry {e}");
        }
    }
    env
}

fn config_map(docs: &[Value]) -> BTreeMap<String, String> {
    let cm = object(docs, "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "overlay-agent-cfg");
    serde_json::from_value(cm["data"].clone()).unwrap()
}

#[test]
fn manifest_is_a_privileged_host_network_daemonset() {
    let docs = manifest();
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], "kube-system", "{}", d["kind"]);
    }
    let ds = object(&docs, "DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let spec = &ds["spec"]["template"]["spec"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the selector must match the pod labels");
    }
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["serviceAccountName"], object(&docs, "ServiceAccount")["metadata"]["name"]);
    // Tolerates every taint: an entry with operator Exists and no key/effect.
    assert!(
        spec["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none()),
        "{}",
        spec["tolerations"]
    );

    let agent = named(&spec["containers"], "overlay-agent");
    let init = named(&spec["initContainers"], "seed-network-config");
    assert_eq!(agent["securityContext"]["privileged"], true);
    let image = agent["image"].as_str().unwrap();
    assert_eq!(init["image"], image, "the init container uses the agent's image (it has etcdctl)");
    let (_, tag) = image.rsplit_once(':').expect("a tagged image");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "image tag = the workspace version");
    assert!(agent.get("command").is_none(), "the image's ENTRYPOINT is the agent");
    for r in ["cpu", "memory"] {
        assert!(agent["resources"]["requests"][r].is_string(), "requests.{r}");
    }
    assert!(agent["resources"]["limits"]["memory"].is_string());

    // Volumes: bpffs shared both ways, the subnet file's folder, modules,
    // the xtables lock; every mount has a volume and every volume is used.
    let volumes: BTreeMap<&str, &Value> =
        spec["volumes"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
    let mut used = BTreeSet::new();
    for c in spec["containers"].as_array().unwrap().iter().chain(spec["initContainers"].as_array().unwrap()) {
        for m in c["volumeMounts"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap();
            assert!(volumes.contains_key(name), "mount {name} has no volume");
            used.insert(name);
        }
    }
    assert_eq!(used, volumes.keys().copied().collect(), "unused volumes");
    let mount = |path: &str| -> &Value {
        agent["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == path).unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let host_path = |path: &str| -> &Value {
        let m = mount(path);
        &volumes[m["name"].as_str().unwrap()]["hostPath"]
    };
    assert_eq!(mount("/sys/fs/bpf")["mountPropagation"], "Bidirectional");
    assert_eq!(host_path("/sys/fs/bpf")["path"], "/sys/fs/bpf");
    assert_eq!(host_path("/run/flannel")["path"], "/run/flannel");
    assert_eq!(mount("/lib/modules")["readOnly"], true);
    assert_eq!(host_path("/lib/modules")["path"], "/lib/modules");
    assert_eq!(host_path("/run/xtables.lock")["type"], "FileOrCreate");
    let tls = &volumes[mount("/etc/overlay-agent/etcd-tls")["name"].as_str().unwrap()]["secret"];
    assert_eq!(tls["optional"], true, "the etcd TLS Secret is optional");

    // Every FLANNELD_* variable is a real flag.
    let known = flag_env_names();
    for c in [agent, init] {
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            if name.starts_with("FLANNELD_") {
                assert!(known.contains(name), "{name} is not a flag's variable; known: {known:?}");
            }
        }
    }

    // What the agent makes of its environment, exactly as the kubelet sets it.
    let cm = config_map(&docs);
    let env = resolve_env(agent, &cm, "192.0.2.77");
    let cfg = print_config(&agent_binary(), &[], &env);
    let endpoints: Vec<&str> = cm["etcd-endpoints"].split(',').collect();
    assert_eq!(cfg["etcd-endpoints"], json!(endpoints));
    assert_eq!(cfg["etcd-prefix"], cm["etcd-prefix"].as_str());
    assert_eq!(cfg["ip-masq"], true, "kube-flannel masquerades");
    assert_eq!(cfg["subnet-file"], "/run/flannel/subnet.env");
    assert_eq!(cfg["bridge"], "cni0");
    assert_eq!(cfg["bpf-pin-dir"], "/sys/fs/bpf/overlay");
    assert_eq!(cfg["healthz-ip"], "192.0.2.77");
    assert_eq!(cfg["etcd-cafile"], Value::Null, "TLS is off until the ConfigMap lines are uncommented");

    // The probes and the port all say --healthz-port.
    let port = cfg["healthz-port"].as_u64().unwrap();
    assert_ne!(port, 0, "the health server must be on");
    assert_eq!(named(&agent["ports"], "healthz")["containerPort"], port);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(get["port"] == port || get["port"] == "healthz", "{probe} port {}", get["port"]);
        assert!(get.get("host").is_none(), "{probe}: the kubelet connects to the pod IP, where the agent listens");
    }

    // With the TLS lines uncommented the files reach the agent and etcdctl.
    let mut cm_tls = cm.clone();
    let yaml = read("deploy/kubernetes/overlay-agent.yaml");
    for line in yaml.lines().map(str::trim).filter(|l| l.starts_with("# etcd-") && l.contains("file: ")) {
        let (k, v) = line.trim_start_matches("# ").split_once(": ").unwrap();
        cm_tls.insert(k.to_string(), v.to_string());
    }
    assert_eq!(cm_tls.len(), cm.len() + 3, "three commented TLS keys in the ConfigMap");
    let cfg = print_config(&agent_binary(), &[], &resolve_env(agent, &cm_tls, "192.0.2.77"));
    for (flag, file) in [("etcd-cafile", "ca.crt"), ("etcd-certfile", "tls.crt"), ("etcd-keyfile", "tls.key")] {
        let path = cfg[flag].as_str().unwrap_or_else(|| panic!("{flag} unset"));
        assert_eq!(path, format!("{}/{file}", mount("/etc/overlay-agent/etcd-tls")["mountPath"].as_str().unwrap()));
    }
    let init_env = resolve_env(init, &cm_tls, "192.0.2.77");
    assert_eq!(init_env["ETCDCTL_CACERT"], cfg["etcd-cafile"].as_str().unwrap());
    assert_eq!(init_env["ETCDCTL_ENDPOINTS"], cm["etcd-endpoints"]);

    // net-conf.json is a config the agent accepts.
    let net = overlay_agent::config::NetworkConfig::parse(&cm["net-conf.json"]).expect("net-conf.json parses");
    assert_eq!(net.network.to_string(), "10.244.0.0/16");
}

/// Kubernetes' expansion of `$(VAR)` in command and args: defined variables
/// are substituted, `$$` is a literal `$`, anything else stays as written.
fn kube_expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(j) if env.contains_key(&body[..j]) => {
                    out.push_str(&env[&body[..j]]);
                    rest = &body[j + 1..];
                }
                _ => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn run_seed(script: &str, env: &BTreeMap<String, String>) -> Output {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "seed script failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// The init container's script, run as the kubelet would (same command,
/// same environment) against a real etcd: it creates `<prefix>/config` from
/// net-conf.json when absent and never overwrites it.
#[test]
fn seed_init_container_writes_the_config_only_when_absent() {
    let docs = manifest();
    let cm = config_map(&docs);
    let init = named(&object(&docs, "DaemonSet")["spec"]["template"]["spec"]["initContainers"], "seed-network-config");
    let command: Vec<&str> = init["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(command, ["/bin/sh", "-c"]);
    let args = init["args"].as_array().unwrap();
    assert_eq!(args.len(), 1);
    let raw_script = args[0].as_str().unwrap();

    let etcd = Etcd::start().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let net_conf = scratch.path().join("net-conf.json");
    std::fs::write(&net_conf, &cm["net-conf.json"]).unwrap();
    let prefix = "/seed-test/network";
    let mut env = resolve_env(init, &cm, "192.0.2.77");
    env.insert("ETCDCTL_ENDPOINTS".into(), etcd.endpoint());
    env.insert("FLANNELD_ETCD_PREFIX".into(), format!("{prefix}/"));
    env.insert("NET_CONF".into(), net_conf.display().to_string());
    let script = kube_expand(raw_script, &env);
    assert_eq!(script, raw_script, "the kubelet would substitute something in the script");

    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).to_string();
    let key = format!("{prefix}/config");
    let first = run_seed(&script, &env);
    assert!(stdout(&first).starts_with(&format!("wrote {key}")), "{}", stdout(&first));
    let stored = etcd.get(&key).unwrap().expect("config written");
    let parsed: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(parsed, serde_json::from_str::<Value>(&cm["net-conf.json"]).unwrap());
    overlay_agent::config::NetworkConfig::parse(&stored).expect("the agent accepts what was written");

    let again = run_seed(&script, &env);
    assert_eq!(stdout(&again), format!("{key} already holds net-conf.json\n"));

    let theirs = r#"{"Network":"10.50.0.0/16","Backend":{"Type":"host-gw"}}"#;
    etcd.put(&key, theirs).unwrap();
    let differs = run_seed(&script, &env);
    assert!(stdout(&differs).contains("differs from net-conf.json; keeping etcd's"), "{}", stdout(&differs));
    assert_eq!(etcd.get(&key).unwrap().as_deref(), Some(theirs));

    // etcd unreachable: gives up without failing the pod (the agent waits).
    let mut down = env.clone();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    down.insert("ETCDCTL_ENDPOINTS".into(), format!("http://{closed}"));
    down.insert("ETCD_WAIT_ATTEMPTS".into(), "1".into());
    let gave_up = run_seed(&script, &down);
    assert!(stdout(&gave_up).contains("not reachable"), "{}", stdout(&gave_up));
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// Instructions of a Dockerfile: (KEYWORD, rest), continuation lines joined,
/// comments and blank lines dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (kw, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push((kw.to_ascii_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    assert!(current.is_empty(), "the Dockerfile ends inside a continued line");
    out
}

#[test]
fn dockerfile_builds_like_xtask_and_ships_the_agent() {
    let ins = dockerfile_instructions(&read("Dockerfile"));
    let known = ["FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "ENTRYPOINT", "STOPSIGNAL", "LABEL"];
    for (kw, _) in &ins {
        assert!(known.contains(&kw.as_str()), "unexpected instruction {kw}");
    }
    let froms: Vec<usize> = ins.iter().enumerate().filter(|(_, (k, _))| k == "FROM").map(|(i, _)| i).collect();
    assert_eq!(froms.len(), 2, "two stages");
    let build = &ins[froms[0]..froms[1]];
    let fin = &ins[froms[1]..];
    assert!(build[0].1.contains("rust:") && build[0].1.contains("-bookworm") && build[0].1.ends_with(" AS build"), "{:?}", build[0]);
    assert!(fin[0].1.ends_with("debian:bookworm-slim"), "{:?}", fin[0]);

    let arg = |name: &str| -> String {
        ins.iter()
            .find_map(|(k, r)| (k == "ARG").then(|| r.strip_prefix(&format!("{name}="))).flatten())
            .unwrap_or_else(|| panic!("ARG {name}"))
            .to_string()
    };
    // The toolchain of shared/reference/toolchain.md: Rust 1.95, LLVM 22.
    assert!(arg("RUST_VERSION").starts_with("1.95"));
    assert_eq!(arg("LLVM_MAJOR"), "22");
    assert!(arg("RUST_NIGHTLY").starts_with("nightly-"));
    let build_runs: String = build.iter().filter(|(k, _)| k == "RUN").map(|(_, r)| r.as_str()).collect::<Vec<_>>().join("\n");
    // What xtask/src/setup.rs installs for the build ...
    let setup = read("xtask/src/setup.rs");
    for (pkg, in_setup) in [("\"llvm-${LLVM_MAJOR}-dev\"", "llvm-{llvm_major}-dev"), ("\"libpolly-${LLVM_MAJOR}-dev\"", "libpolly-{llvm_major}-dev"), ("protobuf-compiler", "\"protobuf-compiler\"")] {
        assert!(setup.contains(in_setup), "xtask setup no longer installs {in_setup}: update the Dockerfile");
        assert!(build_runs.contains(pkg), "the build stage does not install {pkg}");
    }
    for needed in [
        "--component rust-src",
        "LLVM_PREFIX=\"/usr/lib/llvm-${LLVM_MAJOR}\"",
        "cargo install bpf-linker --locked --no-default-features --features \"llvm-${LLVM_MAJOR}\"",
        "toolchains/nightly-${host}",
        "cargo xtask build --release",
        "target/release/overlay-agent",
    ] {
        assert!(build_runs.contains(needed), "build stage lacks {needed:?}");
    }
    assert!(build.iter().any(|(k, r)| k == "COPY" && r == ". ."), "the source is copied in");

    let fin_runs: String = fin.iter().filter(|(k, _)| k == "RUN").map(|(_, r)| r.as_str()).collect();
    for pkg in ["iptables", "iproute2", "etcd-client", "ca-certificates"] {
        assert!(fin_runs.split_whitespace().any(|w| w == pkg), "final stage lacks {pkg}");
    }
    assert!(fin.iter().any(|(k, r)| k == "COPY" && r == "--from=build /out/overlay-agent /usr/local/bin/overlay-agent"));
    // Every COPY from the context names a file that exists.
    for (k, r) in &ins {
        if k == "COPY" && !r.contains("--from=") && r != ". ." {
            let src = r.split_whitespace().find(|w| !w.starts_with("--")).unwrap();
            assert!(repo().join(src).is_file(), "COPY source {src} missing");
        }
    }
    let entry = fin.iter().find(|(k, _)| k == "ENTRYPOINT").expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry.1).expect("exec-form ENTRYPOINT (signals reach the agent)");
    assert_eq!(entry, ["/usr/local/bin/overlay-agent"]);

    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "/target"), "target/ must not be sent to the docker daemon");
}

/// The image's iptables wrapper picks the backend holding the host's rules.
#[test]
fn image_iptables_wrapper_follows_the_hosts_backend() {
    let tb = Testbed::new(1).unwrap();
    let host = tb.host(0);
    let wrapper = repo().join("deploy/docker/iptables");
    let backend = |cache: &str| -> String {
        let out = host
            .run(&["env", &format!("OVERLAY_IPTABLES_CACHE={}/{cache}", tb.dir().display()), "sh", wrapper.to_str().unwrap(), "--overlay-backend"])
            .unwrap();
        out.trim().to_string()
    };
    assert_eq!(backend("empty"), "nft", "no rules anywhere: nf_tables (Debian's default)");
    assert_eq!(backend("empty"), "nft", "cached");
    host.run(&["iptables-legacy", "-w", "-t", "nat", "-N", "LEGACY-ONLY"]).unwrap();
    host.run(&["iptables-legacy", "-w", "-t", "nat", "-A", "LEGACY-ONLY", "-j", "RETURN"]).unwrap();
    assert_eq!(backend("legacy-rules"), "legacy", "a host with legacy rules");
    // kubelet's hint wins over rule counts.
    host.run(&["iptables-nft", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]).unwrap();
    assert_eq!(backend("hint"), "nft");
    // And it passes the arguments through to that backend.
    let out = host
        .run(&["env", &format!("OVERLAY_IPTABLES_CACHE={}/hint", tb.dir().display()), "sh", wrapper.to_str().unwrap(), "-w", "-t", "mangle", "-S"])
        .unwrap();
    assert!(out.contains("-N KUBE-IPTABLES-HINT"), "{out}");
}

// ---------------------------------------------------------------------------
// systemd unit and environment file
// ---------------------------------------------------------------------------

/// A unit file as (section, key) → values in order (repeated keys append;
/// an empty assignment resets, as systemd does).
fn parse_unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not an assignment: {line}"));
        let values = out.entry((section.clone(), k.trim().to_string())).or_default();
        if v.trim().is_empty() {
            values.clear();
        } else {
            values.push(v.trim().to_string());
        }
    }
    out
}

/// Copies `unit` (and optionally a drop-in) to a scratch folder with the
/// executables pointed at ones that exist here, and runs
/// `systemd-analyze verify` on it; panics when systemd-analyze is missing.
fn systemd_verify(unit: &str, dropin: Option<&str>, rewrite: &[(&str, &Path)]) -> Output {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is not installed (Debian package systemd; `cargo xtask setup` installs it)");
    let dir = tempfile::tempdir().unwrap();
    let fix = |s: &str| rewrite.iter().fold(s.to_string(), |acc, (from, to)| acc.replace(from, to.to_str().unwrap()));
    let path = dir.path().join("overlay-agent.service");
    std::fs::write(&path, fix(unit)).unwrap();
    if let Some(d) = dropin {
        std::fs::create_dir(dir.path().join("overlay-agent.service.d")).unwrap();
        std::fs::write(dir.path().join("overlay-agent.service.d/flanneld-sysconfig.conf"), fix(d)).unwrap();
    }
    Command::new(analyze).arg("verify").arg(&path).env("SYSTEMD_LOG_COLOR", "0").output().unwrap()
}

#[test]
fn systemd_unit_is_flanneld_like_and_verifies() {
    let text = read("dist/overlay-agent.service");
    let unit = parse_unit(&text);
    let one = |section: &str, key: &str| -> String {
        let v = unit.get(&(section.to_string(), key.to_string())).unwrap_or_else(|| panic!("[{section}] {key} missing"));
        assert_eq!(v.len(), 1, "[{section}] {key} set {} times", v.len());
        v[0].clone()
    };
    let words = |section: &str, key: &str| -> Vec<String> {
        unit.get(&(section.to_string(), key.to_string())).into_iter().flatten().flat_map(|v| v.split_whitespace().map(String::from)).collect()
    };
    assert_eq!(one("Service", "Type"), "notify");
    assert!(words("Unit", "After").contains(&"network-online.target".to_string()));
    assert!(words("Unit", "Wants").contains(&"network-online.target".to_string()));
    assert!(words("Unit", "Before").contains(&"docker.service".to_string()));
    assert_eq!(one("Service", "EnvironmentFile"), "-/etc/sysconfig/overlay-agent");
    assert_eq!(one("Service", "ExecStart"), "/usr/local/bin/overlay-agent $FLANNEL_OPTIONS");
    assert_eq!(one("Service", "ExecStartPost"), "/usr/local/bin/overlay-agent docker-opts -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker");
    assert_eq!(one("Service", "Restart"), "on-failure");
    assert!(one("Service", "LimitNOFILE").parse::<u64>().unwrap() >= 65536);
    assert_eq!(one("Install", "WantedBy"), "multi-user.target");
    // Stopping must leave the data path: nothing runs at stop.
    for key in ["ExecStop", "ExecStopPost", "ExecStartPre"] {
        assert!(!unit.contains_key(&("Service".to_string(), key.to_string())), "{key} must not be set");
    }
    assert!(!unit.contains_key(&("Service".to_string(), "KillSignal".to_string())), "SIGTERM is the agent's clean exit");

    // The ExecStartPost command line is one the agent accepts.
    let post = one("Service", "ExecStartPost");
    match overlay_agent::cli::parse_from_env(post.split_whitespace(), |_| None).unwrap().command {
        overlay_agent::cli::Command::DockerOpts(d) => {
            assert_eq!(d.key, "DOCKER_NETWORK_OPTIONS");
            assert_eq!(d.out_file, Path::new("/run/flannel/docker"));
            assert_eq!(d.env_file, Path::new("/run/flannel/subnet.env"));
        }
        other => panic!("{other:?}"),
    }

    let binary = agent_binary();
    let shim = repo().join("dist/flanneld-env");
    let dropin = read("dist/flanneld-sysconfig.conf");
    let rewrite = [("/usr/local/bin/overlay-agent", binary.as_path()), ("/usr/local/libexec/overlay-agent/flanneld-env", shim.as_path())];
    for (what, dropin) in [("the unit", None), ("the unit with the flanneld-sysconfig drop-in", Some(dropin.as_str()))] {
        let out = systemd_verify(&text, dropin, &rewrite);
        let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify of {what}: {}\n{said}", out.status);
    }
    // The drop-in replaces ExecStart (an empty assignment first) and adds
    // flanneld's file.
    let d = parse_unit(&dropin);
    assert_eq!(d[&("Service".to_string(), "ExecStart".to_string())], ["/usr/local/libexec/overlay-agent/flanneld-env $FLANNEL_OPTIONS"]);
    assert!(dropin.contains("ExecStart=\nExecStart="), "the drop-in must reset ExecStart first");
    assert_eq!(d[&("Service".to_string(), "EnvironmentFile".to_string())], ["-/etc/sysconfig/flanneld"]);
}

/// Assignments of a systemd EnvironmentFile (KEY=VALUE, optional double
/// quotes, # comments). With `commented`, `#KEY=VALUE` examples too.
fn env_assignments(text: &str, commented: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let line = match line.strip_prefix('#') {
            Some(l) if commented => l,
            Some(_) => continue,
            None => line,
        };
        let Some((k, v)) = line.split_once('=') else { continue };
        let is_name = !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !is_name {
            continue;
        }
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    out
}

#[test]
fn env_file_sets_only_flags_the_agent_knows() {
    let text = read("dist/overlay-agent.env");
    let known = flag_env_names();
    let set = env_assignments(&text, false);
    assert!(set.iter().any(|(k, _)| k == "FLANNELD_ETCD_ENDPOINTS") && set.iter().any(|(k, _)| k == "FLANNELD_ETCD_PREFIX"));
    for (k, _) in env_assignments(&text, true) {
        assert!(known.contains(&k) || k == "FLANNEL_OPTIONS", "{k} in dist/overlay-agent.env is not a flag's variable");
    }
    // Every variable the unit uses is defined there.
    assert!(set.iter().any(|(k, _)| k == "FLANNEL_OPTIONS"));

    // What the agent makes of the file as shipped: flanneld's defaults.
    let env: BTreeMap<String, String> = set.iter().filter(|(k, _)| k != "FLANNEL_OPTIONS").cloned().collect();
    let options = &set.iter().find(|(k, _)| k == "FLANNEL_OPTIONS").unwrap().1;
    let args: Vec<&str> = options.split_whitespace().collect();
    let cfg = print_config(&agent_binary(), &args, &env);
    assert_eq!(cfg["etcd-endpoints"], json!(["http://127.0.0.1:2379"]));
    assert_eq!(cfg["etcd-prefix"], "/coreos.com/network");
    assert_eq!(cfg["subnet-file"], "/run/flannel/subnet.env");
    assert_eq!(cfg["healthz-port"], 0);
    assert_eq!(cfg["ip-masq"], false);

    // The rename table in its comments maps onto real variables.
    for line in text.lines().filter(|l| l.contains("-> FLANNELD_")) {
        let rest = line.split("-> ").nth(1).unwrap();
        let new: String = rest.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        let new = new.as_str();
        assert!(known.contains(new), "{new} in the rename table is not a flag's variable");
    }
}

/// Style 2: flanneld's own /etc/sysconfig/flanneld, through dist/flanneld-env.
#[test]
fn flanneld_sysconfig_shim_maps_the_old_names() {
    let shim = repo().join("dist/flanneld-env");
    let run = |vars: &[(&str, &str)], args: &[&str]| -> Value {
        let mut env: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.insert("OVERLAY_AGENT".into(), agent_binary().display().to_string());
        print_config(&shim, args, &env)
    };
    // seed 001's file (packaged flanneld 0.7+).
    let cfg = run(&[("FLANNEL_ETCD_ENDPOINTS", "http://etcd:2379"), ("FLANNEL_ETCD_PREFIX", "/atomic.io/network"), ("FLANNEL_OPTIONS", "")], &[]);
    assert_eq!(cfg["etcd-endpoints"], json!(["http://etcd:2379"]));
    assert_eq!(cfg["etcd-prefix"], "/atomic.io/network");
    // seed 002's older names.
    let cfg = run(&[("FLANNEL_ETCD", "http://etcd1.example:2379"), ("FLANNEL_ETCD_KEY", "/coreos.com/network")], &["--ip-masq=true"]);
    assert_eq!(cfg["etcd-endpoints"], json!(["http://etcd1.example:2379"]));
    assert_eq!(cfg["etcd-prefix"], "/coreos.com/network");
    assert_eq!(cfg["ip-masq"], true);
    // The newer name wins over the older; the old names over FLANNELD_*
    // (flanneld-start passed them as flags); a flag over everything.
    let cfg = run(&[("FLANNEL_ETCD", "http://old:2379"), ("FLANNEL_ETCD_ENDPOINTS", "http://new:2379"), ("FLANNELD_ETCD_ENDPOINTS", "http://env:2379")], &[]);
    assert_eq!(cfg["etcd-endpoints"], json!(["http://new:2379"]));
    let cfg = run(&[("FLANNEL_ETCD_ENDPOINTS", "http://new:2379")], &["--etcd-endpoints=http://flag:2379"]);
    assert_eq!(cfg["etcd-endpoints"], json!(["http://flag:2379"]));
    // Nothing set: flanneld's defaults.
    let cfg = run(&[], &[]);
    assert_eq!(cfg["etcd-endpoints"], json!(["http://127.0.0.1:4001", "http://127.0.0.1:2379"]));
    assert_eq!(cfg["etcd-prefix"], "/coreos.com/network");
}

/// The settings file may hold FLANNELD_ETCD_PASSWORD (and names the etcd
/// client key): every documented install of it must leave it root-only.
/// Each documented `install -m MODE dist/overlay-agent.env DEST` is run
/// (into a scratch folder) and the file it makes is checked.
#[test]
fn env_file_is_installed_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().unwrap();
    let mut found = 0;
    for doc in ["docs/operations.md", "dist/overlay-agent.service", "README.md"] {
        for line in read(doc).lines() {
            let line = line.trim_start_matches(['#', ' ']);
            let Some(rest) = line.strip_prefix("install ") else { continue };
            let words: Vec<&str> = rest.split_whitespace().take_while(|w| !w.starts_with('#')).collect();
            if !words.contains(&"dist/overlay-agent.env") {
                continue;
            }
            found += 1;
            let dest = scratch.path().join(format!("env-{found}"));
            let args: Vec<String> = words[..words.len() - 1].iter().map(|w| w.to_string()).collect();
            let out = Command::new("install").args(&args).arg(&dest).current_dir(repo()).output().unwrap();
            assert!(out.status.success(), "{doc}: install {rest}: {}", String::from_utf8_lossy(&out.stderr));
            let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{doc}: `install {rest}` makes the settings file mode {mode:o}, readable by others");
        }
    }
    assert!(found >= 2, "the install of dist/overlay-agent.env is documented in docs/operations.md and the unit");

    // The DaemonSet: the password comes from a Secret, never the ConfigMap.
    let docs = manifest();
    let cm = config_map(&docs);
    assert!(cm.keys().all(|k| !k.contains("password")), "no password in the ConfigMap: {cm:?}");
    let text = read("deploy/kubernetes/overlay-agent.yaml");
    let at = text.find("name: FLANNELD_ETCD_PASSWORD").expect("the manifest shows where the etcd password goes");
    let block: String = text[at..].lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(block.contains("secretKeyRef"), "FLANNELD_ETCD_PASSWORD from a Secret: {block}");
}
