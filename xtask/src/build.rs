//! `cargo xtask build-ebpf` and `cargo xtask build`.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use ebpf_build::{ebpf_build_command, EBPF_OBJECT};

use crate::util::{cargo, host_target_dir, human_duration, human_size, info, run, step};

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
