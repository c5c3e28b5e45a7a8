//! Where the pinned state lives. The agent, `inspect`, `/metrics` and
//! `cleanup` all find it through [`PinLayout`], so the folder layout is
//! spelled once:
//!
//! ```text
//! {root}/v{PIN_VERSION}/                the versioned folder
//!     SUBNETS, NODES, ...               maps, by their object names
//!     links/{program}@{iface}           one link per attachment
//!     progs/{program}                   the programs (for bpftool)
//! ```
//!
//! The layout version is part of the path so that an agent with another
//! map layout never reuses these maps (aya does not check a pinned map's
//! key and value sizes).
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use overlay_common::{map_names, PIN_ROOT, PIN_VERSION};

/// The default `--bpf-pin-dir`.
pub const DEFAULT_ROOT: &str = PIN_ROOT;
/// The layout version, part of the versioned folder's name.
pub const VERSION: u32 = PIN_VERSION;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
    dir: PathBuf,
}

impl Default for PinLayout {
    fn default() -> Self {
        PinLayout::new(DEFAULT_ROOT)
    }
}

impl PinLayout {
    /// The layout under `root` (what `--bpf-pin-dir` names).
    pub fn new(root: impl Into<PathBuf>) -> PinLayout {
        let root = root.into();
        let dir = root.join(format!("v{VERSION}"));
        PinLayout { root, dir }
    }

    /// The root, holding one folder per layout version.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The versioned folder this agent reads and writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pin of the map named `name` (one of [`map_names`]).
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether any of the maps is pinned.
    pub fn has_maps(&self) -> bool {
        map_names::ALL.iter().any(|m| self.map(m).exists())
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// The pin of the link attaching `program` to `iface`.
    pub fn link(&self, program: &str, iface: &str) -> PathBuf {
        self.links_dir().join(format!("{program}@{iface}"))
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.dir.join("progs")
    }

    /// The pin of the program itself.
    pub fn prog(&self, program: &str) -> PathBuf {
        self.progs_dir().join(program)
    }

    /// Every pinned link, sorted by pin name.
    pub fn links(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.links_dir()) else { return Vec::new() };
        let mut out: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        out.sort();
        out
    }

    /// The interfaces that have a pinned link of `program`.
    pub fn linked_ifaces(&self, program: &str) -> BTreeSet<String> {
        let prefix = format!("{program}@");
        let Ok(entries) = fs::read_dir(self.links_dir()) else { return BTreeSet::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)).map(str::to_string))
            .collect()
    }

    /// The layout in another version's folder under the same root (named
    /// as [`PinLayout::other_versions`] lists them), to clean it up.
    pub fn with_version_folder(&self, folder: &str) -> PinLayout {
        PinLayout { root: self.root.clone(), dir: self.root.join(folder) }
    }

    /// Folders of other layout versions next to ours (`v0`, `v2`, ...):
    /// left by an older or newer agent. Only folders that look like an
    /// agent's (a `v<N>` name holding a `CONFIG` map, `links/` or `progs/`):
    /// the root may be shared with other tools (`--bpf-pin-dir=/sys/fs/bpf`),
    /// whose folders must survive a cleanup whatever they are called.
    pub fn other_versions(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Vec::new() };
        let mut found: Vec<String> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| *p != self.dir && p.is_dir())
            .filter(|p| [map_names::CONFIG, "links", "progs"].iter().any(|n| p.join(n).exists()))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.strip_prefix('v').is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())))
            .collect();
        found.sort();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_common::program_names;

    #[test]
    fn default_layout_is_the_documented_one() {
        let pins = PinLayout::default();
        assert_eq!(pins.root(), Path::new(PIN_ROOT));
        assert_eq!(pins.dir(), Path::new(overlay_common::PIN_DIR));
        assert_eq!(pins.map(map_names::SUBNETS), Path::new("/sys/fs/bpf/overlay/v4/SUBNETS"));
        assert_eq!(pins.link("from_pods", "cni0"), Path::new("/sys/fs/bpf/overlay/v4/links/from_pods@cni0"));
        assert_eq!(pins.prog("from_uplink"), Path::new("/sys/fs/bpf/overlay/v4/progs/from_uplink"));
    }

    #[test]
    fn listings_read_the_folders() {
        let tmp = std::env::temp_dir().join(format!("overlay-pins-test-{}", std::process::id()));
        let pins = PinLayout::new(&tmp);
        assert!(pins.linked_ifaces("from_pods").is_empty() && pins.links().is_empty() && !pins.has_maps());
        fs::create_dir_all(pins.links_dir()).unwrap();
        for name in ["from_pods@cni0", "from_pods@veth1", "from_host@cni0", "from_pods@veth0"] {
            fs::write(pins.links_dir().join(name), b"").unwrap();
        }
        fs::write(pins.map(map_names::CONFIG), b"").unwrap();
        for other in ["v0", "v12", "vx", "tmp"] {
            fs::create_dir_all(tmp.join(other).join("links")).unwrap();
        }
        // Another tool's folder that happens to be called like a version.
        fs::create_dir_all(tmp.join("v7").join("maps")).unwrap();
        let ifaces: Vec<String> = pins.linked_ifaces(program_names::FROM_PODS).into_iter().collect();
        assert_eq!(ifaces, ["cni0", "veth0", "veth1"]);
        let links: Vec<String> =
            pins.links().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(links, ["from_host@cni0", "from_pods@cni0", "from_pods@veth0", "from_pods@veth1"]);
        assert!(pins.has_maps());
        assert_eq!(pins.other_versions(), ["v0", "v12"]);
        assert_eq!(pins.with_version_folder("v0").dir(), tmp.join("v0"));
        fs::remove_dir_all(&tmp).unwrap();
    }
}
