//! Feature bits (virtio 1.2, 5.1.3) and the TAP offloads (TUNSETOFFLOAD's TUN_F_*) that
//! go with them. Offloads are offered only when the TAP can turn them on; after the driver
//! acks, the TAP is told to hand us exactly the kinds of frame the guest accepts.

use crate::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The device takes frames with partial checksums (the host completes them).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// The driver takes frames with partial checksums.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// `mtu` in the config space is valid.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// `mac` in the config space is valid.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The driver takes TCPv4 GSO frames.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// The driver takes TCPv6 GSO frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
/// The driver takes TSO frames with ECN (CWR set).
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
/// The driver takes UDP fragmentation offload frames.
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
/// The device takes TCPv4 GSO frames.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// The device takes TCPv6 GSO frames.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// The device takes TSO frames with ECN.
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
/// A received frame may span several rx buffers (`num_buffers` in its header).
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// `status` in the config space is valid.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// `status`: the link is up (it always is: a TAP has no cable to pull).
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// TUNSETOFFLOAD flags (linux/if_tun.h): what the TAP may hand to user space.
/// Partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// TCPv4 GSO.
pub const TUN_F_TSO4: u32 = 0x02;
/// TCPv6 GSO.
pub const TUN_F_TSO6: u32 = 0x04;
/// TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// UDP fragmentation offload (accepted and ignored by current kernels).
pub const TUN_F_UFO: u32 = 0x10;

/// Offload sets to try, largest first: the kernel refuses a set with a flag it does not
/// know, and takes TSO flags only with CSUM.
pub const OFFLOAD_PROBES: [u32; 4] = [
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM,
    0,
];

/// What the device offers on a TAP that can turn on `tap_offloads`.
pub fn offered_features(tap_offloads: u32, with_mtu: bool) -> u64 {
    let mut f = VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_INDIRECT_DESC
        | VIRTIO_RING_F_EVENT_IDX
        | VIRTIO_NET_F_MAC
        | VIRTIO_NET_F_STATUS
        | VIRTIO_NET_F_MRG_RXBUF;
    if with_mtu {
        f |= VIRTIO_NET_F_MTU;
    }
    if tap_offloads & TUN_F_CSUM != 0 {
        // The host side of each pair needs nothing from the TAP but IFF_VNET_HDR (it
        // checks and segments what we write); we offer it with the guest side so an old
        // kernel without offloads gets plain frames both ways.
        f |= VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM;
        if tap_offloads & (TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) != 0 {
            f |= VIRTIO_NET_F_GUEST_TSO4
                | VIRTIO_NET_F_GUEST_TSO6
                | VIRTIO_NET_F_GUEST_ECN
                | VIRTIO_NET_F_HOST_TSO4
                | VIRTIO_NET_F_HOST_TSO6
                | VIRTIO_NET_F_HOST_ECN;
        }
        if tap_offloads & TUN_F_UFO != 0 {
            f |= VIRTIO_NET_F_GUEST_UFO;
        }
    }
    f
}

/// The TAP offloads for the features the driver acked: partial checksums and GSO frames
/// only if the guest takes them (the spec makes each GSO feature depend on GUEST_CSUM).
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & VIRTIO_NET_F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut o = TUN_F_CSUM;
    if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
        o |= TUN_F_TSO4;
    }
    if acked & VIRTIO_NET_F_GUEST_TSO6 != 0 {
        o |= TUN_F_TSO6;
    }
    // ECN only qualifies TSO: the kernel refuses it alone.
    if acked & VIRTIO_NET_F_GUEST_ECN != 0 && o & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
        o |= TUN_F_TSO_ECN;
    }
    if acked & VIRTIO_NET_F_GUEST_UFO != 0 {
        o |= TUN_F_UFO;
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_follow_what_the_tap_can_do() {
        let plain = offered_features(0, false);
        assert_eq!(plain & VIRTIO_NET_F_CSUM, 0);
        assert_eq!(plain & VIRTIO_NET_F_MTU, 0);
        for f in [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
        ] {
            assert_ne!(plain & f, 0, "{f:#x}");
        }
        let csum = offered_features(TUN_F_CSUM, true);
        assert_ne!(csum & VIRTIO_NET_F_MTU, 0);
        assert_ne!(csum & VIRTIO_NET_F_GUEST_CSUM, 0);
        assert_eq!(csum & VIRTIO_NET_F_GUEST_TSO4, 0);
        let all = offered_features(OFFLOAD_PROBES[1], false);
        for f in [
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
        ] {
            assert_ne!(all & f, 0, "{f:#x}");
        }
        assert_eq!(all & VIRTIO_NET_F_GUEST_UFO, 0);
        assert_ne!(
            offered_features(OFFLOAD_PROBES[0], false) & VIRTIO_NET_F_GUEST_UFO,
            0
        );
    }

    #[test]
    fn tap_offloads_follow_the_acked_guest_features() {
        assert_eq!(
            tap_offloads(VIRTIO_NET_F_GUEST_TSO4),
            0,
            "no GSO without CSUM"
        );
        assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tap_offloads(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_ECN),
            TUN_F_CSUM,
            "ECN alone is refused by the kernel"
        );
        let everything = offered_features(OFFLOAD_PROBES[0], true);
        assert_eq!(tap_offloads(everything), OFFLOAD_PROBES[0]);
        // The host-side features never change what the TAP hands us.
        assert_eq!(
            tap_offloads(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6),
            0
        );
    }
}
