//! A real `dockerd` (Debian's docker.io) per node, inside the node's network
//! namespace, as the seeds run it: `dockerd $DOCKER_OPTS`.
//!
//! Every daemon has its own data root, exec root, pidfile and API socket in a
//! scratch directory of its own, so several run side by side on one machine
//! (one per node of a testbed, and per parallel test):
//!
//! ```text
//!   nsenter --net=/var/run/netns/<node> dockerd --data-root <dir>/data --exec-root <dir>/exec
//!       --pidfile <dir>/docker.pid -H unix://<dir>/docker.sock <opts...>
//! ```
//!
//! dockerd starts its own containerd under the exec root; containers' network
//! namespaces are bind mounts under `<dir>/exec/netns`, their root file
//! systems overlay mounts under `<dir>/data`. No image can be pulled here, so
//! an image `bb` is imported from the machine's static busybox
//! (`/bin/busybox`, Debian's busybox-static), once per daemon.
//!
//! The CLI is always Debian's `/usr/bin/docker` with `-H unix://<dir>/docker.sock`
//! (another, unrelated `docker` may come first in PATH), and dockerd gets a
//! PATH of the system directories only, so it runs Debian's containerd, runc,
//! docker-init and docker-proxy.
//!
//! [`Dockerd`]'s `Drop` removes everything, also when the test panicked:
//! containers (`docker rm -f`), then SIGTERM to the pid in the pidfile and a
//! wait; then SIGKILL to whatever still names the directory on its command
//! line (dockerd, containerd, shims, with their descendants: the containers'
//! processes), unmounts what is still mounted below the directory, and
//! deletes it.
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::{ChildHandle, Netns};
use crate::util::{self, make_owned_dir, record_pid};

/// Debian's docker CLI (docker.io). Not `docker` from PATH: an unrelated
/// /usr/local/bin/docker may come first.
pub const DOCKER_CLI: &str = "/usr/bin/docker";
/// Debian's dockerd (docker.io).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The static busybox the test image is made of (busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
/// The image every container runs: busybox and a link per applet.
pub const IMAGE: &str = "bb";
/// PATH for dockerd: Debian's containerd, runc, docker-init, docker-proxy.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How long dockerd may take to answer on its socket (2 shared cores).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a CLI call may take before it is killed and reported.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd` with stdout and stderr captured and `input` on stdin, killing
/// it (and its descendants) if it has not finished within `timeout`.
pub(crate) fn output_timeout(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().expect("piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            util::signal_tree(child.id(), libc::SIGKILL);
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            bail!(
                "{cmd:?} did not finish within {timeout:?} (killed); stderr: {}",
                String::from_utf8_lossy(&stderr).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output { status, stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default() })
}

/// The words `dockerd $KEY` receives after `. <env_file>` in sh: exactly
/// what the seeds do with mk-docker-opts.sh's (or `overlay-agent
/// docker-opts`') output, shell quoting and word splitting included.
pub fn opts_from_env_file(env_file: &Path, key: &str) -> Result<Vec<String>> {
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || key.is_empty() {
        bail!("{key:?} is not a shell variable name");
    }
    let out = output_timeout(
        Command::new("sh").args(["-c", &format!(". \"$1\" && printf '%s\\n' ${key}"), "sh"]).arg(env_file),
        None,
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!("sourcing {} failed: {}", env_file.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let words: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    if words.is_empty() {
        bail!("{} sets no {key} (or an empty one):\n{}", env_file.display(), fs::read_to_string(env_file).unwrap_or_default());
    }
    Ok(words)
}

/// Pids of the processes whose command line contains `needle` (this
/// process excluded).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else { return vec![] };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|m| PathBuf::from(m.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// A running container: its name and full id.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub id: String,
}

/// A user-defined docker network (`docker network create`) and its bridge.
#[derive(Clone, Debug)]
pub struct DockerNetwork {
    pub name: String,
    pub id: String,
    /// The Linux bridge in the node namespace: `br-<first 12 hex of id>`
    /// unless `com.docker.network.bridge.name` set another name.
    pub bridge: String,
}

/// One dockerd in a node's network namespace, with its own state directory.
pub struct Dockerd {
    ns: Netns,
    dir: PathBuf,
    opts: Vec<String>,
    child: Option<ChildHandle>,
    /// Ids of the containers this harness started (their cgroups are removed
    /// if a container had to be killed).
    containers: Vec<String>,
    starts: usize,
}

impl std::fmt::Debug for Dockerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dockerd({} in {})", self.dir.display(), self.ns.name())
    }
}

impl Dockerd {
    /// Starts `dockerd <own dirs> <opts>` in `ns` (a testbed host), waits
    /// until it answers on its socket, and imports the busybox image.
    /// `opts` are dockerd's extra arguments, e.g. from [`opts_from_env_file`]
    /// or `["--bip=10.1.74.1/24", "--ip-masq=true", "--mtu=1472"]`.
    pub fn start(ns: &Netns, opts: &[String]) -> Result<Dockerd> {
        for (what, path) in [("dockerd", DOCKERD), ("docker CLI", DOCKER_CLI), ("busybox", BUSYBOX)] {
            if !Path::new(path).exists() {
                bail!("{what} {path} is missing: run `cargo xtask setup` (Debian packages docker.io, busybox-static)");
            }
        }
        let (_, dir) = make_owned_dir("docker")?;
        let mut d = Dockerd { ns: ns.clone(), dir, opts: opts.to_vec(), child: None, containers: Vec::new(), starts: 0 };
        // From here on, Drop cleans up whatever fails.
        d.spawn()?;
        d.ensure_image()?;
        Ok(d)
    }

    /// The scratch directory holding data root, exec root, socket, pidfile, log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `unix:///.../docker.sock`, for `docker -H`.
    pub fn host_uri(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("docker.pid")
    }

    pub fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// dockerd's stdout and stderr (all starts, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The last `max` bytes of dockerd's log.
    pub fn log_tail(&self, max: usize) -> String {
        util::tail(&self.log_path(), max)
    }

    /// The node namespace it runs in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The options it was (last) started with.
    pub fn opts(&self) -> &[String] {
        &self.opts
    }

    /// dockerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().filter(|c| c.is_running()).map(|c| c.pid())
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Every process still naming this daemon's directory on its command
    /// line: dockerd, its containerd, the containers' shims.
    pub fn processes(&self) -> Vec<u32> {
        processes_mentioning(&self.dir.to_string_lossy())
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let mut cmd = self.ns.command(DOCKERD);
        cmd.arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("--pidfile")
            .arg(self.pidfile())
            .arg("-H")
            .arg(self.host_uri())
            .args(&self.opts)
            .env("PATH", SYSTEM_PATH)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = self.ns.spawn(cmd)?;
        record_pid(&self.dir, child.pid());
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready()
    }

    /// Waits until dockerd answers `docker version` on its socket; fails
    /// with its log tail if it exits or does not answer in time.
    fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        let child = self.child.as_ref().expect("spawned");
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "dockerd in netns {} exited ({status}) instead of starting; opts {:?}; log tail:\n{}",
                    self.ns.name(),
                    self.opts,
                    self.log_tail(4000)
                );
            }
            if self.socket().exists() {
                let out = output_timeout(
                    self.cli_command().args(["version", "--format", "{{.Server.Version}}"]),
                    None,
                    Duration::from_secs(20),
                );
                if matches!(&out, Ok(o) if o.status.success()) {
                    // Containerd's and dockerd's pids, for cleanup_stale().
                    for pid in self.processes() {
                        record_pid(&self.dir, pid);
                    }
                    return Ok(());
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "dockerd in netns {} does not answer on {} after {READY_TIMEOUT:?}; opts {:?}; log tail:\n{}",
                    self.ns.name(),
                    self.socket().display(),
                    self.opts,
                    self.log_tail(4000)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/usr/bin/docker -H unix://<socket>`, with a CLI config dir of its own
    /// (nothing is written to ~/.docker), for the caller to add arguments.
    pub fn cli_command(&self) -> Command {
        let mut cmd = Command::new(DOCKER_CLI);
        cmd.env("DOCKER_CONFIG", self.dir.join("cli")).arg("-H").arg(self.host_uri());
        cmd
    }

    /// `docker <args>` through this daemon's socket, whatever the exit status.
    pub fn docker_output(&self, args: &[&str]) -> Result<Output> {
        output_timeout(self.cli_command().args(args), None, CLI_TIMEOUT)
    }

    /// `docker <args>`; a non-zero exit is an error naming the command, its
    /// stderr and dockerd's log tail. Returns stdout.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = self.docker_output(args)?;
        if !out.status.success() {
            bail!(
                "`docker {}` ({}) failed: {}\n--- dockerd log tail ---\n{}",
                args.join(" "),
                self.ns.name(),
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_tail(1500)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports image [`IMAGE`] (busybox and a link per applet) unless this
    /// daemon already has it.
    pub fn ensure_image(&self) -> Result<()> {
        if self.docker_output(&["image", "inspect", IMAGE])?.status.success() {
            return Ok(());
        }
        let root = self.dir.join("bb-rootfs");
        let bin = root.join("bin");
        if !bin.join("busybox").exists() {
            fs::create_dir_all(&bin)?;
            fs::create_dir_all(root.join("tmp"))?;
            fs::copy(BUSYBOX, bin.join("busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
            let list = output_timeout(Command::new(BUSYBOX).arg("--list"), None, Duration::from_secs(10))?;
            for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
                if !applet.is_empty() && applet != "busybox" {
                    std::os::unix::fs::symlink("busybox", bin.join(applet))?;
                }
            }
        }
        let tar = output_timeout(Command::new("tar").arg("-C").arg(&root).args(["-c", "."]), None, Duration::from_secs(30))?;
        if !tar.status.success() {
            bail!("tar of {} failed: {}", root.display(), String::from_utf8_lossy(&tar.stderr));
        }
        let out = output_timeout(self.cli_command().args(["import", "-", IMAGE]), Some(&tar.stdout), CLI_TIMEOUT)?;
        if !out.status.success() {
            bail!("docker import of the busybox image failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log_tail(1500));
        }
        Ok(())
    }

    /// `docker run -d --init --name <name> [--network <network>] bb sleep 600`.
    /// (`--init` so that `sleep` is not PID 1, which ignores SIGTERM and
    /// would hold every stop for 10 s.)
    pub fn run_container(&mut self, name: &str, network: Option<&str>) -> Result<Container> {
        let mut extra = vec![];
        if let Some(n) = network {
            extra.extend(["--network", n]);
        }
        self.run_container_with(name, &extra, &["sleep", "600"])
    }

    /// `docker run -d --init --name <name> <extra...> bb <command...>`.
    pub fn run_container_with(&mut self, name: &str, extra: &[&str], command: &[&str]) -> Result<Container> {
        if name.len() < 2 {
            bail!("container name {name:?}: docker wants at least 2 characters ([a-zA-Z0-9][a-zA-Z0-9_.-]+)");
        }
        let mut args = vec!["run", "-d", "--init", "--name", name];
        args.extend(extra);
        args.push(IMAGE);
        args.extend(command);
        let id = self.docker(&args)?.trim().to_string();
        if id.len() != 64 {
            bail!("docker run printed {id:?}, not a container id");
        }
        self.containers.push(id.clone());
        for pid in self.processes() {
            record_pid(&self.dir, pid);
        }
        Ok(Container { name: name.to_string(), id })
    }

    /// `docker exec <container> <argv...>`, whatever the exit status.
    pub fn exec_output(&self, container: &str, argv: &[&str]) -> Result<Output> {
        let mut args = vec!["exec", container];
        args.extend(argv);
        self.docker_output(&args)
    }

    /// `docker exec <container> <argv...>`; a non-zero exit is an error.
    pub fn exec(&self, container: &str, argv: &[&str]) -> Result<String> {
        let out = self.exec_output(container, argv)?;
        if !out.status.success() {
            bail!(
                "`docker exec {container} {}` failed ({}): {}{}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One ping from `container` to `dst` (IPv4 or IPv6: busybox's ping
    /// goes by the address), answered within 2 s.
    pub fn ping(&self, container: &str, dst: impl Into<IpAddr>) -> Result<()> {
        self.exec(container, &["ping", "-c", "1", "-W", "2", "-q", &dst.into().to_string()]).map(drop)
    }

    /// The container's global IPv6 address on its only network (dockerd
    /// with `--ipv6 --fixed-cidr-v6`).
    pub fn container_ip6(&self, container: &str) -> Result<Ipv6Addr> {
        let out = self.docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}} {{end}}", container])?;
        let addrs: Vec<&str> = out.split_whitespace().collect();
        match addrs.as_slice() {
            [one] => one.parse().with_context(|| format!("container {container}'s IPv6 address {one:?}")),
            _ => bail!("container {container} has IPv6 addresses {addrs:?} (is dockerd running with --ipv6?)"),
        }
    }

    /// The container's IPv4 address on `network`, or on its only network.
    pub fn container_ip(&self, container: &str, network: Option<&str>) -> Result<Ipv4Addr> {
        let format = match network {
            Some(n) => format!("{{{{(index .NetworkSettings.Networks \"{n}\").IPAddress}}}}"),
            None => "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}".to_string(),
        };
        let out = self.docker(&["inspect", "-f", &format, container])?;
        let addrs: Vec<&str> = out.split_whitespace().collect();
        match addrs.as_slice() {
            [one] => one.parse().with_context(|| format!("container {container}'s address {one:?}")),
            _ => bail!("container {container} has addresses {addrs:?} (name the network)"),
        }
    }

    /// The container's main process as seen from the root pid namespace.
    pub fn container_pid(&self, container: &str) -> Result<u32> {
        let out = self.docker(&["inspect", "-f", "{{.State.Pid}}", container])?;
        out.trim().parse().with_context(|| format!("pid of {container}: {out:?}"))
    }

    /// `docker network create --subnet <subnet> <opts...> <name>` and the
    /// bridge it made in the node namespace (checked to exist there).
    pub fn create_network(&self, name: &str, subnet: &str, opts: &[&str]) -> Result<DockerNetwork> {
        let mut args = vec!["network", "create", "--subnet", subnet];
        args.extend(opts);
        args.push(name);
        self.docker(&args)?;
        self.network(name)
    }

    /// An existing network's id and bridge.
    pub fn network(&self, name: &str) -> Result<DockerNetwork> {
        let out = self.docker(&[
            "network",
            "inspect",
            "-f",
            "{{.Id}} {{index .Options \"com.docker.network.bridge.name\"}}",
            name,
        ])?;
        let mut words = out.split_whitespace();
        let id = words.next().ok_or_else(|| anyhow!("no id for network {name}"))?.to_string();
        let bridge = match words.next().filter(|b| !b.is_empty() && *b != "<no" && *b != "<no value>") {
            Some(b) => b.to_string(),
            None => format!("br-{}", &id[..12.min(id.len())]),
        };
        self.ns
            .run(&["ip", "link", "show", "dev", &bridge])
            .with_context(|| format!("docker network {name} ({id}): its bridge {bridge} is not in netns {}", self.ns.name()))?;
        Ok(DockerNetwork { name: name.to_string(), id, bridge })
    }

    /// Stops dockerd as an init system does: SIGTERM to the pid in the
    /// pidfile, then waits (dockerd stops the containers, then its
    /// containerd). Fails with the log tail if it does not exit in time
    /// (it is then killed).
    pub fn stop(&mut self) -> Result<()> {
        let Some(child) = self.child.take() else { return Ok(()) };
        let pid = fs::read_to_string(self.pidfile()).ok().and_then(|p| p.trim().parse::<u32>().ok()).unwrap_or(child.pid());
        if child.try_wait()?.is_some() {
            bail!("dockerd had already exited; log tail:\n{}", self.log_tail(3000));
        }
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        if child.wait_timeout(Duration::from_secs(40)).is_none() {
            child.kill();
            bail!("dockerd (pid {pid}) did not exit within 40 s of SIGTERM (killed); log tail:\n{}", self.log_tail(3000));
        }
        // dockerd waits for its containerd; what remains are leftovers.
        let dir = self.dir.to_string_lossy().into_owned();
        let gone = crate::poll_until(Duration::from_secs(15), "containerd and shims of a stopped dockerd to exit", || {
            let left = processes_mentioning(&dir);
            if left.is_empty() {
                Ok(())
            } else {
                Err(anyhow!("still running: {left:?}"))
            }
        });
        if let Err(e) = gone {
            self.kill_leftovers();
            bail!("{e:#}; log tail:\n{}", self.log_tail(2000));
        }
        Ok(())
    }

    /// [`Dockerd::stop`], then start again with the same options and wait
    /// until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// [`Dockerd::stop`], then start again with new options (as after
    /// editing /etc/default/docker).
    pub fn restart_with(&mut self, opts: &[String]) -> Result<()> {
        self.stop()?;
        self.opts = opts.to_vec();
        self.spawn()
    }

    /// How many times dockerd was started.
    pub fn starts(&self) -> usize {
        self.starts
    }

    /// SIGKILL to every process naming the directory, with its descendants
    /// (the shims' containers), then waits for them to be gone.
    fn kill_leftovers(&self) {
        let dir = self.dir.to_string_lossy().into_owned();
        for _ in 0..3 {
            let left = processes_mentioning(&dir);
            if left.is_empty() {
                break;
            }
            for pid in left {
                util::signal_tree(pid, libc::SIGKILL);
            }
            let _ = crate::poll_until(Duration::from_secs(5), "killed docker processes to go away", || {
                if processes_mentioning(&dir).is_empty() {
                    Ok(())
                } else {
                    Err(anyhow!("still there"))
                }
            });
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dockerd log tail ({}, netns {}) ---\n{}", self.dir.display(), self.ns.name(), self.log_tail(3000));
        }
        if self.is_running() {
            // Killing the containers first keeps the SIGTERM stop short.
            if let Ok(ids) = self.docker(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.docker_output(&args);
                }
            }
            if let Err(e) = self.stop() {
                eprintln!("dockerd cleanup: {e:#}");
            }
        }
        if let Some(child) = self.child.take() {
            child.kill();
        }
        self.kill_leftovers();
        for m in mounts_under(&self.dir) {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        // cgroups (v1 and v2, cgroupfs driver) of containers that were killed.
        if let Ok(controllers) = fs::read_dir("/sys/fs/cgroup") {
            let controllers: Vec<PathBuf> = controllers.flatten().map(|e| e.path()).collect();
            for id in &self.containers {
                for c in controllers.iter().map(|c| c.join("docker").join(id)).chain([Path::new("/sys/fs/cgroup/docker").join(id)]) {
                    let _ = fs::remove_dir(c);
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("dockerd cleanup: removing {}: {e}", self.dir.display());
        }
    }
}
