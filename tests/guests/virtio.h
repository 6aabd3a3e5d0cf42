/* virtio-mmio (version 2) registers, status bits and descriptors, shared by the tiny
 * guests' polling drivers (blk.c, vsock.c, net.c). */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "guest.h"

enum {
	MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008,
	DEVICE_FEATURES = 0x010, DEVICE_FEATURES_SEL = 0x014,
	DRIVER_FEATURES = 0x020, DRIVER_FEATURES_SEL = 0x024,
	QUEUE_SEL = 0x030, QUEUE_NUM_MAX = 0x034, QUEUE_NUM = 0x038,
	QUEUE_READY = 0x044, QUEUE_NOTIFY = 0x050,
	INTERRUPT_STATUS = 0x060, INTERRUPT_ACK = 0x064, STATUS = 0x070,
	QUEUE_DESC_LOW = 0x080, QUEUE_DESC_HIGH = 0x084,
	QUEUE_DRIVER_LOW = 0x090, QUEUE_DRIVER_HIGH = 0x094,
	QUEUE_DEVICE_LOW = 0x0a0, QUEUE_DEVICE_HIGH = 0x0a4, CONFIG = 0x100,
};
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8 };
enum { D_NEXT = 1, D_WRITE = 2 };

#define VIRTIO_MMIO_MAGIC 0x74726976
#define F_VERSION_1 (1ull << 32)

struct desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

/* The driver's side of a split virtqueue whose rings are at `avail` and `used`. */
struct vq {
	u64 avail, used;
	u16 size, avail_idx, used_idx;
};

/* Makes descriptor chain `id` available to the device. */
static inline void vq_push(struct vq *v, u16 id)
{
	volatile u16 *avail = (volatile u16 *)v->avail;
	avail[2 + v->avail_idx % v->size] = id;
	barrier();
	avail[1] = ++v->avail_idx;
	barrier();
}

/* Takes the next used entry, if the device published one. */
static inline int vq_take(struct vq *v, u16 *id, u32 *len)
{
	volatile u16 *used = (volatile u16 *)v->used;
	if (used[1] == v->used_idx)
		return 0;
	barrier();
	volatile u32 *elem = (volatile u32 *)(v->used + 4 + 8 * (v->used_idx % v->size));
	*id = (u16)elem[0];
	*len = elem[1];
	v->used_idx++;
	return 1;
}

#endif
