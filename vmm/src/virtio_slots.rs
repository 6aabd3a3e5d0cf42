//! Where virtio-mmio devices go: each device added takes the next MMIO window and GSI,
//! and the kernel learns about it from one `virtio_mmio.device=` token. The device
//! manager is the only caller of `take`; the config only counts devices (its command-line
//! length check uses `tokens`, which describes the same slots).

use crate::arch::layout::{MAX_IRQ, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE};

/// virtio-mmio devices fit the GSIs left after the legacy ones.
pub const MAX_VIRTIO_DEVICES: usize = (MAX_IRQ - VIRTIO_IRQ_BASE + 1) as usize;

/// One device's MMIO window and interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub addr: u64,
    pub irq: u32,
}

impl Slot {
    fn nth(index: usize) -> Self {
        Self {
            addr: VIRTIO_MMIO_BASE + index as u64 * devices::virtio::MMIO_WINDOW_SIZE,
            irq: VIRTIO_IRQ_BASE + index as u32,
        }
    }

    /// The kernel command-line token that declares this device.
    pub fn cmdline_token(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.addr, self.irq)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no virtio-mmio slot is left: at most {MAX_VIRTIO_DEVICES} devices fit")]
pub struct SlotsFull;

/// Hands out slots in order.
#[derive(Debug, Default)]
pub struct VirtioSlots {
    taken: Vec<Slot>,
}

impl VirtioSlots {
    pub fn take(&mut self) -> Result<Slot, SlotsFull> {
        if self.taken.len() >= MAX_VIRTIO_DEVICES {
            return Err(SlotsFull);
        }
        let slot = Slot::nth(self.taken.len());
        self.taken.push(slot);
        Ok(slot)
    }

    /// The command-line tokens of every slot taken, in order.
    pub fn cmdline_tokens(&self) -> Vec<String> {
        self.taken.iter().map(Slot::cmdline_token).collect()
    }
}

/// The tokens `count` devices get: what the command line will hold for them.
pub fn tokens(count: usize) -> Vec<String> {
    (0..count).map(|i| Slot::nth(i).cmdline_token()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_each_other_from_gsi_5_until_the_gsis_run_out() {
        let mut slots = VirtioSlots::default();
        assert_eq!(
            slots.take().unwrap(),
            Slot {
                addr: 0xd000_0000,
                irq: 5
            }
        );
        assert_eq!(
            slots.take().unwrap().cmdline_token(),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(slots.cmdline_tokens(), tokens(2));
        for _ in 2..MAX_VIRTIO_DEVICES {
            slots.take().unwrap();
        }
        assert!(slots.take().is_err());
    }
}
