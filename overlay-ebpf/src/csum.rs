//! Internet checksums (RFC 1071) and incremental updates (RFC 1624).

/// Checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(hdr: &[u8; 20]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([hdr[i], hdr[i + 1]]) as u32;
        i += 2;
    }
    fold(sum)
}

/// The checksum after one 16-bit word of the header changed from `old` to
/// `new` (RFC 1624 eqn. 3). Keeps a wrong checksum wrong, so a corrupted
/// packet is still rejected by whoever validates it.
#[inline(always)]
pub fn replace_word(csum: u16, old: u16, new: u16) -> u16 {
    let sum = (!csum as u32) + (!old as u32) + (new as u32);
    fold(sum)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
