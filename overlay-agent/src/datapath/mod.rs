//! Everything that touches BPF, and the only user of the `overlay-common`
//! contract: loading, attaching and pinning the programs (`loader`), where
//! the pins live (`pins`), and the typed map API (`maps`). The rest of the
//! agent speaks its types (addresses, subnets, MACs), never map layouts.

pub mod loader;
pub mod maps;
pub mod maps6;
pub mod pins;

use std::path::PathBuf;

pub use loader::{AttachReport, Datapath, DatapathOptions, XdpGuard};
pub use maps::{DatapathMaps, KernelFlow, Mode, NodeConfig, Peer, PeerChanges, PinnedStats, PodEndpoint, Sender, Stats};
pub use maps6::{DatapathMaps6, NodeConfig6, Peer6, PodEndpoint6, Sender6};
pub use pins::PinLayout;

/// Bytes VXLAN adds over an IPv4 underlay (outer IPv4, UDP, VXLAN, inner
/// Ethernet): what the pod MTU gives up.
pub const VXLAN_OVERHEAD: u32 = overlay_common::VXLAN_OVERHEAD as u32;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("cannot create the pin folder {path}: {source}")]
    PinDir { path: PathBuf, source: std::io::Error },
    #[error("loading the BPF object failed (the kernel needs BTF, CAP_BPF and CAP_NET_ADMIN): {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("--bpf-log-drops: cannot read the programs' log ring buffer: {0}")]
    Log(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the BPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the BPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("program {program}: {what}: {source}")]
    Program {
        program: &'static str,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot open pinned map {path}: {source} (is the agent's data path installed? see `overlay-agent inspect`)")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinned state looks corrupt: {0}")]
    Corrupt(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
