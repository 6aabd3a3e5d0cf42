/* test=net: a polling virtio-mmio (version 2) virtio-net driver (virtio 1.2, 5.1) that
 * reads its MAC, sends an ARP request for `net_peer` and waits for the reply, then sends a
 * UDP datagram to `net_peer`:`net_port` and waits for it to come back (the host test runs
 * an echo server behind the TAP). Addresses are dotted quads on the command line:
 * net_ip= (ours, default 10.0.2.15), net_peer= (default 10.0.2.1), net_port= (7777). */
#include "virtio.h"

#define VIRTIO_ID_NET 1
#define F_MAC (1ull << 5)
#define NET_HDR_LEN 12 /* struct virtio_net_hdr with VERSION_1 (num_buffers included) */
#define ETH_LEN 14
#define FRAME_MAX 1514

enum { VQ_RX = 0, VQ_TX = 1, NUM_VQS = 2 };

#define QSIZE 16
/* Scratch memory above vsock's (0x400000 - 0x406200). */
#define MEM 0x500000ull
#define Q_DESC(q) (MEM + (u64)(q) * 0x1000)
#define Q_AVAIL(q) (Q_DESC(q) + 0x400)
#define Q_USED(q) (Q_DESC(q) + 0x800)
#define RX_BUFS 8
#define RX_BUF_SIZE 2048
#define RX_BUF(i) (MEM + 0x4000 + (u64)(i) * RX_BUF_SIZE)
#define TX_BUF (MEM + 0x9000)
#define GUEST_UDP_PORT 40000
/* Give up after ~6 s of TSC ticks, or when the TSC looks stuck. */
#define WAIT_TICKS (1ull << 34)
#define STUCK_SPINS 2000000

static u64 base;
static struct vq vqs[NUM_VQS];
static u8 mac[6], peer_mac[6];
static u32 my_ip, peer_ip;
static unsigned rx_frames;

static u32 rd(u32 off)
{
	return mmio_read32(base + off);
}

static void wr(u32 off, u32 v)
{
	mmio_write32(base + off, v);
}

static void vq_post(int q, u16 id)
{
	vq_push(&vqs[q], id);
}

static int vq_pop(int q, u16 *id, u32 *len)
{
	return vq_take(&vqs[q], id, len);
}

/* Waits for a used entry of queue `q`; 0 on a timeout. */
static int vq_wait(int q, u16 *id, u32 *len)
{
	u64 start = rdtsc(), last = start;
	unsigned stuck = 0;
	while (!vq_pop(q, id, len)) {
		u64 now = rdtsc();
		stuck = now == last ? stuck + 1 : 0;
		last = now;
		if (now - start > WAIT_TICKS || stuck > STUCK_SPINS)
			return 0;
		__asm__ volatile("pause");
	}
	return 1;
}

static u32 ip_arg(const char *key, u32 dflt)
{
	const char *v = cmd_value(key, NULL);
	if (!v)
		return dflt;
	u32 ip = 0;
	for (int i = 0; i < 4; i++) {
		ip = ip << 8 | (u32)parse_num(&v);
		if (*v == '.')
			v++;
	}
	return ip;
}

static void put16(volatile u8 *p, u16 v)
{
	p[0] = (u8)(v >> 8);
	p[1] = (u8)v;
}

static void put32(volatile u8 *p, u32 v)
{
	put16(p, (u16)(v >> 16));
	put16(p + 2, (u16)v);
}

static u16 get16(volatile const u8 *p)
{
	return (u16)(p[0] << 8 | p[1]);
}

static u32 get32(volatile const u8 *p)
{
	return (u32)get16(p) << 16 | get16(p + 2);
}

/* Sends the frame at TX_BUF + NET_HDR_LEN (`len` bytes) behind a zeroed header. */
static int send_frame(u32 len, const char *what)
{
	volatile u8 *hdr = (volatile u8 *)TX_BUF;
	for (int i = 0; i < NET_HDR_LEN; i++)
		hdr[i] = 0;
	if (len < 60)
		len = 60;
	volatile struct desc *dt = (volatile struct desc *)Q_DESC(VQ_TX);
	dt[0] = (struct desc){ TX_BUF, NET_HDR_LEN + len, 0, 0 };
	vq_post(VQ_TX, 0);
	wr(QUEUE_NOTIFY, VQ_TX);
	u16 id;
	u32 used;
	if (!vq_wait(VQ_TX, &id, &used)) {
		out("fail net timeout tx_%s\n", what);
		return -1;
	}
	return 0;
}

static volatile u8 *eth_header(volatile u8 *f, const u8 *dst, u16 type)
{
	for (int i = 0; i < 6; i++) {
		f[i] = dst[i];
		f[6 + i] = mac[i];
	}
	put16(f + 12, type);
	return f + ETH_LEN;
}

static int send_arp_request(void)
{
	static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	volatile u8 *f = (volatile u8 *)(TX_BUF + NET_HDR_LEN);
	volatile u8 *a = eth_header(f, broadcast, 0x0806);
	put16(a, 1);          /* Ethernet */
	put16(a + 2, 0x0800); /* IPv4 */
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, 1); /* request */
	for (int i = 0; i < 6; i++) {
		a[8 + i] = mac[i];
		a[18 + i] = 0;
	}
	put32(a + 14, my_ip);
	put32(a + 24, peer_ip);
	return send_frame(ETH_LEN + 28, "arp");
}

static u16 ip_checksum(volatile const u8 *p, int len)
{
	u32 sum = 0;
	for (int i = 0; i < len; i += 2)
		sum += get16(p + i);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

static const char payload[] = "hello from the guest";

static int send_udp(u16 port)
{
	volatile u8 *f = (volatile u8 *)(TX_BUF + NET_HDR_LEN);
	volatile u8 *ip = eth_header(f, peer_mac, 0x0800);
	u16 udp_len = 8 + sizeof(payload) - 1;
	ip[0] = 0x45;
	ip[1] = 0;
	put16(ip + 2, 20 + udp_len);
	put16(ip + 4, 1);
	put16(ip + 6, 0x4000); /* don't fragment */
	ip[8] = 64;
	ip[9] = 17; /* UDP */
	put16(ip + 10, 0);
	put32(ip + 12, my_ip);
	put32(ip + 16, peer_ip);
	put16(ip + 10, ip_checksum(ip, 20));
	volatile u8 *udp = ip + 20;
	put16(udp, GUEST_UDP_PORT);
	put16(udp + 2, port);
	put16(udp + 4, udp_len);
	put16(udp + 6, 0); /* no checksum (allowed over IPv4) */
	for (unsigned i = 0; i < sizeof(payload) - 1; i++)
		udp[8 + i] = (u8)payload[i];
	return send_frame(ETH_LEN + 20 + udp_len, "udp");
}

enum { GOT_NOTHING, GOT_ARP_REPLY, GOT_UDP };

/* Handles one received frame; says what it was. */
static int receive(volatile const u8 *f, u32 len, u16 port)
{
	rx_frames++;
	if (len < ETH_LEN + 28)
		return GOT_NOTHING;
	u16 type = get16(f + 12);
	volatile const u8 *p = f + ETH_LEN;
	if (type == 0x0806 && get16(p + 6) == 2 && get32(p + 14) == peer_ip) {
		for (int i = 0; i < 6; i++)
			peer_mac[i] = p[8 + i];
		return GOT_ARP_REPLY;
	}
	if (type == 0x0800 && p[9] == 17 && get32(p + 12) == peer_ip && get32(p + 16) == my_ip) {
		volatile const u8 *udp = p + (p[0] & 0xf) * 4;
		if (get16(udp) != port || get16(udp + 2) != GUEST_UDP_PORT)
			return GOT_NOTHING;
		char text[64];
		u32 n = get16(udp + 4) - 8;
		if (n > sizeof(text) - 1)
			n = sizeof(text) - 1;
		for (u32 i = 0; i < n; i++)
			text[i] = (char)udp[8 + i];
		text[n] = 0;
		out("info net udp_echo %s\n", text);
		return GOT_UDP;
	}
	return GOT_NOTHING;
}

/* Receives frames until one of kind `want`; reposts every buffer. */
static int wait_for(int want, u16 port, const char *what)
{
	for (;;) {
		u16 id;
		u32 len;
		if (!vq_wait(VQ_RX, &id, &len)) {
			out("fail net timeout %s\n", what);
			return -1;
		}
		int got = GOT_NOTHING;
		if (id < RX_BUFS && len > NET_HDR_LEN && len <= RX_BUF_SIZE)
			got = receive((volatile const u8 *)(RX_BUF(id) + NET_HDR_LEN), len - NET_HDR_LEN, port);
		else
			out("fail net rx_used id %u len %u\n", id, len);
		vq_post(VQ_RX, id);
		wr(QUEUE_NOTIFY, VQ_RX);
		if (got == want)
			return 0;
	}
}

static void setup_queue(int q)
{
	wr(QUEUE_SEL, q);
	u32 max = rd(QUEUE_NUM_MAX);
	vqs[q] = (struct vq){ .avail = Q_AVAIL(q), .used = Q_USED(q) };
	vqs[q].size = max < QSIZE ? (u16)max : QSIZE;
	memset((void *)Q_DESC(q), 0, 0x1000);
	wr(QUEUE_NUM, vqs[q].size);
	wr(QUEUE_DESC_LOW, (u32)Q_DESC(q));
	wr(QUEUE_DESC_HIGH, 0);
	wr(QUEUE_DRIVER_LOW, (u32)Q_AVAIL(q));
	wr(QUEUE_DRIVER_HIGH, 0);
	wr(QUEUE_DEVICE_LOW, (u32)Q_USED(q));
	wr(QUEUE_DEVICE_HIGH, 0);
	wr(QUEUE_READY, 1);
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
	out("info net features 0x%lx\n", f);
	if (!(f & F_VERSION_1) || !(f & F_MAC)) {
		out("fail net features 0x%lx\n", f);
		return -1;
	}
	u64 want = F_VERSION_1 | F_MAC;
	wr(DRIVER_FEATURES_SEL, 0);
	wr(DRIVER_FEATURES, (u32)want);
	wr(DRIVER_FEATURES_SEL, 1);
	wr(DRIVER_FEATURES, (u32)(want >> 32));
	wr(STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (!(rd(STATUS) & S_FEATURES_OK)) {
		out("fail net features_ok not accepted\n");
		return -1;
	}
	for (int q = 0; q < NUM_VQS; q++)
		setup_queue(q);
	volatile struct desc *rx = (volatile struct desc *)Q_DESC(VQ_RX);
	for (u16 i = 0; i < RX_BUFS; i++) {
		rx[i] = (struct desc){ RX_BUF(i), RX_BUF_SIZE, D_WRITE, 0 };
		vq_post(VQ_RX, i);
	}
	wr(STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	wr(QUEUE_NOTIFY, VQ_RX);
	for (int i = 0; i < 6; i++)
		mac[i] = *(volatile u8 *)(base + CONFIG + i);
	out("info net mac %x:%x:%x:%x:%x:%x\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	return 0;
}

void test_net(void)
{
	const char *from = NULL, *v;
	while (!base && (v = cmd_value("virtio_mmio.device", &from))) {
		while (*v && *v != '@' && *v != ' ')
			v++;
		if (*v != '@')
			continue;
		v++;
		u64 b = parse_num(&v);
		if (mmio_read32(b + MAGIC) == VIRTIO_MMIO_MAGIC && mmio_read32(b + DEVICE_ID) == VIRTIO_ID_NET)
			base = b;
	}
	if (!base) {
		out("fail net no_device\n");
		return;
	}
	my_ip = ip_arg("net_ip", 0x0a00020f);
	peer_ip = ip_arg("net_peer", 0x0a000201);
	const char *p = cmd_value("net_port", NULL);
	u16 port = p ? (u16)parse_num(&p) : 7777;
	if (setup() < 0)
		return;
	if (send_arp_request() < 0 || wait_for(GOT_ARP_REPLY, port, "arp_reply") < 0)
		return;
	out("info net peer_mac %x:%x:%x:%x:%x:%x\n", peer_mac[0], peer_mac[1], peer_mac[2],
	    peer_mac[3], peer_mac[4], peer_mac[5]);
	if (send_udp(port) < 0 || wait_for(GOT_UDP, port, "udp_echo") < 0)
		return;
	out("info net rx_frames %u\n", rx_frames);
	wr(STATUS, 0);
}
