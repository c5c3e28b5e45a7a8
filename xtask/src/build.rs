//! `cargo xtask build-ebpf`, `cargo xtask build`, and the check that the
//! BPF object loads into the kernel.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ebpf_build::{ebpf_build_command, EBPF_OBJECT};

use crate::setup::ensure_bpffs;
use crate::util::{
    capture, cargo, host_target_dir, human_duration, human_size, info, run, step, text,
};

/// Builds the BPF object (nightly, bpfel-unknown-none, release, BTF) the one
/// way the `ebpf-build` crate defines, and returns its path.
pub fn build_ebpf(root: &Path) -> Result<PathBuf> {
    step("build-ebpf: the BPF object (nightly, bpfel-unknown-none, release with BTF)");
    let started = Instant::now();
    run(&mut ebpf_build_command(root)).context(
        "the BPF build failed (the compiler's messages are above). If the toolchain is at fault \
         (bpf-linker not found, LLVM mismatch, rust-src missing), run `cargo xtask setup`",
    )?;
    let object = root.join(EBPF_OBJECT);
    let size = std::fs::metadata(&object)
        .with_context(|| {
            format!(
                "the BPF build succeeded but {} is missing",
                object.display()
            )
        })?
        .len();
    info(&format!(
        "BPF object: {} ({size} bytes, {}), built in {}",
        object.display(),
        human_size(size),
        human_duration(started.elapsed())
    ));
    Ok(object)
}

/// build-ebpf, then the agent, which embeds the object already built.
pub fn build_agent(root: &Path, release: bool) -> Result<PathBuf> {
    build_ebpf(root)?;
    let profile = if release { "release" } else { "debug" };
    step(&format!(
        "build: overlay-agent ({profile}), embedding the BPF object"
    ));
    let started = Instant::now();
    let mut cmd = cargo();
    cmd.current_dir(root).env("OVERLAY_SKIP_EBPF_BUILD", "1");
    cmd.args(["build", "-p", "overlay-agent", "--bin", "overlay-agent"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let binary = host_target_dir(root).join(profile).join("overlay-agent");
    let size = std::fs::metadata(&binary)
        .with_context(|| format!("cargo build succeeded but {} is missing", binary.display()))?
        .len();
    info(&format!(
        "agent binary: {} ({}), built in {}",
        binary.display(),
        human_size(size),
        human_duration(started.elapsed())
    ));
    Ok(binary)
}

/// Loads every program of `object` into the kernel with bpftool (which runs
/// the verifier on each), pinned under a scratch folder on bpffs, then
/// removes the pins. Needs root and bpftool; mounts bpffs when missing.
pub fn check_object_loads(object: &Path) -> Result<()> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    ensure_bpffs()?;
    let pins = PathBuf::from(format!(
        "{}/xtask-check-{}-{}",
        crate::setup::BPFFS,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut cmd = Command::new("bpftool");
    cmd.args(["prog", "loadall"]).arg(object).arg(&pins);
    info(&format!("$ {}", crate::util::show(&cmd)));
    let out = capture(&mut cmd).context("bpftool is needed (`cargo xtask setup` installs it)");
    let pinned = std::fs::read_dir(&pins)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&pins);
    let out = out?;
    if !out.status.success() {
        let log = text(&out);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(200)..].join("\n");
        bail!(
            "the kernel rejected {} (`{}` failed, {}); its output{}:\n{tail}",
            object.display(),
            crate::util::show(&cmd),
            out.status,
            if lines.len() > 200 {
                " (last 200 lines)"
            } else {
                ""
            }
        );
    }
    let mut pinned = pinned;
    pinned.sort();
    info(&format!(
        "the kernel accepted {} program(s): {}",
        pinned.len(),
        pinned.join(" ")
    ));
    if pinned.is_empty() {
        bail!("bpftool loaded {} but pinned no programs", object.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BPF object built by `cargo xtask build-ebpf` passes the verifier.
    /// `cargo xtask test` builds the object first; run alone, this is skipped
    /// (with a message) when not root or when the object was never built.
    #[test]
    fn ebpf_object_loads_into_the_kernel() {
        let object = crate::util::workspace_root().join(EBPF_OBJECT);
        if !crate::util::is_root() {
            eprintln!("skipped: loading BPF programs needs root");
            return;
        }
        if !object.exists() {
            if std::env::var_os("XTASK_REQUIRE_EBPF_OBJECT").is_some() {
                panic!("{} is missing", object.display());
            }
            eprintln!(
                "skipped: {} not built yet (cargo xtask build-ebpf)",
                object.display()
            );
            return;
        }
        check_object_loads(&object).unwrap();
    }
}
