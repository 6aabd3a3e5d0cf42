/* test=blk: a polling virtio-mmio (version 2) virtio-blk driver that reports what
 * each device answers, including to malformed descriptor chains. */
#include "virtio.h"

enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13 };


#define F_RO (1ull << 5)
#define F_FLUSH (1ull << 9)
#define F_DISCARD (1ull << 13)
#define F_WRITE_ZEROES (1ull << 14)

#define QSIZE 8
#define NO_STATUS 0xff
/* Per-device scratch memory: 0x200000 + index * 0x10000, far above the guest image. */
#define DEV_MEM(i) (0x200000ull + (u64)(i) * 0x10000)
#define OFF_DESC 0x0000
#define OFF_AVAIL 0x0400
#define OFF_USED 0x0800
#define OFF_HDR 0x1000
#define OFF_SEG 0x1010
#define OFF_STATUS 0x1020
#define OFF_DATA 0x2000
#define BAD_ADDR 0xf00000000000ull
#define HUGE_LEN 0x7ffff000u
/* Give up on a chain after ~4e9 TSC ticks (1-2 s), or when the TSC looks stuck. */
#define TIMEOUT_TICKS (1ull << 32)
#define STUCK_SPINS 2000000

struct seg {
	u64 addr;
	u32 len;
	u16 flags;
};
struct dev {
	unsigned n;
	u64 base, mem;
	u16 qsize, avail_idx, used_idx;
	int broken;
	unsigned requests, irqs;
};

static u32 rd(struct dev *d, u32 off)
{
	return mmio_read32(d->base + off);
}

static void wr(struct dev *d, u32 off, u32 v)
{
	mmio_write32(d->base + off, v);
}

static volatile u8 *at(struct dev *d, u64 off)
{
	return (volatile u8 *)(d->mem + off);
}

/* Posts one chain, waits for it in the used ring; returns used_len or -1. */
static long submit(struct dev *d, const struct seg *s, int n, const char *what)
{
	if (d->broken)
		return -1;
	volatile struct desc *dt = (volatile struct desc *)at(d, OFF_DESC);
	for (int i = 0; i < n; i++) {
		dt[i].addr = s[i].addr;
		dt[i].len = s[i].len;
		dt[i].flags = s[i].flags | (i + 1 < n ? D_NEXT : 0);
		dt[i].next = (u16)(i + 1);
	}
	volatile u16 *avail = (volatile u16 *)at(d, OFF_AVAIL);
	avail[2 + d->avail_idx % d->qsize] = 0;
	barrier();
	avail[1] = ++d->avail_idx;
	barrier();
	wr(d, QUEUE_NOTIFY, 0);

	volatile u16 *used_idx = (volatile u16 *)at(d, OFF_USED + 2);
	u64 start = rdtsc(), last = start;
	unsigned stuck = 0;
	while (*used_idx == d->used_idx) {
		u64 now = rdtsc();
		stuck = now == last ? stuck + 1 : 0;
		last = now;
		if (now - start > TIMEOUT_TICKS || stuck > STUCK_SPINS) {
			out("fail blk%u timeout %s\n", d->n, what);
			d->broken = 1;
			return -1;
		}
		__asm__ volatile("pause");
	}
	barrier();
	volatile u32 *elem = (volatile u32 *)at(d, OFF_USED + 4 + 8 * (d->used_idx % d->qsize));
	u32 len = elem[1];
	d->used_idx++;

	/* The device may raise the interrupt just after publishing the used entry. */
	u32 isr = 0;
	for (int i = 0; i < 1000 && !(isr & 1); i++)
		isr = rd(d, INTERRUPT_STATUS);
	d->requests++;
	d->irqs += isr & 1;
	wr(d, INTERRUPT_ACK, isr);
	return len;
}

/* A well-formed request: header, optional data, status. Returns the status byte. */
static u8 request(struct dev *d, u32 type, u64 sector, u64 data, u32 len, int dev_writes,
		  const char *what)
{
	volatile u32 *hdr = (volatile u32 *)at(d, OFF_HDR);
	hdr[0] = type;
	hdr[1] = 0;
	*(volatile u64 *)(hdr + 2) = sector;
	*at(d, OFF_STATUS) = NO_STATUS;
	struct seg s[3] = { { d->mem + OFF_HDR, 16, 0 } };
	int n = 1;
	if (len)
		s[n++] = (struct seg){ data, len, dev_writes ? D_WRITE : 0 };
	s[n++] = (struct seg){ d->mem + OFF_STATUS, 1, D_WRITE };
	submit(d, s, n, what);
	return *at(d, OFF_STATUS);
}

static void malformed(struct dev *d, const char *kind, u32 hdr_len, u64 data, u32 len, u16 flags)
{
	volatile u32 *hdr = (volatile u32 *)at(d, OFF_HDR);
	hdr[0] = T_IN;
	hdr[1] = 0;
	*(volatile u64 *)(hdr + 2) = 0;
	*at(d, OFF_STATUS) = NO_STATUS;
	struct seg s[3] = {
		{ d->mem + OFF_HDR, hdr_len, 0 },
		{ data, len, flags },
		{ d->mem + OFF_STATUS, 1, D_WRITE },
	};
	long used = submit(d, s, 3, kind);
	if (used >= 0)
		out("info blk%u malformed_%s status %u used_len %lu\n", d->n, kind,
		    *at(d, OFF_STATUS), (u64)used);
}

static void range_op(struct dev *d, u32 type, const char *key, const char *name)
{
	const char *v = cmd_value(key, NULL);
	if (!v)
		return;
	u64 start = parse_num(&v);
	if (*v == ',')
		v++;
	u64 count = parse_num(&v);
	volatile u32 *seg = (volatile u32 *)at(d, OFF_SEG);
	*(volatile u64 *)seg = start;
	seg[2] = (u32)count;
	seg[3] = type == T_WRITE_ZEROES; /* UNMAP: the device may punch a hole */
	u8 st = request(d, type, 0, d->mem + OFF_SEG, 16, 0, name);
	out("info blk%u %s_status %u\n", d->n, name, st);
}

static void requests(struct dev *d, u64 features)
{
	u64 data = d->mem + OFF_DATA;
	volatile u8 *buf = at(d, OFF_DATA);

	memset((void *)buf, 0, 21);
	u8 st = request(d, T_GET_ID, 0, data, 20, 1, "get_id");
	out("info blk%u id_status %u\n", d->n, st);
	char id[21];
	for (int i = 0; i < 20; i++)
		id[i] = buf[i] >= 0x20 && buf[i] < 0x7f ? (char)buf[i] : buf[i] ? '?' : 0;
	id[20] = 0;
	out("info blk%u id %s\n", d->n, id);

	st = request(d, T_IN, 0, data, 1024, 1, "read");
	out("info blk%u read_status %u\n", d->n, st);
	out("info blk%u sector0 ", d->n);
	out_hex_bytes((const u8 *)buf, 16);
	out("\ninfo blk%u read_fnv 0x%x\n", d->n, fnv1a(buf, 1024));

	static const char pat[] = "vmm-test-write-";
	for (int i = 0; i < 512; i++)
		buf[i] = (u8)pat[i % 15];
	st = request(d, T_OUT, 2, data, 512, 0, "write");
	out("info blk%u write_status %u\n", d->n, st);
	if (features & F_FLUSH) {
		st = request(d, T_FLUSH, 0, 0, 0, 0, "flush");
		out("info blk%u flush_status %u\n", d->n, st);
	}
	if (!(features & F_RO)) {
		memset((void *)buf, 0, 512);
		st = request(d, T_IN, 2, data, 512, 1, "readback");
		out("info blk%u readback_status %u\n", d->n, st);
		out("info blk%u readback_fnv 0x%x\n", d->n, fnv1a(buf, 512));
	}
	if (features & F_DISCARD)
		range_op(d, T_DISCARD, "discard", "discard");
	if (features & F_WRITE_ZEROES)
		range_op(d, T_WRITE_ZEROES, "write_zeroes", "write_zeroes");

	st = request(d, 0x1234, 0, data, 512, 1, "unsupported");
	out("info blk%u unsupported_status %u\n", d->n, st);

	malformed(d, "bad_addr", 16, BAD_ADDR, 512, D_WRITE);
	malformed(d, "wrong_dir", 16, data, 512, 0);
	malformed(d, "short_header", 8, data, 512, D_WRITE);
	malformed(d, "huge_len", 16, data, HUGE_LEN, D_WRITE);

	st = request(d, T_IN, 0, data, 1024, 1, "after_malformed");
	out("info blk%u after_malformed_status %u\n", d->n, st);
	out("info blk%u after_malformed_fnv 0x%x\n", d->n, fnv1a(buf, 1024));
}

/* Queue setup through DRIVER_OK (after the features were accepted). */
static void setup_queue(struct dev *d)
{
	d->qsize = d->qsize ? d->qsize : QSIZE;
	d->avail_idx = d->used_idx = 0;
	d->broken = 0;
	memset((void *)(d->mem + OFF_DESC), 0, 16 * QSIZE);
	memset((void *)(d->mem + OFF_AVAIL), 0, 6 + 2 * QSIZE);
	memset((void *)(d->mem + OFF_USED), 0, 6 + 8 * QSIZE);
	wr(d, QUEUE_SEL, 0);
	wr(d, QUEUE_NUM, d->qsize);
	wr(d, QUEUE_DESC_LOW, (u32)(d->mem + OFF_DESC));
	wr(d, QUEUE_DESC_HIGH, 0);
	wr(d, QUEUE_DRIVER_LOW, (u32)(d->mem + OFF_AVAIL));
	wr(d, QUEUE_DRIVER_HIGH, 0);
	wr(d, QUEUE_DEVICE_LOW, (u32)(d->mem + OFF_USED));
	wr(d, QUEUE_DEVICE_HIGH, 0);
	wr(d, QUEUE_READY, 1);
}

/* break_avail=N: the driver of blkN publishes an avail index more than the queue size
 * ahead of the device, as a hostile guest would. The device must give up on that queue
 * (DEVICE_NEEDS_RESET plus a config interrupt) without pinning the device thread; after a
 * reset the same device works again. */
static void break_avail_ring(struct dev *d, u64 features)
{
	volatile u16 *avail = (volatile u16 *)at(d, OFF_AVAIL);
	avail[1] = (u16)(d->avail_idx + d->qsize + 1);
	barrier();
	wr(d, QUEUE_NOTIFY, 0);
	u64 start = rdtsc();
	u32 status = rd(d, STATUS);
	while (!(status & 0x40) && rdtsc() - start < TIMEOUT_TICKS)
		status = rd(d, STATUS);
	out("info blk%u broken_status 0x%x\n", d->n, status);
	out("info blk%u broken_isr 0x%x\n", d->n, rd(d, INTERRUPT_STATUS));

	wr(d, STATUS, 0);
	out("info blk%u status_after_reset 0x%x\n", d->n, rd(d, STATUS));
	wr(d, STATUS, S_ACK | S_DRIVER);
	wr(d, DRIVER_FEATURES_SEL, 0);
	wr(d, DRIVER_FEATURES, (u32)features);
	wr(d, DRIVER_FEATURES_SEL, 1);
	wr(d, DRIVER_FEATURES, (u32)(features >> 32));
	wr(d, STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	setup_queue(d);
	wr(d, STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	u8 st = request(d, T_IN, 0, d->mem + OFF_DATA, 512, 1, "read_after_reset");
	out("info blk%u read_after_reset_status %u\n", d->n, st);
}

static void probe(unsigned n, u64 base, void (*work)(struct dev *, u64))
{
	struct dev dev = { .n = n, .base = base, .mem = DEV_MEM(n) }, *d = &dev;
	u32 magic = rd(d, MAGIC), version = rd(d, VERSION), id = rd(d, DEVICE_ID);
	if (magic != 0x74726976) {
		out("fail blk%u magic 0x%x\n", n, magic);
		return;
	}
	if (id == 0) /* an empty transport slot (QEMU has those) */
		return;
	out("info blk%u base 0x%lx\n", n, base);
	if (version != 2 || id != 2) {
		out("fail blk%u version %u device_id %u\n", n, version, id);
		return;
	}
	wr(d, STATUS, 0);
	wr(d, STATUS, S_ACK);
	wr(d, STATUS, S_ACK | S_DRIVER);
	wr(d, DEVICE_FEATURES_SEL, 0);
	u64 f = rd(d, DEVICE_FEATURES);
	wr(d, DEVICE_FEATURES_SEL, 1);
	f |= (u64)rd(d, DEVICE_FEATURES) << 32;
	out("info blk%u features 0x%lx\n", n, f);
	if (!(f & F_VERSION_1)) {
		out("fail blk%u no VERSION_1\n", n);
		return;
	}
	u64 want = F_VERSION_1 | (f & (F_RO | F_FLUSH | F_DISCARD | F_WRITE_ZEROES));
	wr(d, DRIVER_FEATURES_SEL, 0);
	wr(d, DRIVER_FEATURES, (u32)want);
	wr(d, DRIVER_FEATURES_SEL, 1);
	wr(d, DRIVER_FEATURES, (u32)(want >> 32));
	wr(d, STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (!(rd(d, STATUS) & S_FEATURES_OK)) {
		out("fail blk%u features_ok not accepted\n", n);
		return;
	}

	wr(d, QUEUE_SEL, 0);
	u32 max = rd(d, QUEUE_NUM_MAX);
	out("info blk%u queue_num_max %u\n", n, max);
	if (!max) {
		out("fail blk%u queue_num_max 0\n", n);
		return;
	}
	d->qsize = max < QSIZE ? (u16)max : QSIZE;
	setup_queue(d);
	wr(d, STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	out("info blk%u status 0x%x\n", n, rd(d, STATUS));
	u64 cap = rd(d, CONFIG) | ((u64)rd(d, CONFIG + 4) << 32);
	out("info blk%u capacity %lu\n", n, cap);

	work(d, want);
	out("info blk%u requests %u\n", n, d->requests);
	out("info blk%u irqs %u\n", n, d->irqs);
	const char *target = cmd_value("break_avail", NULL);
	if (target && parse_num(&target) == n)
		break_avail_ring(d, want);
	wr(d, STATUS, 0);
}

/* Sector s of pass g holds: u32 g, u32 s, then bytes (g * 31 + s + i) & 0xff. */
static void fill_pattern(volatile u8 *buf, u32 g, u32 s)
{
	*(volatile u32 *)buf = g;
	*(volatile u32 *)(buf + 4) = s;
	for (u32 i = 8; i < 512; i++)
		buf[i] = (u8)(g * 31 + s + i);
}

static u64 sectors_arg(void)
{
	const char *v = cmd_value("sectors", NULL);
	return v ? parse_num(&v) : 64;
}

/* test=blkwrite [sectors=N] [passes=P]: pass g = 1, 2, ... writes sectors 0..N-1 in
 * order with pass g's pattern, flushes, and prints `info pass g`, P passes or forever. */
static void write_pattern(struct dev *d, u64 features)
{
	u64 n = sectors_arg(), data = d->mem + OFF_DATA;
	const char *v = cmd_value("passes", NULL);
	u64 passes = v ? parse_num(&v) : 0;
	for (u32 g = 1; !passes || g <= passes; g++) {
		for (u32 s = 0; s < n; s++) {
			fill_pattern(at(d, OFF_DATA), g, s);
			u8 st = request(d, T_OUT, s, data, 512, 0, "pattern_write");
			if (st) {
				out("fail blk%u pattern_write pass %u sector %u status %u\n", d->n, g, s, st);
				return;
			}
		}
		if (features & F_FLUSH)
			request(d, T_FLUSH, 0, 0, 0, 0, "pattern_flush");
		out("info pass %u\n", g);
	}
}

/* test=blkscan [sectors=N]: reads sectors 0..N-1 and prints runs of one pass:
 * `info run <pass> <first sector> <last sector>`; a sector whose bytes are not its
 * pass's pattern prints `info bad <sector>`. */
static void scan_pattern(struct dev *d, u64 features)
{
	(void)features;
	u64 n = sectors_arg(), data = d->mem + OFF_DATA;
	volatile u8 *buf = at(d, OFF_DATA), *want = at(d, OFF_DATA + 0x1000);
	u32 run_pass = 0, run_start = 0;
	for (u32 s = 0; s < n; s++) {
		u8 st = request(d, T_IN, s, data, 512, 1, "pattern_read");
		u32 g = *(volatile u32 *)buf;
		fill_pattern(want, g, s);
		int same = st == 0;
		for (u32 i = 0; i < 512 && same; i++)
			same = buf[i] == want[i];
		if (!same)
			out("info bad %u\n", s);
		if (s && g != run_pass)
			out("info run %u %u %u\n", run_pass, run_start, s - 1);
		if (!s || g != run_pass)
			run_pass = g, run_start = s;
	}
	if (n)
		out("info run %u %u %u\n", run_pass, run_start, (u32)n - 1);
}

/* Calls `probe` with `work` for each `virtio_mmio.device=<size>@<addr>:<irq>` token, in
 * order, or only for the first when `first_only`. */
static void each_device(void (*work)(struct dev *, u64), int first_only)
{
	const char *from = NULL, *v;
	unsigned n = 0;
	while ((v = cmd_value("virtio_mmio.device", &from)) && n < 16) {
		while (*v && *v != '@' && *v != ' ')
			v++;
		if (*v != '@') {
			out("fail blk%u bad virtio_mmio.device token\n", n++);
			continue;
		}
		v++;
		probe(n++, parse_num(&v), work);
		if (first_only)
			break;
	}
	out("info blk_devices %u\n", n);
}

void test_blk(void)
{
	each_device(requests, 0);
}

void test_blkwrite(void)
{
	out("info ready\n");
	each_device(write_pattern, 1);
}

void test_blkscan(void)
{
	each_device(scan_pattern, 1);
}
