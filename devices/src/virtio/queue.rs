//! Taking chains off a driver's queue without trusting its indices or lengths.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The driver's avail ring cannot be used any more: its index ran more than the queue's
/// length ahead of the device, or it is not in guest memory. Nothing on that queue is
/// trustworthy until the driver resets the device.
#[derive(Debug, thiserror::Error)]
#[error("broken queue: {0}")]
pub struct QueueBroken(#[source] pub virtio_queue::Error);

/// A chain had more descriptors than the device accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("descriptor chain is longer than {0} descriptors")]
pub struct ChainTooLong(pub usize);

/// The next available chain, if any. Unlike `pop_descriptor_chain`, a broken avail ring is
/// an error the caller acts on (once), not a `None` that looks like an empty queue while
/// `enable_notification` keeps saying there is more.
pub fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueBroken> {
    Ok(queue.iter(mem).map_err(QueueBroken)?.next())
}

/// Asks the driver not to notify while the device drains the queue (with EVENT_IDX the
/// last `notifications_on` already did). `device` names the caller in the log.
pub fn notifications_off(queue: &mut Queue, mem: &GuestMemoryMmap, device: &str) {
    if let Err(e) = queue.disable_notification(mem) {
        log::warn!("{device}: cannot disable notifications: {e}");
    }
}

/// Asks the driver to notify again once the queue is drained; true when it posted more
/// in the meantime, so the caller drains again instead of waiting for a notification
/// that will not come. A failure to ask is logged and ends the drain.
pub fn notifications_on(queue: &mut Queue, mem: &GuestMemoryMmap, device: &str) -> bool {
    match queue.enable_notification(mem) {
        Ok(more) => more,
        Err(e) => {
            log::warn!("{device}: cannot enable notifications: {e}");
            false
        }
    }
}

/// Copies a chain's descriptors into `out` (reused), reading at most `max` + 1 of them: an
/// indirect table may hold 65535, and none of our devices takes that many.
pub fn collect_chain(
    chain: impl Iterator<Item = Descriptor>,
    out: &mut Vec<Descriptor>,
    max: usize,
) -> Result<(), ChainTooLong> {
    out.clear();
    for d in chain {
        if out.len() == max {
            return Err(ChainTooLong(max));
        }
        out.push(d);
    }
    Ok(())
}

/// The ring indexes of a queue as they stand in guest memory: "avail A used U", plus
/// where each side asked to be notified with EVENT_IDX ("used_event", "avail_event").
/// With every request completed, avail equals used; a guest that still waits then lost an
/// interrupt, while avail ahead of used is work the device has not finished (or seen).
pub fn ring_state(queue: &Queue, mem: &GuestMemoryMmap) -> String {
    // The driver chose the addresses: "?" where one is outside guest memory (or wraps).
    let read = |ring: u64, offset: u64| {
        ring.checked_add(offset)
            .and_then(|addr| mem.read_obj::<u16>(GuestAddress(addr)).ok())
            .map_or_else(|| "?".to_owned(), |v| v.to_string())
    };
    let size = u64::from(queue.size());
    let (avail, used) = (queue.avail_ring(), queue.used_ring());
    format!(
        "size {size} avail {} used {} used_event {} avail_event {}",
        read(avail, 2),
        read(used, 2),
        read(avail, 4 + 2 * size),
        read(used, 4 + 8 * size),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn an_avail_index_too_far_ahead_is_a_broken_queue() {
        let m = mem();
        let mock = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let mut q = mock.create_queue::<Queue>().unwrap();
        assert!(pop_chain(&mut q, &m).unwrap().is_none(), "empty queue");
        mock.avail().idx().store(17);
        assert!(pop_chain(&mut q, &m).is_err());
        // And it stays broken: nothing is taken from it.
        assert!(pop_chain(&mut q, &m).is_err());
        assert_eq!(q.next_avail(), 0);
    }

    #[test]
    fn long_chains_are_cut_off_at_the_limit() {
        let descs: Vec<Descriptor> = (0..10).map(|i| Descriptor::new(i, 1, 0, 0)).collect();
        let mut out = Vec::new();
        collect_chain(descs.iter().copied(), &mut out, 10).unwrap();
        assert_eq!(out.len(), 10);
        let mut taken = 0;
        let counted = descs.iter().copied().inspect(|_| taken += 1);
        assert_eq!(collect_chain(counted, &mut out, 4), Err(ChainTooLong(4)));
        assert_eq!(taken, 5, "stops reading right after the limit");
    }
}
