//! How the BPF object is built: nightly, `bpfel-unknown-none`,
//! `-Z build-std=core`, release, with BTF (`-C link-arg=--btf`,
//! `-C debuginfo=2`), into `target/ebpf`.
//!
//! Both overlay-agent's build script (which embeds the object) and
//! `cargo xtask build-ebpf` (which builds it visibly first, then tells the
//! build script to skip) depend on this crate, so the object is built exactly
//! one way and lands in one place. aya-build (aya-template's way) would
//! only serve the build script: it needs a build script's `OUT_DIR`, puts
//! the object there, and builds the BPF crate by package name from the
//! agent's dependency graph, while overlay-ebpf is its own nightly workspace.

/// Target directory of the BPF build, relative to the workspace root.
pub const EBPF_TARGET_DIR: &str = "target/ebpf";
/// The object, relative to the workspace root.
pub const EBPF_OBJECT: &str = "target/ebpf/bpfel-unknown-none/release/overlay";

/// `cargo +nightly build` of overlay-ebpf for bpfel-unknown-none with BTF,
/// with the outer cargo's environment removed (a build script inherits
/// RUSTFLAGS, the jobserver and the stable toolchain, none of which fit).
pub fn ebpf_build_command(workspace_root: &std::path::Path) -> std::process::Command {
    ebpf_cargo_command(workspace_root, "build")
}

/// `cargo +nightly clippy` of overlay-ebpf with the very flags, target and
/// target directory of [`ebpf_build_command`], warnings denied: the lints
/// see the code as the BPF build compiles it (bpfel, `no_std`).
pub fn ebpf_clippy_command(workspace_root: &std::path::Path) -> std::process::Command {
    let mut cmd = ebpf_cargo_command(workspace_root, "clippy");
    cmd.args(["--", "-D", "warnings"]);
    cmd
}

fn ebpf_cargo_command(workspace_root: &std::path::Path, subcommand: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("rustup");
    cmd.current_dir(workspace_root.join("overlay-ebpf"));
    remove_outer_cargo_env(&mut cmd);
    cmd.env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        subcommand,
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
    ]);
    cmd.arg(workspace_root.join(EBPF_TARGET_DIR));
    cmd
}

/// Removes what an outer cargo (or `cargo run`) puts in the environment, so a
/// nested cargo starts clean: CARGO_*, RUSTC*, RUSTFLAGS*, RUSTDOC* and
/// RUSTUP_TOOLCHAIN. Kept: CARGO_HOME and the user's network and registry
/// settings (CARGO_NET_*, CARGO_HTTP_*, CARGO_REGISTRIES_*, CARGO_REGISTRY_*),
/// which the nested cargo needs to fetch crates the same way.
pub fn remove_outer_cargo_env(cmd: &mut std::process::Command) {
    const KEPT: [&str; 5] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let inherited = (key.starts_with("CARGO") && !KEPT.iter().any(|k| key.starts_with(k)))
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key.starts_with("RUSTDOC")
            || key == "RUSTUP_TOOLCHAIN";
        if inherited {
            cmd.env_remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags the object's BTF and the verifier depend on: a change here
    /// changes the object every test and every node runs.
    #[test]
    fn nightly_bpfel_build_std_release_with_btf() {
        let cmd = ebpf_build_command(std::path::Path::new("/ws"));
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "run",
                "nightly",
                "cargo",
                "build",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "/ws/target/ebpf",
            ]
        );
        assert_eq!(cmd.get_program(), "rustup");
        assert_eq!(
            cmd.get_current_dir(),
            Some(std::path::Path::new("/ws/overlay-ebpf"))
        );
        let rustflags = cmd
            .get_envs()
            .find(|(k, _)| *k == "RUSTFLAGS")
            .and_then(|(_, v)| v);
        assert_eq!(rustflags, Some("-C debuginfo=2 -C link-arg=--btf".as_ref()));
    }
}
