//! Builds the BPF object (nightly, bpfel-unknown-none) so the agent can embed
//! it: one self-contained binary. Needs the toolchain `cargo xtask setup`
//! installs.
use std::path::{Path, PathBuf};

use ebpf_build::{ebpf_build_command, EBPF_OBJECT};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for watched in ["overlay-ebpf/src", "overlay-ebpf/Cargo.toml", "overlay-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=OVERLAY_SKIP_EBPF_BUILD");

    // xtask builds the object itself first (to show its output); it then sets
    // this so the object is not built twice.
    if std::env::var_os("OVERLAY_SKIP_EBPF_BUILD").is_none() {
        let status = ebpf_build_command(&root).status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => fail(&root, &format!("the BPF build exited with {s}")),
            Err(e) => fail(&root, &format!("could not run rustup: {e}")),
        }
    }
    let object = root.join(EBPF_OBJECT);
    if !Path::new(&object).exists() {
        fail(&root, &format!("{} is missing", object.display()));
    }
    println!("cargo:rustc-env=OVERLAY_EBPF_OBJECT={}", object.display());
}

fn fail(_root: &Path, why: &str) -> ! {
    panic!(
        "cannot build the BPF object: {why}.\n\
         Run `cargo xtask setup` once (installs bpf-linker, rust-src, LLVM 22), \
         then `cargo xtask build-ebpf` to see the BPF compiler's own errors."
    );
}
