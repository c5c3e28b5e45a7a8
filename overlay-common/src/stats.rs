//! Packet counters: every packet a program sees is counted under exactly one
//! reason, so the counters of a program add up to the packets it saw.

/// Index into the per-CPU `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Encapsulated in VXLAN and sent to a remote node.
    Encapsulated = 0,
    /// Sent unencapsulated to a remote node (host-gw / DirectRouting).
    DirectRouted = 1,
    /// Decapsulated and handed straight to a local pod's veth.
    DecapToPod = 2,
    /// Decapsulated and handed to the host's stack (the node itself, or a
    /// pod not yet in the endpoint map).
    DecapToHost = 3,
    /// Not ours (not IPv4, not to a remote pod, not our VXLAN): untouched.
    PassedNotOurs = 4,
    /// Ours, but the kernel must handle it (TTL expiry, fragmentation or
    /// frag-needed, no configuration yet); passed to its stack.
    PassedToKernel = 5,
    /// VXLAN to our port from an address that holds no lease.
    DropUnknownSender = 6,
    /// VXLAN from a node whose inner source is outside that node's lease.
    DropSpoofedSource = 7,
    /// VXLAN to our port with another VNI.
    DropBadVni = 8,
    /// VXLAN whose inner destination MAC is not our VtepMAC.
    DropWrongVtepMac = 9,
    /// To the cluster network but no lease covers the destination.
    DropNoRoute = 10,
    /// Cannot fit the uplink and cannot be fragmented or answered.
    DropTooBig = 11,
    /// Truncated or malformed headers on our VXLAN port.
    DropMalformed = 12,
    /// A kernel helper failed (e.g. no room to grow the packet).
    DropError = 13,
    /// From a local pod with a source address that is not its own: a pod
    /// must not speak for another pod, the node or anyone else.
    DropPodSpoofedSource = 14,
    /// From a local pod to a node's VXLAN port: masqueraded, it would
    /// leave with the trusted node address and be decapsulated there.
    DropPodToTunnelPort = 15,
    /// To a remote pod, but the reply of a flow the kernel forwarded (and
    /// maybe translated: DNAT, SNAT, masquerade): passed to the kernel so
    /// that conntrack sees it and reverses the translation.
    PassedKernelFlow = 16,
    /// Delivered to a local pod by the kernel (pod veth egress): recorded
    /// so that the pod's replies go back through the kernel too.
    KernelDelivered = 17,
    /// IPv6 VXLAN, left to the kernel's VXLAN driver of the agent's device,
    /// which builds and takes off the outer IPv6 + UDP header (it carries
    /// the checksum IPv6 requires; ipv6/encap.rs): on the uplink, v6 VXLAN
    /// that passed the checks on its way to the device's socket; at the
    /// device's egress, a frame we gave a tunnel key (already counted
    /// `encapsulated` where it was handed over) on its way into the driver.
    PassedToVxlanDriver = 18,
}

pub const REASON_COUNT: u32 = 19;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Encapsulated,
        Reason::DirectRouted,
        Reason::DecapToPod,
        Reason::DecapToHost,
        Reason::PassedNotOurs,
        Reason::PassedToKernel,
        Reason::DropUnknownSender,
        Reason::DropSpoofedSource,
        Reason::DropBadVni,
        Reason::DropWrongVtepMac,
        Reason::DropNoRoute,
        Reason::DropTooBig,
        Reason::DropMalformed,
        Reason::DropError,
        Reason::DropPodSpoofedSource,
        Reason::DropPodToTunnelPort,
        Reason::PassedKernelFlow,
        Reason::KernelDelivered,
        Reason::PassedToVxlanDriver,
    ];

    /// Stable snake_case name, used by `inspect` and the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Encapsulated => "encapsulated",
            Reason::DirectRouted => "direct_routed",
            Reason::DecapToPod => "decap_to_pod",
            Reason::DecapToHost => "decap_to_host",
            Reason::PassedNotOurs => "passed_not_ours",
            Reason::PassedToKernel => "passed_to_kernel",
            Reason::DropUnknownSender => "drop_unknown_sender",
            Reason::DropSpoofedSource => "drop_spoofed_source",
            Reason::DropBadVni => "drop_bad_vni",
            Reason::DropWrongVtepMac => "drop_wrong_vtep_mac",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropTooBig => "drop_too_big",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropError => "drop_error",
            Reason::DropPodSpoofedSource => "drop_pod_spoofed_source",
            Reason::DropPodToTunnelPort => "drop_pod_to_tunnel_port",
            Reason::PassedKernelFlow => "passed_kernel_flow",
            Reason::KernelDelivered => "kernel_delivered",
            Reason::PassedToVxlanDriver => "passed_to_vxlan_driver",
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropUnknownSender
                | Reason::DropSpoofedSource
                | Reason::DropBadVni
                | Reason::DropWrongVtepMac
                | Reason::DropNoRoute
                | Reason::DropTooBig
                | Reason::DropMalformed
                | Reason::DropError
                | Reason::DropPodSpoofedSource
                | Reason::DropPodToTunnelPort
        )
    }
}

/// Value of `STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

// SAFETY: #[repr(C)] of two u64s: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_layout() {
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::align_of::<Counter>(), 8);
    }

    #[test]
    fn reasons_are_dense_and_named_uniquely() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(r.name(), other.name());
            }
        }
        assert!(Reason::DropUnknownSender.is_drop());
        assert!(!Reason::PassedToKernel.is_drop());
        assert!(Reason::DropPodToTunnelPort.is_drop());
        assert!(!Reason::KernelDelivered.is_drop());
        let drops = Reason::ALL.iter().filter(|r| r.is_drop()).count();
        let named = Reason::ALL.iter().filter(|r| r.name().starts_with("drop_")).count();
        assert_eq!(drops, named, "a reason is a drop exactly when its name says so");
    }
}
