//! The kernel settings the data path needs.
use log::info;

#[derive(Debug, thiserror::Error)]
#[error("sysctl {path}: {source}")]
pub struct SysctlError {
    path: String,
    source: std::io::Error,
}

/// IP forwarding on, and reverse-path filtering loose on the uplink:
/// decapsulated packets arrive on the uplink from pod addresses that the
/// host routes via the tunnel device, which strict rp_filter would drop.
pub fn ensure_sysctls(uplink: &str) -> Result<(), SysctlError> {
    set_sysctl("net/ipv4/ip_forward", "1", true)?;
    // The kernel applies the larger of `all` and the device's value, so a
    // loose uplink is enough; `all` (every other device, the pods' veths
    // included) keeps what the host chose.
    let all = read_sysctl("net/ipv4/conf/all/rp_filter")?;
    let path = format!("net/ipv4/conf/{uplink}/rp_filter");
    let dev = read_sysctl(&path)?;
    if all.trim() == "1" || dev.trim() == "1" {
        set_sysctl(&path, "2", false)?;
        info!("{path}: strict reverse-path filtering set to loose (2) for decapsulated traffic");
    }
    Ok(())
}

fn read_sysctl(path: &str) -> Result<String, SysctlError> {
    let full = format!("/proc/sys/{path}");
    std::fs::read_to_string(&full).map_err(|source| SysctlError { path: full, source })
}

fn set_sysctl(path: &str, value: &str, log_change: bool) -> Result<(), SysctlError> {
    let old = read_sysctl(path)?;
    if old.trim() == value {
        return Ok(());
    }
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).map_err(|source| SysctlError { path: full, source })?;
    if log_change {
        info!("{path} = {value}");
    }
    Ok(())
}

/// IPv6 forwarding on (dual stack): v6 pods not learnt yet, and what the
/// programs leave to the kernel, are routed by the host as for IPv4.
pub fn ensure_ipv6_forwarding() -> Result<(), SysctlError> {
    set_sysctl("net/ipv6/conf/all/forwarding", "1", true)
}
