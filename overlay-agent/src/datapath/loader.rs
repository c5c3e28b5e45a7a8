//! Loads the embedded BPF object, attaches its programs and pins programs,
//! links and maps under the versioned pin folder, so the data path keeps
//! forwarding while the agent is down. A restarted (or upgraded) agent
//! adopts what is pinned: the maps are reused as they are and each link is
//! switched to the new program atomically (BPF_LINK_UPDATE), so no packet
//! ever meets a missing program.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::Path,
};

use aya::{
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use log::{debug, info, warn};
use overlay_common::{map_names, program_names};

use super::{maps::DatapathMaps, maps6::DatapathMaps6, pins::PinLayout, DatapathError};

/// The BPF object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("OVERLAY_EBPF_OBJECT"));

/// Opt-in XDP early drop of VXLAN from strangers on the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpGuard {
    Off,
    /// Native driver mode: the point of it (drop before an skb exists).
    Native,
    /// Generic mode: works everywhere, saves little; for testing.
    Generic,
}

#[derive(Clone, Debug)]
pub struct DatapathOptions {
    pub pins: PinLayout,
    pub uplink: String,
    /// The agent's tunnel device (`host::tunnel_device`): the kernel's route
    /// to remote pods, and its VXLAN socket's deliveries.
    pub tunnel: String,
    pub xdp_guard: XdpGuard,
    /// `--bpf-log-drops`: a log line per dropped packet (drop_log.rs in the
    /// BPF crate); off, the verifier removes the logging code.
    pub log_drops: bool,
}

/// Where a pod-side program runs: (program, interface name).
type PodAttachment = (&'static str, String);

/// What happened to each attachment: adopted from a previous agent, or new.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachReport {
    pub adopted: Vec<String>,
    pub created: Vec<String>,
}

pub struct Datapath {
    pub maps: DatapathMaps,
    /// The IPv6 maps (dual stack); v6 stays the kernel's until their config is set.
    pub maps6: DatapathMaps6,
    pub report: AttachReport,
    pins: PinLayout,
    /// The pod-side attachments (the pod bridge's ingress, each pod veth's
    /// ingress and egress), with the ifindex they were made on: a device
    /// deleted and re-made under the same name needs a new attachment.
    pod_side: BTreeMap<PodAttachment, u32>,
    // Keeps program fds open for the agent's lifetime (the pins keep them
    // in the kernel after it exits).
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads, attaches (or adopts) and pins everything.
    pub fn install(opts: &DatapathOptions) -> Result<Datapath, DatapathError> {
        let pins = &opts.pins;
        ensure_bpffs(pins.root())?;
        for dir in [pins.dir().to_path_buf(), pins.links_dir(), pins.progs_dir()] {
            fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir { path: dir, source })?;
        }
        retire_other_versions(pins);
        for iface in [&opts.uplink, &opts.tunnel] {
            // Not /sys/class/net: sysfs shows the namespace it was mounted
            // in, which need not be ours.
            if ifindex(iface).is_none() {
                return Err(DatapathError::NoInterface(iface.clone()));
            }
        }

        let mut loader = EbpfLoader::new();
        let map_paths: Vec<_> = map_names::ALL.iter().map(|n| (*n, pins.map(n))).collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        // aya-log's level is read-only data: 0 makes every log statement
        // dead code the verifier removes, so logging off costs nothing.
        let log_level: u8 = if opts.log_drops { aya_log::Level::Warn as u8 } else { 0 };
        loader.override_global(aya_log::LEVEL, &log_level, true);
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| DatapathError::Load(Box::new(e)))?;
        let maps = DatapathMaps::from_ebpf(&mut ebpf)?;
        let maps6 = DatapathMaps6::from_ebpf(&mut ebpf)?;
        if opts.log_drops {
            forward_bpf_logs(&mut ebpf)?;
        }

        let mut report = AttachReport::default();
        let tc = [
            (program_names::FROM_UPLINK, opts.uplink.as_str(), TcAttachType::Ingress),
            (program_names::FROM_HOST, opts.tunnel.as_str(), TcAttachType::Egress),
            (program_names::FROM_TUNNEL, opts.tunnel.as_str(), TcAttachType::Ingress),
        ];
        for (name, iface, hook) in tc {
            attach_tc(&mut ebpf, pins, name, iface, hook, &mut report)?;
        }
        match opts.xdp_guard {
            XdpGuard::Off => detach_pinned(&pins.link(program_names::XDP_GUARD, &opts.uplink)),
            mode => attach_xdp(&mut ebpf, pins, &opts.uplink, mode, &mut report)?,
        }
        // Pod-side links a previous agent pinned are adopted like the others
        // (switched to this agent's program), so pods keep the fast path
        // across a restart; the first sync then drops what is no longer
        // wanted. Those of devices that are gone are unpinned.
        let mut pod_side = BTreeMap::new();
        for (program, hook) in POD_SIDE {
            for iface in pins.linked_ifaces(program) {
                let Some(index) = ifindex(&iface) else {
                    detach_pinned(&pins.link(program, &iface));
                    continue;
                };
                match attach_tc(&mut ebpf, pins, program, &iface, hook, &mut report) {
                    Ok(()) => {
                        pod_side.insert((program, iface), index);
                    }
                    Err(e) => warn!("adopting {program} on {iface}: {e}"),
                }
            }
        }
        info!(
            "data path ready in {} (adopted: [{}], attached: [{}])",
            pins.dir().display(),
            report.adopted.join(", "),
            report.created.join(", ")
        );
        Ok(Datapath { maps, maps6, report, pins: pins.clone(), pod_side, ebpf })
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// Makes the pod-side programs run exactly on the pod bridge (`from_pods`
    /// at its ingress: the pod checks for pods whose veth has no program
    /// yet; no fast path there, as the bridge's netfilter may have
    /// translated the packet) and on each of `veths` (`from_pods` at
    /// ingress, the fast path; `to_pods` at egress). A packet encapsulated
    /// on its veth never crosses the bridge (measured ~7 % more
    /// single-stream TCP). Attachments on devices that are gone, or were
    /// re-made since, are replaced. Returns (attached, detached).
    pub fn sync_pod_side(&mut self, bridge: Option<&str>, veths: &BTreeSet<String>) -> (usize, usize) {
        let mut wanted: BTreeMap<PodAttachment, u32> = BTreeMap::new();
        let mut want = |program: &'static str, iface: &str| {
            if let Some(index) = ifindex(iface) {
                wanted.insert((program, iface.to_string()), index);
            }
        };
        if let Some(bridge) = bridge {
            want(program_names::FROM_PODS, bridge);
        }
        for veth in veths {
            want(program_names::FROM_PODS, veth);
            want(program_names::TO_PODS, veth);
        }
        let stale: Vec<PodAttachment> = self
            .pod_side
            .iter()
            .filter(|(at, index)| wanted.get(*at) != Some(*index))
            .map(|(at, _)| at.clone())
            .collect();
        for (program, iface) in &stale {
            detach_pinned(&self.pins.link(program, iface));
            self.pod_side.remove(&(*program, iface.clone()));
        }
        let mut attached = 0;
        for ((program, iface), index) in wanted {
            if self.pod_side.contains_key(&(program, iface.clone())) {
                continue;
            }
            let hook = if program == program_names::TO_PODS { TcAttachType::Egress } else { TcAttachType::Ingress };
            let mut report = AttachReport::default();
            match attach_tc(&mut self.ebpf, &self.pins, program, &iface, hook, &mut report) {
                Ok(()) => {
                    debug!("{program} attached to {iface}");
                    self.pod_side.insert((program, iface), index);
                    attached += 1;
                }
                Err(e) => warn!("attaching {program} to {iface}: {e}"),
            }
        }
        (attached, stale.len())
    }
}

/// The programs on the pod side and where they hook.
const POD_SIDE: [(&str, TcAttachType); 2] =
    [(program_names::FROM_PODS, TcAttachType::Ingress), (program_names::TO_PODS, TcAttachType::Egress)];

/// Another layout version's programs would stay attached next to ours
/// (and TCX runs the first that passes or redirects): unpinning their links
/// detaches them; their maps go with their folder.
fn retire_other_versions(pins: &PinLayout) {
    for version in pins.other_versions() {
        let other = PinLayout::new(pins.root()).with_version_folder(&version);
        for link in other.links() {
            detach_pinned(&link);
        }
        match fs::remove_dir_all(other.dir()) {
            Ok(()) => info!("removed the pinned state of layout {version} ({})", other.dir().display()),
            Err(e) => warn!("cannot remove {}: {e}", other.dir().display()),
        }
    }
}

/// Loads the object and every program into the kernel (the verifier runs)
/// without pinning or attaching anything: for BPF_PROG_TEST_RUN tests and
/// for checking that this kernel accepts the programs. The maps are fresh
/// and private to the returned object.
/// Reads the programs' aya-log records and hands them to `log` (target:
/// the BPF module, `overlay::drop_log`), on the tokio runtime.
fn forward_bpf_logs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let logger = aya_log::EbpfLogger::init(ebpf).map_err(|e| DatapathError::Log(Box::new(e)))?;
    // SAFETY: the EbpfLogger owns the ring buffer map's fd and keeps it open
    // and unchanged until it is dropped, which is when the AsyncFd drops it.
    let mut logger = unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| DatapathError::Log(Box::new(std::io::Error::from(e))))?;
    tokio::spawn(async move {
        loop {
            match logger.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("BPF drop log: reading the ring buffer failed, no more drop lines: {e}");
                    return;
                }
            }
        }
    });
    info!("logging every dropped packet (--bpf-log-drops)");
    Ok(())
}

pub fn load_unattached() -> Result<(Ebpf, DatapathMaps), DatapathError> {
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(|e| DatapathError::Load(Box::new(e)))?;
    let maps = DatapathMaps::from_ebpf(&mut ebpf)?;
    for name in [
        program_names::FROM_PODS,
        program_names::TO_PODS,
        program_names::FROM_HOST,
        program_names::FROM_TUNNEL,
        program_names::FROM_UPLINK,
    ] {
        classifier(&mut ebpf, name)?;
    }
    xdp_program(&mut ebpf)?;
    Ok((ebpf, maps))
}

/// Removes everything the agent pinned under the root (every layout
/// version's folder, nothing else: the root may be shared, e.g.
/// `--bpf-pin-dir=/sys/fs/bpf`): unpinning the links detaches the programs,
/// unpinning the maps frees them. The root goes too once it is empty.
pub fn uninstall(pins: &PinLayout) -> Result<bool, DatapathError> {
    let mut folders = pins.other_versions();
    if pins.dir().exists() {
        folders.push(format!("v{}", super::pins::VERSION));
    }
    for folder in &folders {
        fs::remove_dir_all(pins.with_version_folder(folder).dir())?;
    }
    // Not remove_dir_all: only if nothing else lives there.
    let _ = fs::remove_dir(pins.root());
    Ok(!folders.is_empty())
}

/// The interface's index in the current network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

fn prog_err<E>(program: &'static str, what: impl Into<String>) -> impl FnOnce(E) -> DatapathError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    move |e| DatapathError::Program { program, what, source: Box::new(e) }
}

/// Pins the program itself too, so `bpftool prog show pinned` finds it;
/// replaces the pin of an older version.
fn pin_program(
    prog: &mut aya::programs::Program,
    pins: &PinLayout,
    name: &'static str,
) -> Result<(), DatapathError> {
    let path = pins.prog(name);
    let _ = fs::remove_file(&path);
    prog.pin(&path).map_err(prog_err(name, format!("pin at {}", path.display())))
}

/// The TC program `name`, loaded (the verifier runs once per agent).
fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name, "not a TC classifier"))?;
    if prog.fd().is_err() {
        prog.load().map_err(prog_err(name, "load (verifier)"))?;
    }
    Ok(prog)
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let name = program_names::XDP_GUARD;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name, "not an XDP program"))?;
    if prog.fd().is_err() {
        prog.load().map_err(prog_err(name, "load (verifier)"))?;
    }
    Ok(prog)
}

fn attach_tc(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    name: &'static str,
    iface: &str,
    hook: TcAttachType,
    report: &mut AttachReport,
) -> Result<(), DatapathError> {
    let prog = classifier(ebpf, name)?;
    let pin = pins.link(name, iface);
    let label = format!("{name} on {iface} {}", hook_name(hook));

    let mut adopted = None;
    if let Some(old) = open_pinned_link(&pin) {
        // Unpin first: the pin is re-created below for whatever link ends up
        // attached. Our fd keeps the old link alive meanwhile.
        match old.unpin() {
            Ok(fd_link) => match SchedClassifierLink::try_from(fd_link) {
                Ok(link) => match prog.attach_to_link(link) {
                    Ok(id) => adopted = Some(id),
                    Err(e) => warn!("{label}: cannot update the pinned link ({e}); attaching anew"),
                },
                Err(e) => warn!("{label}: pinned link is not a TC link ({e}); attaching anew"),
            },
            Err(e) => warn!("{label}: cannot unpin {}: {e}", pin.display()),
        }
    }
    // A link adopted from a device that was deleted and re-created since is
    // defunct: updating it succeeds but attaches nothing. Check.
    let prog_id = prog.info().map_err(prog_err(name, "info"))?.id();
    if adopted.is_some() && !tcx_has_program(iface, hook, prog_id) {
        warn!("{label}: the pinned link was no longer attached; attaching anew");
        adopted = None;
    }
    let id = match adopted {
        Some(id) => {
            report.adopted.push(label.clone());
            id
        }
        None => {
            let id = prog
                .attach_with_options(iface, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(prog_err(name, format!("TCX attach to {iface} (needs Linux 6.6+)")))?;
            report.created.push(label.clone());
            id
        }
    };
    let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
    let fd_link = FdLink::try_from(link).map_err(prog_err(name, "link fd"))?;
    fd_link.pin(&pin).map_err(prog_err(name, format!("pin link at {}", pin.display())))?;
    debug!("{label}: pinned at {}", pin.display());
    pin_program(ebpf.program_mut(name).ok_or(DatapathError::MissingProgram(name))?, pins, name)
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    iface: &str,
    mode: XdpGuard,
    report: &mut AttachReport,
) -> Result<(), DatapathError> {
    let name = program_names::XDP_GUARD;
    let prog = xdp_program(ebpf)?;
    let pin = pins.link(name, iface);
    let label = format!("{name} on {iface} xdp");
    let mut adopted = None;
    if let Some(old) = open_pinned_link(&pin) {
        if let Ok(fd_link) = old.unpin() {
            if let Ok(link) = XdpLink::try_from(fd_link) {
                match prog.attach_to_link(link) {
                    Ok(id) => adopted = Some(id),
                    Err(e) => warn!("{label}: cannot update the pinned link ({e}); attaching anew"),
                }
            }
        }
    }
    let id = match adopted {
        Some(id) => {
            report.adopted.push(label);
            id
        }
        None => {
            let flags = match mode {
                XdpGuard::Generic => XdpMode::Skb,
                _ => XdpMode::Driver,
            };
            let id = prog.attach(iface, flags).map_err(prog_err(
                name,
                format!("XDP attach to {iface} in {mode:?} mode (native mode needs driver support)"),
            ))?;
            report.created.push(label);
            id
        }
    };
    let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
    let fd_link = FdLink::try_from(link).map_err(prog_err(name, "link fd"))?;
    fd_link.pin(&pin).map_err(prog_err(name, format!("pin link at {}", pin.display())))?;
    pin_program(ebpf.program_mut(name).ok_or(DatapathError::MissingProgram(name))?, pins, name)
}

fn open_pinned_link(pin: &Path) -> Option<PinnedLink> {
    match PinnedLink::from_pin(pin) {
        Ok(link) => Some(link),
        Err(e) => {
            if pin.exists() {
                warn!("cannot open pinned link {}: {e}", pin.display());
                let _ = fs::remove_file(pin);
            }
            None
        }
    }
}

/// Detaches a pinned link that should no longer exist (e.g. the XDP guard
/// after it was turned off).
fn detach_pinned(pin: &Path) {
    if pin.exists() {
        match fs::remove_file(pin) {
            Ok(()) => info!("detached {}", pin.display()),
            Err(e) => warn!("cannot remove {}: {e}", pin.display()),
        }
    }
}

fn tcx_has_program(iface: &str, hook: TcAttachType, prog_id: u32) -> bool {
    match SchedClassifier::query_tcx(iface, hook) {
        Ok((_, progs)) => progs.iter().any(|p| p.id() == prog_id),
        Err(e) => {
            warn!("cannot query TCX programs on {iface}: {e}");
            false
        }
    }
}

fn hook_name(hook: TcAttachType) -> &'static str {
    match hook {
        TcAttachType::Ingress => "tc ingress",
        TcAttachType::Egress => "tc egress",
        TcAttachType::Custom(_) => "tc custom",
    }
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (fresh
/// machines), as Cilium's agent does. Pins elsewhere must already be on a
/// bpffs.
pub fn ensure_bpffs(pin_root: &Path) -> Result<(), DatapathError> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    let bpf_mounts: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_src, target, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "bpf").then_some(target)
        })
        .collect();
    if bpf_mounts.iter().any(|m| pin_root.starts_with(m)) {
        return Ok(());
    }
    if !pin_root.starts_with("/sys/fs/bpf") {
        return Err(DatapathError::Bpffs(format!(
            "{} is not on a bpf filesystem; mount one there or use a folder under /sys/fs/bpf",
            pin_root.display()
        )));
    }
    info!("mounting bpffs at /sys/fs/bpf");
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        let e = io::Error::last_os_error();
        return Err(DatapathError::Bpffs(format!("mount -t bpf bpf /sys/fs/bpf failed: {e}")));
    }
    Ok(())
}
