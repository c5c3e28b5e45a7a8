//! systemd's readiness protocol (Type=notify), as flanneld's unit expects:
//! one datagram "READY=1" to $NOTIFY_SOCKET once the node is ready.
use std::os::unix::net::UnixDatagram;

use log::{debug, warn};

pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let result = UnixDatagram::unbound().and_then(|sock| {
        if let Some(abstract_name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
            sock.send_to_addr(b"READY=1", &addr)
        } else {
            sock.send_to(b"READY=1", &path)
        }
    });
    match result {
        Ok(_) => debug!("notified systemd: READY=1"),
        Err(e) => warn!("cannot notify systemd at {path}: {e}"),
    }
}
