//! `cargo xtask test`: setup, build-ebpf, a load check of the object, clippy
//! (warnings denied), then the whole suite (`cargo test --workspace`) as
//! root, with a summary.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{cargo, effective_uid, human_duration, info, is_root, run, show, step};

pub struct TestOptions {
    /// Kill the suite after this long (None: no limit).
    pub timeout: Option<Duration>,
    /// Passed to `cargo test` as they are.
    pub cargo_args: Vec<String>,
}

pub fn run_tests(root: &Path, opts: &TestOptions) -> Result<()> {
    let started = Instant::now();
    if !is_root() {
        bail!(
            "`cargo xtask test` must run as root (uid is {}): the suite creates network \
             namespaces and veths, loads BPF programs and mounts bpffs. Run it as root \
             (there is no sudo on the project's machines; CI runs `.ci/run` as root)",
            effective_uid()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "unknown".into())
        );
    }
    crate::setup::run_setup()?;
    let setup_time = started.elapsed();

    let t = Instant::now();
    // The verifier's word on every program comes from the suite
    // (bpf_programs.rs loads them all with aya, as the agent does, logging
    // code included); bpftool cannot open the object since aya-log's ring
    // buffer is a legacy map definition, which libbpf 1.x refuses.
    crate::build::build_ebpf(root)?;
    let ebpf_time = t.elapsed();

    let t = Instant::now();
    clippy(root)?;
    let clippy_time = t.elapsed();

    // The integration tests run the real binary (tests/src/agent.rs):
    // cargo test does not build another package's binaries.
    step("test: the agent binary the integration tests run");
    let agent = crate::build::build_agent(root, false)?;

    let args = cargo_test_args(&opts.cargo_args);
    step(&format!(
        "test: the suite (unit, BPF program and integration tests){}",
        opts.timeout
            .map(|t| format!(", time limit {}", human_duration(t)))
            .unwrap_or_default()
    ));
    let mut cmd = cargo();
    cmd.current_dir(root)
        .env("OVERLAY_SKIP_EBPF_BUILD", "1")
        .env("XTASK_REQUIRE_EBPF_OBJECT", "1")
        .env("OVERLAY_AGENT_BIN", &agent)
        .args(&args);
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        cmd.env("RUST_BACKTRACE", "1");
    }
    let t = Instant::now();
    let (status, summary, timed_out) =
        run_streaming(cmd, opts.timeout, Box::new(std::io::stdout()))?;
    let suite_time = t.elapsed();

    let ok = summary.print(status.as_deref(), timed_out, opts.timeout);
    // The first "Running" line ends the compilation of the test binaries.
    let cargo_test_time = match summary.binaries.first().and_then(|b| b.started) {
        Some(first) => format!(
            "cargo test {} (compiling {}, running {})",
            human_duration(suite_time),
            human_duration(first - t),
            human_duration(t + suite_time - first)
        ),
        None => format!("cargo test {}", human_duration(suite_time)),
    };
    println!(
        "    times: setup {}, build-ebpf {}, clippy {}, {cargo_test_time}, total {}",
        human_duration(setup_time),
        human_duration(ebpf_time),
        human_duration(clippy_time),
        human_duration(started.elapsed())
    );
    if !ok {
        bail!("the test suite failed (summary above)");
    }
    Ok(())
}

/// Clippy with warnings denied, before any test runs, so that CI (which runs
/// `cargo xtask test`) keeps the code lint-free: the host workspace with
/// every target (tests, benches, build scripts) on stable, then the BPF
/// crate on nightly exactly as it is built.
fn clippy(root: &Path) -> Result<()> {
    step("test: clippy, warnings denied (the workspace with all targets, then the BPF crate)");
    run(&mut clippy_command(root)).context(
        "clippy failed on the workspace, so no test ran: fix what it reports above \
         (`cargo clippy --workspace --all-targets -- -D warnings` shows it again)",
    )?;
    run(&mut ebpf_build::ebpf_clippy_command(root)).context(
        "clippy failed on the BPF crate (overlay-ebpf), so no test ran: fix what it reports \
         above (`cargo +nightly clippy --target bpfel-unknown-none -Z build-std=core \
         --release -- -D warnings` in overlay-ebpf shows it again)",
    )?;
    Ok(())
}

/// `cargo clippy --workspace --all-targets -- -D warnings`. The BPF object
/// is already built, so overlay-agent's build script must not build it again.
pub fn clippy_command(root: &Path) -> Command {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .env("OVERLAY_SKIP_EBPF_BUILD", "1")
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
    cmd
}

/// `cargo test` arguments: the whole workspace (unless the caller picks
/// packages), every binary even after a failure, then the caller's own.
/// Cargo runs test binaries one after another; inside a binary the harness's
/// default (one thread per core) stays.
pub fn cargo_test_args(extra: &[String]) -> Vec<String> {
    let mut args = vec!["test".to_string()];
    let before_dashdash = extra.iter().take_while(|a| *a != "--");
    let mut picks_packages = false;
    let mut has_no_fail_fast = false;
    for a in before_dashdash {
        picks_packages |= a == "-p"
            || a.starts_with("--package")
            || a.starts_with("-p")
            || a == "--manifest-path";
        has_no_fail_fast |= a == "--no-fail-fast";
    }
    if !picks_packages {
        args.push("--workspace".into());
    }
    if !has_no_fail_fast {
        args.push("--no-fail-fast".into());
    }
    args.extend(extra.iter().cloned());
    args
}

/// Runs cargo with stdout and stderr merged into one pipe (so the order of
/// "Running ..." headers and results is kept), copies everything through as it
/// arrives and feeds complete lines to a Summary. Returns how cargo ended
/// (None if killed by the time limit).
fn run_streaming(
    mut cmd: Command,
    timeout: Option<Duration>,
    echo: Box<dyn Write + Send>,
) -> Result<(Option<String>, Summary, bool)> {
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    cmd.stdout(writer.try_clone()?).stderr(writer);
    println!("    $ {}", show(&cmd));
    let mut child = cmd.spawn().context("could not start cargo")?;
    drop(cmd); // closes our copies of the pipe's write end

    let summary = Arc::new(Mutex::new(Summary::default()));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader_summary = Arc::clone(&summary);
    std::thread::spawn(move || {
        copy_and_parse(reader, echo, &reader_summary);
        let _ = done_tx.send(());
    });

    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if let Some(limit) = timeout {
            if started.elapsed() > limit {
                timed_out = true;
                let running = summary.lock().unwrap().current_name();
                println!(
                    "\n==> TIME LIMIT: the suite ran for more than {} (running: {}); stopping it",
                    human_duration(limit),
                    running.as_deref().unwrap_or("build")
                );
                kill_tree(&mut child);
                break None;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // A process a test left behind may still hold the pipe open: do not wait
    // for it for long.
    let _ = done_rx.recv_timeout(Duration::from_secs(3));
    let summary = std::mem::take(&mut *summary.lock().unwrap());
    Ok((
        status.map(|s| s.to_string()).filter(|_| !timed_out),
        summary,
        timed_out,
    ))
}

fn copy_and_parse(
    mut reader: std::io::PipeReader,
    mut echo: Box<dyn Write + Send>,
    summary: &Mutex<Summary>,
) {
    let mut buf = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = echo.write_all(&buf[..n]);
        let _ = echo.flush();
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            summary
                .lock()
                .unwrap()
                .feed(&String::from_utf8_lossy(&line), Instant::now());
        }
    }
    if !pending.is_empty() {
        summary
            .lock()
            .unwrap()
            .feed(&String::from_utf8_lossy(&pending), Instant::now());
    }
}

/// All descendants of `pid`, from the parent pids in /proc/*/stat.
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(ppid) = parse_stat_ppid(&stat) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            all.push(c);
            todo.push(c);
        }
    }
    all
}

/// The parent pid in /proc/PID/stat: `pid (comm) state ppid ...`; comm may
/// hold spaces and parentheses, so read after the last `)`.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn signal(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("kill -{sig} \"$@\" 2>/dev/null"), "kill"]);
    cmd.args(pids.iter().map(|p| p.to_string()));
    let _ = cmd.status();
}

/// SIGTERM cargo and everything under it, then SIGKILL what is left.
fn kill_tree(child: &mut Child) {
    let mut pids = descendants(child.id());
    pids.push(child.id());
    signal(&pids, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) && descendants(child.id()).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut left = descendants(child.id());
    left.extend(
        pids.iter()
            .copied()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists()),
    );
    signal(&left, "KILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// One test binary (or the doc-tests of a crate) as cargo reports it.
#[derive(Debug, Default)]
pub struct Binary {
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub filtered: u64,
    /// Some(true) ok, Some(false) FAILED, None: no "test result" line (crashed, killed).
    pub result: Option<bool>,
    /// Names in libtest's closing `failures:` list (authoritative).
    pub failures: Vec<String>,
    /// `test NAME ... FAILED` lines (used when there is no result line).
    pub failed_lines: Vec<String>,
    pub rerun: Option<String>,
    pub started: Option<Instant>,
    pub elapsed: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub binaries: Vec<Binary>,
    current: Option<usize>,
    /// Names under the latest `failures:` heading, until the result line.
    failure_list: Option<Vec<String>>,
    /// Error lines of the build: any before the first test binary runs,
    /// and `error: could not compile` (doc-tests compile later).
    pub build_errors: Vec<String>,
}

impl Summary {
    /// Takes one line of cargo test's merged output.
    pub fn feed(&mut self, line: &str, now: Instant) {
        let line = line.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start();
        // Cargo's own status lines, right-aligned as cargo prints them (a
        // test's output could hold similar text, but rarely these exactly).
        if let Some(rest) = line
            .strip_prefix("     Running ")
            .filter(|r| r.ends_with(')'))
        {
            self.start(binary_name(rest), now);
        } else if let Some(krate) = line.strip_prefix("   Doc-tests ") {
            self.start(format!("{} (doc-tests)", krate.trim()), now);
        } else if let Some(result) = trimmed.strip_prefix("test result: ") {
            // A test that runs a test binary as a child prints that child's
            // result too: the binary's own result line is the last one, and
            // the failure list right before it is its own.
            let list = self.failure_list.take();
            if let Some(b) = self.current_mut() {
                parse_result(result, b);
                b.failures = list.unwrap_or_default();
                b.elapsed = b.started.map(|s| now - s);
            }
        } else if let Some(name) = trimmed
            .strip_prefix("test ")
            .and_then(|r| r.strip_suffix(" ... FAILED"))
        {
            if let Some(b) = self.current_mut() {
                b.failed_lines.push(name.to_string());
            }
        } else if line == "failures:" {
            // libtest prints two such blocks: the captured output of each
            // failed test ("---- name stdout ----"), then the list of names.
            self.failure_list = Some(Vec::new());
        } else if line.starts_with("---- ") {
            self.failure_list = None;
        } else if let (Some(list), Some(name)) =
            (self.failure_list.as_mut(), line.strip_prefix("    "))
        {
            list.push(name.trim().to_string());
        } else if let Some(rest) = trimmed.strip_prefix("error: test failed, to rerun pass `") {
            let rerun = rest.trim_end_matches('`').to_string();
            if let Some(b) = self.current_mut() {
                b.rerun = Some(rerun);
                b.elapsed
                    .get_or_insert_with(|| b.started.map(|s| now - s).unwrap_or_default());
            }
        } else if line.starts_with("error: could not compile")
            || (self.binaries.is_empty() && line.starts_with("error"))
        {
            // Compiler errors come before the first test binary runs; after
            // that an "error" line may be any test's output.
            self.build_errors.push(line.to_string());
        }
    }

    fn start(&mut self, name: String, now: Instant) {
        if let Some(b) = self.current_mut() {
            b.elapsed
                .get_or_insert_with(|| b.started.map(|s| now - s).unwrap_or_default());
        }
        self.failure_list = None;
        self.binaries.push(Binary {
            name,
            started: Some(now),
            ..Default::default()
        });
        self.current = Some(self.binaries.len() - 1);
    }

    fn current_mut(&mut self) -> Option<&mut Binary> {
        self.binaries.get_mut(self.current?)
    }

    pub fn current_name(&self) -> Option<String> {
        self.binaries.get(self.current?).map(|b| b.name.clone())
    }

    /// Prints the summary; true if everything passed.
    pub fn print(&self, status: Option<&str>, timed_out: bool, limit: Option<Duration>) -> bool {
        let (passed, failed, ignored) = self.binaries.iter().fold((0, 0, 0), |(p, f, i), b| {
            (p + b.passed, f + b.failed, i + b.ignored)
        });
        let broken: Vec<&Binary> = self
            .binaries
            .iter()
            .filter(|b| b.result != Some(true))
            .collect();
        let cargo_ok = status.map(|s| s == "exit status: 0").unwrap_or(false);
        let ok = cargo_ok && broken.is_empty() && !timed_out;

        println!();
        println!("==> test summary");
        if !self.binaries.is_empty() {
            let width = self
                .binaries
                .iter()
                .map(|b| b.name.len())
                .max()
                .unwrap_or(0)
                .max(6);
            println!(
                "    {:<width$}  {:>6} {:>6} {:>7}  {:>8}  result",
                "binary", "passed", "failed", "ignored", "time"
            );
            for b in &self.binaries {
                let result = match b.result {
                    Some(true) => "ok",
                    Some(false) => "FAILED",
                    None if timed_out && Some(b.name.clone()) == self.current_name() => {
                        "KILLED (time limit)"
                    }
                    None => "NO RESULT (crashed?)",
                };
                let time = b.elapsed.map(human_duration).unwrap_or_else(|| "-".into());
                println!(
                    "    {:<width$}  {:>6} {:>6} {:>7}  {:>8}  {result}",
                    b.name, b.passed, b.failed, b.ignored, time
                );
            }
        }
        for b in &broken {
            let names = if b.result.is_some() {
                &b.failures
            } else {
                &b.failed_lines
            };
            for f in names {
                info(&format!("failed: {f}  [{}]", b.name));
            }
            if let Some(rerun) = &b.rerun {
                info(&format!("rerun {}: cargo xtask test -- {rerun}", b.name));
            }
        }
        if !self.build_errors.is_empty() {
            info("build errors (details above):");
            for e in self.build_errors.iter().take(20) {
                info(&format!("  {e}"));
            }
        }
        let verdict = if ok { "PASSED" } else { "FAILED" };
        let why = if timed_out {
            format!(
                " (stopped at the time limit of {})",
                limit.map(human_duration).unwrap_or_default()
            )
        } else if !cargo_ok && self.binaries.is_empty() {
            format!(
                " (cargo test ended with {} before running any test)",
                status.unwrap_or("?")
            )
        } else if !cargo_ok && broken.is_empty() {
            format!(" (cargo test ended with {})", status.unwrap_or("?"))
        } else {
            String::new()
        };
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        println!(
            "==> {verdict}: {passed} passed, {failed} failed, {ignored} ignored in {}{}{why}",
            plural(self.binaries.len(), "test binary", "test binaries"),
            if broken.is_empty() {
                String::new()
            } else {
                format!("; not ok: {}", plural(broken.len(), "binary", "binaries"))
            }
        );
        ok
    }
}

/// `unittests src/lib.rs (target/debug/deps/overlay_agent-0123abcd)` ->
/// `overlay_agent (unittests src/lib.rs)`;
/// `tests/netns.rs (target/debug/deps/netns-0123abcd)` -> `netns (tests/netns.rs)`.
pub fn binary_name(running: &str) -> String {
    let running = running.trim();
    let Some((what, path)) = running.rsplit_once(" (") else {
        return running.to_string();
    };
    let path = path.trim_end_matches(')');
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = match file.rsplit_once('-') {
        Some((stem, hash)) if !hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            stem
        }
        _ => file,
    };
    format!("{stem} ({what})")
}

/// `ok. 5 passed; 1 failed; 2 ignored; 0 measured; 3 filtered out; finished in 0.01s`
fn parse_result(result: &str, b: &mut Binary) {
    b.result = Some(result.starts_with("ok"));
    let counts = result.split_once(". ").map(|(_, c)| c).unwrap_or(result);
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => b.passed = n,
            "failed" => b.failed = n,
            "ignored" => b.ignored = n,
            "filtered" => b.filtered = n,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn clippy_denies_warnings_on_every_target_without_rebuilding_the_object() {
        let cmd = clippy_command(Path::new("/ws"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings"
            ]
        );
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == "OVERLAY_SKIP_EBPF_BUILD" && v.is_some()));
    }

    #[test]
    fn cargo_test_arguments() {
        assert_eq!(
            cargo_test_args(&[]),
            args(&["test", "--workspace", "--no-fail-fast"])
        );
        assert_eq!(
            cargo_test_args(&args(&["--", "--nocapture"])),
            args(&["test", "--workspace", "--no-fail-fast", "--", "--nocapture"])
        );
        assert_eq!(
            cargo_test_args(&args(&["-p", "overlay-tests", "--test", "netns"])),
            args(&[
                "test",
                "--no-fail-fast",
                "-p",
                "overlay-tests",
                "--test",
                "netns"
            ])
        );
        assert_eq!(
            cargo_test_args(&args(&["--no-fail-fast", "--package=xtask"])),
            args(&["test", "--no-fail-fast", "--package=xtask"])
        );
        // A "-p" after "--" goes to the test binaries, not to cargo.
        assert_eq!(
            cargo_test_args(&args(&["--", "-p"])),
            args(&["test", "--workspace", "--no-fail-fast", "--", "-p"])
        );
    }

    #[test]
    fn the_time_limit_stops_the_whole_process_tree() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo '     Running tests/slow.rs (target/debug/deps/slow-00ff)'; echo oops >&2; \
             sleep 300 & sleep 300; echo never",
        ]);
        let started = Instant::now();
        let (status, summary, timed_out) =
            run_streaming(cmd, Some(Duration::from_secs(1)), Box::new(std::io::sink())).unwrap();
        assert!(timed_out);
        assert_eq!(status, None);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(summary.binaries.len(), 1);
        assert_eq!(summary.binaries[0].name, "slow (tests/slow.rs)");
        assert_eq!(summary.binaries[0].result, None);
    }

    #[test]
    fn streaming_reports_the_exit_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s'; exit 3"]);
        let (status, summary, timed_out) =
            run_streaming(cmd, None, Box::new(std::io::sink())).unwrap();
        assert!(!timed_out);
        assert_eq!(status.as_deref(), Some("exit status: 3"));
        assert!(summary.binaries.is_empty());
    }

    #[test]
    fn binary_names() {
        assert_eq!(
            binary_name("unittests src/lib.rs (target/debug/deps/overlay_agent-0a1b2c3d4e5f6789)"),
            "overlay_agent (unittests src/lib.rs)"
        );
        assert_eq!(
            binary_name("tests/netns.rs (target/debug/deps/netns-0a1b2c)"),
            "netns (tests/netns.rs)"
        );
        assert_eq!(binary_name("something odd"), "something odd");
    }

    #[test]
    fn parses_ppid_from_proc_stat() {
        assert_eq!(
            parse_stat_ppid("1234 (cargo) S 1200 1234 1200 0 -1"),
            Some(1200)
        );
        assert_eq!(parse_stat_ppid("99 (a (weird) name) R 7 99 7 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    const OUTPUT: &str = "   Compiling xtask v0.1.0 (/work/main/xtask)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 3.21s
     Running unittests src/lib.rs (target/debug/deps/overlay_agent-0123456789abcdef)

running 3 tests
test config::tests::parses ... ok

running 1 test
test child_only ... FAILED

failures:
    child_only

test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 24 filtered out; finished in 0.29s
test etcd::tests::lease ... FAILED
test a::b ... ignored

failures:

---- etcd::tests::lease stdout ----
thread 'etcd::tests::lease' panicked at src/etcd/mod.rs:1:1

failures:
    etcd::tests::lease

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

error: test failed, to rerun pass `-p overlay-agent --lib`
     Running tests/netns.rs (target/debug/deps/netns-fedcba9876543210)

running 2 tests
error: test failed, to rerun pass `-p overlay-tests --test netns`

Caused by:
  process didn't exit successfully: `/work/main/target/debug/deps/netns-fedcba9876543210` (signal: 6, SIGABRT: process abort signal)
     Running unittests src/main.rs (target/debug/deps/xtask-00ff00ff00ff00ff)

running 4 tests
test setup::tests::majors ... ok
test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; finished in 0.00s

   Doc-tests overlay_agent

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

error: 2 targets failed:
    `-p overlay-agent --lib`
    `-p overlay-tests --test netns`
";

    #[test]
    fn summarises_cargo_test_output() {
        let mut s = Summary::default();
        let now = Instant::now();
        for line in OUTPUT.lines() {
            s.feed(line, now);
        }
        let names: Vec<&str> = s.binaries.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "overlay_agent (unittests src/lib.rs)",
                "netns (tests/netns.rs)",
                "xtask (unittests src/main.rs)",
                "overlay_agent (doc-tests)"
            ]
        );
        let a = &s.binaries[0];
        assert_eq!(
            (a.passed, a.failed, a.ignored, a.result),
            (1, 1, 1, Some(false))
        );
        assert_eq!(a.failures, ["etcd::tests::lease"]);
        assert_eq!(a.failed_lines, ["child_only", "etcd::tests::lease"]);
        assert_eq!(a.rerun.as_deref(), Some("-p overlay-agent --lib"));
        let n = &s.binaries[1];
        assert_eq!(n.result, None);
        assert_eq!(n.rerun.as_deref(), Some("-p overlay-tests --test netns"));
        let x = &s.binaries[2];
        assert_eq!((x.passed, x.filtered, x.result), (4, 2, Some(true)));
        assert!(s.build_errors.is_empty());
        assert!(!s.print(Some("exit status: 101"), false, None));
    }

    #[test]
    fn a_clean_run_passes_and_a_build_failure_does_not() {
        let now = Instant::now();
        let mut s = Summary::default();
        for line in ["     Running unittests src/main.rs (target/debug/deps/xtask-00ff)",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"]
        {
            s.feed(line, now);
        }
        assert!(s.print(Some("exit status: 0"), false, None));
        assert!(!s.print(None, true, Some(Duration::from_secs(60))));

        let mut s = Summary::default();
        s.feed("error[E0583]: file not found for module `netns`", now);
        s.feed("   error: indented lines are not errors of cargo", now);
        s.feed("Running something a test printed (x)", now);
        s.feed("     Running but not cargo's", now);
        assert!(s.binaries.is_empty());
        s.feed(
            "error: could not compile `overlay-tests` (lib) due to 2 previous errors",
            now,
        );
        assert_eq!(s.build_errors.len(), 2);
        assert!(!s.print(Some("exit status: 101"), false, None));
    }
}
