/* test=vsock: a polling virtio-mmio (version 2) virtio-vsock driver (virtio 1.2, 5.10)
 * that opens a connection to the host, gets one refused, and echoes a host-initiated
 * connection while advertising a tiny receive buffer, checking the device's credit
 * accounting. No interrupts: the used rings are polled with bounded spins. */
#include "virtio.h"

enum { VQ_RX = 0, VQ_TX = 1, VQ_EVENT = 2, NUM_VQS = 3 };
enum {
	OP_REQUEST = 1, OP_RESPONSE = 2, OP_RST = 3, OP_SHUTDOWN = 4, OP_RW = 5,
	OP_CREDIT_UPDATE = 6, OP_CREDIT_REQUEST = 7,
};
enum { TYPE_STREAM = 1, SHUTDOWN_BOTH = 3 };

#define VIRTIO_ID_VSOCK 19
#define HOST_CID 2
#define HDR_LEN 44

#define QSIZE 16
/* Scratch memory above the blk driver's (0x200000 + 16 * 0x10000). */
#define MEM 0x400000ull
#define Q_DESC(q) (MEM + (u64)(q) * 0x1000)
#define Q_AVAIL(q) (Q_DESC(q) + 0x400)
#define Q_USED(q) (Q_DESC(q) + 0x800)
#define RX_BUFS 8
#define RX_BUF_SIZE 256 /* header + 212 payload bytes: more than the 64-byte credit */
#define RX_BUF(i) (MEM + 0x4000 + (u64)(i) * RX_BUF_SIZE)
#define EVENT_BUFS 4
#define EVENT_BUF(i) (MEM + 0x5000 + (u64)(i) * 16)
#define TX_HDR (MEM + 0x6000)
#define TX_DATA (MEM + 0x6100)

#define GUEST_PORT 40000
#define CONNECT_BUF_ALLOC 4096
#define LISTEN_BUF_ALLOC 64
/* The device answers on its own within ~1-2 s (TSC ~2.6 GHz); waits on the host test
 * program get ~6 s. A TSC that does not move gives up after STUCK_SPINS polls. */
#define SHORT_TICKS (1ull << 32)
#define LONG_TICKS (1ull << 34)
#define STUCK_SPINS 2000000


struct hdr {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port, len;
	u16 type, op;
	u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
_Static_assert(sizeof(struct hdr) == HDR_LEN, "virtio_vsock_hdr is 44 bytes");

/* One stream, from the guest's side. Counters wrap like the spec's u32s. */
struct conn {
	u32 local, peer;
	u32 buf_alloc;              /* what we advertise */
	u32 rx_bytes, fwd_cnt;      /* payload received / consumed */
	u32 fwd_cnt_sent;           /* fwd_cnt in our last header */
	u32 tx_cnt;                 /* payload sent */
	u32 peer_buf_alloc, peer_fwd_cnt;
};

struct rxpkt {
	u16 id;
	u32 used_len;
	struct hdr h;
	volatile u8 *data;
};

struct timer {
	u64 start, last, ticks;
	unsigned stuck;
};

static u64 base, guest_cid;
static struct vq vqs[NUM_VQS];
static int broken;
static unsigned rx_packets, tx_packets;

static u32 rd(u32 off)
{
	return mmio_read32(base + off);
}

static void wr(u32 off, u32 v)
{
	mmio_write32(base + off, v);
}

static void timer_start(struct timer *t, u64 ticks)
{
	t->start = t->last = rdtsc();
	t->ticks = ticks;
	t->stuck = 0;
}

static int timer_expired(struct timer *t)
{
	u64 now = rdtsc();
	t->stuck = now == t->last ? t->stuck + 1 : 0;
	t->last = now;
	return now - t->start > t->ticks || t->stuck > STUCK_SPINS;
}

static void vq_post(int q, u16 id)
{
	vq_push(&vqs[q], id);
}

static int vq_pop(int q, u16 *id, u32 *len)
{
	return vq_take(&vqs[q], id, len);
}

/* Sends one packet: header in one descriptor, payload (if any) in a second. Waits for
 * the device to take it, so the payload buffer may be reused afterwards. */
static int send_pkt(struct conn *c, u16 op, u32 flags, u64 data, u32 len, const char *what)
{
	if (broken)
		return -1;
	u32 credit = c->peer_buf_alloc - (c->tx_cnt - c->peer_fwd_cnt);
	if (len > credit) {
		out("fail vsock no_peer_credit %s len %u credit %u\n", what, len, credit);
		return -1;
	}
	struct hdr *h = (struct hdr *)TX_HDR;
	*h = (struct hdr){
		.src_cid = guest_cid, .dst_cid = HOST_CID,
		.src_port = c->local, .dst_port = c->peer,
		.len = len, .type = TYPE_STREAM, .op = op, .flags = flags,
		.buf_alloc = c->buf_alloc, .fwd_cnt = c->fwd_cnt,
	};
	volatile struct desc *dt = (volatile struct desc *)Q_DESC(VQ_TX);
	dt[0].addr = TX_HDR;
	dt[0].len = HDR_LEN;
	dt[0].flags = len ? D_NEXT : 0;
	dt[0].next = 1;
	dt[1].addr = data;
	dt[1].len = len;
	dt[1].flags = 0;
	dt[1].next = 0;
	vq_post(VQ_TX, 0);
	wr(QUEUE_NOTIFY, VQ_TX);

	struct timer t;
	timer_start(&t, SHORT_TICKS);
	u16 id;
	u32 used_len;
	while (!vq_pop(VQ_TX, &id, &used_len)) {
		if (timer_expired(&t)) {
			out("fail vsock timeout tx_%s\n", what);
			broken = 1;
			return -1;
		}
		__asm__ volatile("pause");
	}
	c->tx_cnt += len;
	c->fwd_cnt_sent = c->fwd_cnt;
	tx_packets++;
	return 0;
}

static void rx_repost(struct rxpkt *p)
{
	vq_post(VQ_RX, p->id);
	wr(QUEUE_NOTIFY, VQ_RX);
}

/* Next packet from the rx queue, or 0 when the timer runs out. Malformed ones are
 * reported and dropped. */
static int rx_next(struct rxpkt *p, struct timer *t)
{
	for (;;) {
		if (broken)
			return 0;
		while (!vq_pop(VQ_RX, &p->id, &p->used_len)) {
			if (timer_expired(t))
				return 0;
			__asm__ volatile("pause");
		}
		rx_packets++;
		if (p->id >= RX_BUFS) {
			out("fail vsock rx_bad_id %u\n", p->id);
			broken = 1;
			return 0;
		}
		p->h = *(struct hdr *)RX_BUF(p->id);
		p->data = (volatile u8 *)(RX_BUF(p->id) + HDR_LEN);
		const struct hdr *h = &p->h;
		if (p->used_len < HDR_LEN || h->len > RX_BUF_SIZE - HDR_LEN ||
		    p->used_len != HDR_LEN + h->len) {
			out("fail vsock rx_len used_len %u hdr_len %u op %u\n", p->used_len, h->len,
			    h->op);
		} else if (h->src_cid != HOST_CID || h->dst_cid != guest_cid ||
			   h->type != TYPE_STREAM) {
			out("fail vsock rx_addr src_cid %lu dst_cid %lu type %u\n", h->src_cid,
			    h->dst_cid, h->type);
		} else {
			return 1;
		}
		rx_repost(p);
	}
}

/* A packet that belongs to no stream we are waiting on: report it, and reset its
 * stream unless it is a reset itself. */
static void stray(struct rxpkt *p)
{
	struct hdr h = p->h;
	rx_repost(p);
	out("info vsock stray op %u src_port %u dst_port %u\n", h.op, h.src_port, h.dst_port);
	if (h.op != OP_RST) {
		struct conn c = { .local = h.dst_port, .peer = h.src_port,
				  .peer_buf_alloc = h.buf_alloc, .peer_fwd_cnt = h.fwd_cnt };
		send_pkt(&c, OP_RST, 0, 0, 0, "stray_rst");
	}
}

/* Next packet of stream `c` (others are strays); updates the peer's credit. */
static int rx_for(struct conn *c, struct rxpkt *p, struct timer *t)
{
	while (rx_next(p, t)) {
		if (p->h.src_port == c->peer && p->h.dst_port == c->local) {
			c->peer_buf_alloc = p->h.buf_alloc;
			c->peer_fwd_cnt = p->h.fwd_cnt;
			return 1;
		}
		stray(p);
	}
	return 0;
}

/* Accounts for an RW packet's payload; reports a device that sent beyond our credit. */
static void account_rw(struct conn *c, u32 len)
{
	u32 in_flight = c->rx_bytes - c->fwd_cnt_sent;
	if ((u64)in_flight + len > c->buf_alloc)
		out("fail vsock credit_exceeded port %u len %u in_flight %u buf_alloc %u\n",
		    c->local, len, in_flight, c->buf_alloc);
	c->rx_bytes += len;
}

/* Guest-initiated: connect, say hello, read the host's line, shut down. */
static void connect_test(u32 port)
{
	struct conn c = { .local = GUEST_PORT, .peer = port, .buf_alloc = CONNECT_BUF_ALLOC };
	struct rxpkt p;
	struct timer t;
	if (send_pkt(&c, OP_REQUEST, 0, 0, 0, "request") < 0)
		return;
	timer_start(&t, SHORT_TICKS);
	if (!rx_for(&c, &p, &t)) {
		out("fail vsock timeout connect\n");
		return;
	}
	rx_repost(&p);
	if (p.h.op == OP_RST) {
		out("info vsock connect_rst\n");
		return;
	}
	if (p.h.op != OP_RESPONSE) {
		out("fail vsock connect_op %u\n", p.h.op);
		send_pkt(&c, OP_RST, 0, 0, 0, "rst");
		return;
	}
	out("info vsock connect_response ok\n");
	out("info vsock connect_peer_buf_alloc %u\n", c.peer_buf_alloc);

	static const char hello[] = "hello from guest\n";
	memcpy((void *)TX_DATA, hello, sizeof(hello) - 1);
	if (send_pkt(&c, OP_RW, 0, TX_DATA, sizeof(hello) - 1, "hello") < 0)
		return;

	char line[64];
	unsigned n = 0;
	int eol = 0;
	timer_start(&t, LONG_TICKS);
	while (!eol) {
		if (!rx_for(&c, &p, &t)) {
			out("fail vsock timeout host_says\n");
			return;
		}
		u16 op = p.h.op;
		if (op == OP_RW) {
			account_rw(&c, p.h.len);
			for (u32 i = 0; i < p.h.len && !eol; i++) {
				char ch = (char)p.data[i];
				eol = ch == '\n';
				if (!eol && n < sizeof(line) - 1)
					line[n++] = ch >= 0x20 && ch < 0x7f ? ch : '?';
			}
			c.fwd_cnt += p.h.len;
		}
		rx_repost(&p);
		if (op == OP_RST || op == OP_SHUTDOWN) {
			out("info vsock connect_closed_early %u\n", op);
			return;
		}
	}
	line[n] = 0;
	out("info vsock host_says %s\n", line);

	if (send_pkt(&c, OP_SHUTDOWN, SHUTDOWN_BOTH, 0, 0, "shutdown") < 0)
		return;
	/* Both directions are shut: the device should answer with RST. */
	timer_start(&t, SHORT_TICKS);
	for (;;) {
		if (!rx_for(&c, &p, &t)) {
			out("info vsock shutdown_reply none\n");
			send_pkt(&c, OP_RST, 0, 0, 0, "rst");
			return;
		}
		rx_repost(&p);
		if (p.h.op == OP_RST || p.h.op == OP_SHUTDOWN)
			break;
		out("info vsock after_shutdown op %u len %u\n", p.h.op, p.h.len);
	}
	out("info vsock shutdown_reply %u\n", p.h.op);
	out("info vsock connect_peer_fwd_cnt %u\n", p.h.fwd_cnt);
	if (p.h.op == OP_SHUTDOWN)
		send_pkt(&c, OP_RST, 0, 0, 0, "rst");
}

/* Guest-initiated to a port nobody listens on: the device must reset it. */
static void refused_test(u32 port)
{
	struct conn c = { .local = GUEST_PORT + 1, .peer = port, .buf_alloc = CONNECT_BUF_ALLOC };
	struct rxpkt p;
	struct timer t;
	if (send_pkt(&c, OP_REQUEST, 0, 0, 0, "refused_request") < 0)
		return;
	timer_start(&t, SHORT_TICKS);
	if (!rx_for(&c, &p, &t)) {
		out("fail vsock timeout refused\n");
		return;
	}
	rx_repost(&p);
	if (p.h.op == OP_RST) {
		out("info vsock refused_rst ok\n");
		return;
	}
	out("info vsock refused_op %u\n", p.h.op);
	send_pkt(&c, OP_RST, 0, 0, 0, "rst");
}

/* Host-initiated: accept on `port` with a 64-byte buffer and echo until the host closes. */
static void listen_test(u32 port)
{
	struct conn c = { .local = port, .buf_alloc = LISTEN_BUF_ALLOC };
	struct rxpkt p;
	struct timer t;
	out("info vsock listening %u\n", port);
	timer_start(&t, LONG_TICKS);
	for (;;) {
		if (!rx_next(&p, &t)) {
			out("fail vsock timeout listen\n");
			return;
		}
		if (p.h.op == OP_REQUEST && p.h.dst_port == port)
			break;
		stray(&p);
	}
	rx_repost(&p);
	c.peer = p.h.src_port;
	c.peer_buf_alloc = p.h.buf_alloc;
	c.peer_fwd_cnt = p.h.fwd_cnt;
	out("info vsock request src_port %u buf_alloc %u\n", c.peer, c.peer_buf_alloc);
	if (send_pkt(&c, OP_RESPONSE, 0, 0, 0, "response") < 0)
		return;

	unsigned packets = 0, max_len = 0, updates = 0;
	for (;;) {
		timer_start(&t, LONG_TICKS);
		if (!rx_for(&c, &p, &t)) {
			out("fail vsock timeout echo\n");
			break;
		}
		u16 op = p.h.op;
		if (op == OP_RW) {
			u32 len = p.h.len;
			account_rw(&c, len);
			packets++;
			max_len = len > max_len ? len : max_len;
			/* Echo straight from the rx buffer; send_pkt waits until the device has
			 * taken it, so the buffer can go back afterwards. The echo still carries
			 * the old fwd_cnt: only the CREDIT_UPDATE below frees the credit. */
			int sent = send_pkt(&c, OP_RW, 0, RX_BUF(p.id) + HDR_LEN, len, "echo");
			rx_repost(&p);
			if (sent < 0)
				break;
			c.fwd_cnt += len;
			if (send_pkt(&c, OP_CREDIT_UPDATE, 0, 0, 0, "credit_update") < 0)
				break;
			updates++;
			continue;
		}
		rx_repost(&p);
		if (op == OP_CREDIT_REQUEST) {
			if (send_pkt(&c, OP_CREDIT_UPDATE, 0, 0, 0, "credit_update") < 0)
				break;
			updates++;
		} else if (op == OP_RST || op == OP_SHUTDOWN) {
			out("info vsock host_closed %u flags %u\n", op, p.h.flags);
			if (op == OP_SHUTDOWN)
				send_pkt(&c, OP_RST, 0, 0, 0, "rst");
			break;
		} else if (op != OP_CREDIT_UPDATE) {
			out("info vsock echo_unexpected_op %u\n", op);
		}
	}
	out("info vsock echo_bytes %u\n", c.rx_bytes);
	out("info vsock echo_packets %u\n", packets);
	out("info vsock echo_max_len %u\n", max_len);
	out("info vsock credit_updates %u\n", updates);
	out("info vsock echo_peer_fwd_cnt %u\n", c.peer_fwd_cnt);
}

static int setup(void)
{
	wr(STATUS, 0);
	wr(STATUS, S_ACK);
	wr(STATUS, S_ACK | S_DRIVER);
	wr(DEVICE_FEATURES_SEL, 0);
	u64 f = rd(DEVICE_FEATURES);
	wr(DEVICE_FEATURES_SEL, 1);
	f |= (u64)rd(DEVICE_FEATURES) << 32;
	out("info vsock features 0x%lx\n", f);
	if (!(f & F_VERSION_1)) {
		out("fail vsock no VERSION_1\n");
		return -1;
	}
	wr(DRIVER_FEATURES_SEL, 0);
	wr(DRIVER_FEATURES, 0);
	wr(DRIVER_FEATURES_SEL, 1);
	wr(DRIVER_FEATURES, (u32)(F_VERSION_1 >> 32));
	wr(STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (!(rd(STATUS) & S_FEATURES_OK)) {
		out("fail vsock features_ok not accepted\n");
		return -1;
	}

	u32 max[NUM_VQS];
	for (int q = 0; q < NUM_VQS; q++) {
		wr(QUEUE_SEL, (u32)q);
		max[q] = rd(QUEUE_NUM_MAX);
		if (!max[q]) {
			out("fail vsock queue%u num_max 0\n", q);
			return -1;
		}
		vqs[q] = (struct vq){ .avail = Q_AVAIL(q), .used = Q_USED(q) };
		vqs[q].size = max[q] < QSIZE ? (u16)max[q] : QSIZE;
		/* Only the ring headers need zeroing: the rest is written before use. */
		*(volatile u32 *)Q_AVAIL(q) = 0;
		*(volatile u32 *)Q_USED(q) = 0;
		wr(QUEUE_NUM, vqs[q].size);
		wr(QUEUE_DESC_LOW, (u32)Q_DESC(q));
		wr(QUEUE_DESC_HIGH, 0);
		wr(QUEUE_DRIVER_LOW, (u32)Q_AVAIL(q));
		wr(QUEUE_DRIVER_HIGH, 0);
		wr(QUEUE_DEVICE_LOW, (u32)Q_USED(q));
		wr(QUEUE_DEVICE_HIGH, 0);
		wr(QUEUE_READY, 1);
	}
	out("info vsock queue_num_max %u %u %u\n", max[0], max[1], max[2]);

	/* Receive buffers: one device-writable descriptor each (header + payload). */
	volatile struct desc *rx = (volatile struct desc *)Q_DESC(VQ_RX);
	unsigned nrx = RX_BUFS < vqs[VQ_RX].size ? RX_BUFS : vqs[VQ_RX].size;
	for (unsigned i = 0; i < nrx; i++) {
		rx[i] = (struct desc){ RX_BUF(i), RX_BUF_SIZE, D_WRITE, 0 };
		vq_post(VQ_RX, (u16)i);
	}
	volatile struct desc *ev = (volatile struct desc *)Q_DESC(VQ_EVENT);
	unsigned nev = EVENT_BUFS < vqs[VQ_EVENT].size ? EVENT_BUFS : vqs[VQ_EVENT].size;
	for (unsigned i = 0; i < nev; i++) {
		ev[i] = (struct desc){ EVENT_BUF(i), 16, D_WRITE, 0 };
		vq_post(VQ_EVENT, (u16)i);
	}

	wr(STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	out("info vsock status 0x%x\n", rd(STATUS));
	wr(QUEUE_NOTIFY, VQ_RX);
	wr(QUEUE_NOTIFY, VQ_EVENT);
	guest_cid = rd(CONFIG) | ((u64)rd(CONFIG + 4) << 32);
	out("info vsock cid %lu\n", guest_cid);
	return 0;
}

static u32 port_arg(const char *key, u32 dflt)
{
	const char *v = cmd_value(key, NULL);
	return v ? (u32)parse_num(&v) : dflt;
}

/* The first virtio-mmio device with DeviceID 19, from the virtio_mmio.device= tokens. */
static u64 find_device(void)
{
	const char *from = NULL, *v;
	while ((v = cmd_value("virtio_mmio.device", &from))) {
		while (*v && *v != '@' && *v != ' ')
			v++;
		if (*v != '@')
			continue;
		v++;
		u64 b = parse_num(&v);
		if (mmio_read32(b + MAGIC) == 0x74726976 && mmio_read32(b + DEVICE_ID) == VIRTIO_ID_VSOCK) {
			u32 version = mmio_read32(b + VERSION);
			if (version != 2) {
				out("fail vsock version %u\n", version);
				return 0;
			}
			return b;
		}
	}
	out("fail vsock no_device\n");
	return 0;
}

/* vsock_break_avail=1: the driver publishes a tx avail index more than the queue size
 * ahead of the device, as a hostile guest would. The device must give up on its queues
 * (DEVICE_NEEDS_RESET plus a config interrupt) without pinning its thread; after a reset
 * and a fresh set-up, the streams below work as ever. */
static int break_avail_ring(void)
{
	struct vq *tx = &vqs[VQ_TX];
	volatile u16 *avail = (volatile u16 *)tx->avail;
	avail[1] = (u16)(tx->avail_idx + tx->size + 1);
	barrier();
	wr(QUEUE_NOTIFY, VQ_TX);
	struct timer t;
	timer_start(&t, SHORT_TICKS);
	u32 status = rd(STATUS);
	while (!(status & 0x40) && !timer_expired(&t))
		status = rd(STATUS);
	out("info vsock broken_status 0x%x\n", status);
	out("info vsock broken_isr 0x%x\n", rd(INTERRUPT_STATUS));
	wr(STATUS, 0);
	out("info vsock status_after_reset 0x%x\n", rd(STATUS));
	return setup();
}

void test_vsock(void)
{
	u32 listen = port_arg("vsock_listen", 5000);
	u32 connect = port_arg("vsock_connect", 6000);
	u32 refused = port_arg("vsock_refused", connect + 1);
	base = find_device();
	if (!base)
		return;
	out("info vsock base 0x%lx\n", base);
	if (setup() < 0)
		return;
	if (port_arg("vsock_break_avail", 0) && break_avail_ring() < 0)
		return;
	connect_test(connect);
	refused_test(refused);
	listen_test(listen);
	out("info vsock rx_packets %u\n", rx_packets);
	out("info vsock tx_packets %u\n", tx_packets);
	wr(STATUS, 0);
}
