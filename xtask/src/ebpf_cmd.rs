// Shared by xtask and overlay-agent's build.rs (via `include!`), so that the
// BPF object is built exactly one way.

/// Target directory of the BPF build, relative to the workspace root.
pub const EBPF_TARGET_DIR: &str = "target/ebpf";
/// The object, relative to the workspace root.
pub const EBPF_OBJECT: &str = "target/ebpf/bpfel-unknown-none/release/overlay";

/// `cargo +nightly build` of overlay-ebpf for bpfel-unknown-none with BTF,
/// with the outer cargo's environment removed (a build script inherits
/// RUSTFLAGS, the jobserver and the stable toolchain, none of which fit).
pub fn ebpf_build_command(workspace_root: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("rustup");
    cmd.current_dir(workspace_root.join("overlay-ebpf"));
    remove_outer_cargo_env(&mut cmd);
    cmd.env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    cmd.args([
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
