/// The BPF object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("OVERLAY_EBPF_OBJECT"));
