/* test=boot: report the entry state and the boot structures as raw facts;
 * the host side decides what is right. */
#include "guest.h"

#define RAMDISK_FNV_MAX (64 * 1024)

static u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}

#define READ_CR(n)                                                   \
	({                                                           \
		u64 v;                                               \
		__asm__ volatile("mov %%cr" #n ", %0" : "=r"(v));    \
		v;                                                   \
	})
#define READ_SEG(s)                                                  \
	({                                                           \
		u16 v;                                               \
		__asm__ volatile("mov %%" #s ", %0" : "=r"(v));      \
		v;                                                   \
	})

static u8 sum_bytes(const u8 *p, unsigned n)
{
	u8 s = 0;
	while (n--)
		s += *p++;
	return s;
}

static void report_cpu(void)
{
	out("info cr0 0x%lx\n", READ_CR(0));
	out("info cr3 0x%lx\n", READ_CR(3));
	out("info cr4 0x%lx\n", READ_CR(4));
	out("info efer 0x%lx\n", rdmsr(0xc0000080));
	out("info cs 0x%x\n", READ_SEG(cs));
	out("info ds 0x%x\n", READ_SEG(ds));
	out("info es 0x%x\n", READ_SEG(es));
	out("info ss 0x%x\n", READ_SEG(ss));
	out("info rsi 0x%lx\n", entry_rsi);
	out("info rsp 0x%lx\n", entry_rsp);
	out("info rflags 0x%lx\n", entry_rflags);
}

static void report_zero_page(const u8 *zp)
{
	out("info boot_flag 0x%x\n", *(const u16 *)(zp + 0x1fe));
	out("info header 0x%x\n", *(const u32 *)(zp + 0x202));
	out("info type_of_loader 0x%x\n", zp[0x210]);
	out("info cmd_line_ptr 0x%x\n", *(const u32 *)(zp + 0x228));
	unsigned n = zp[0x1e8];
	out("info e820_entries %u\n", n);
	for (unsigned i = 0; i < n && i < 128; i++) {
		const u8 *e = zp + 0x2d0 + 20 * i;
		out("info e820 0x%lx 0x%lx %u\n", *(const u64 *)e, *(const u64 *)(e + 8),
		    *(const u32 *)(e + 16));
	}
	out("info cmdline %s\n", cmdline());

	u64 image = *(const u32 *)(zp + 0x218) | ((u64) * (const u32 *)(zp + 0xc0) << 32);
	u64 size = *(const u32 *)(zp + 0x21c) | ((u64) * (const u32 *)(zp + 0xc4) << 32);
	out("info ramdisk_image 0x%lx\n", image);
	out("info ramdisk_size %lu\n", size);
	if (size && size <= RAMDISK_FNV_MAX)
		out("info ramdisk_fnv 0x%x\n", fnv1a((const u8 *)image, size));
}

/* MP spec 1.4: floating pointer in the EBDA, then the PCMP configuration table. */
static void report_mp(void)
{
	const u8 *fp = 0;
	for (u64 a = 0x9fc00; a < 0xa0000; a += 16) {
		if (*(const u32 *)a == 0x5f504d5f) { /* "_MP_" */
			fp = (const u8 *)a;
			break;
		}
	}
	if (!fp) {
		out("fail mp_fp not found in 0x9fc00..0xa0000\n");
		return;
	}
	out("info mp_fp 0x%lx\n", (u64)fp);
	out("info mp_fp_sum %u\n", sum_bytes(fp, fp[8] * 16u));
	const u8 *ct = (const u8 *)(u64) * (const u32 *)(fp + 4);
	out("info mp_config 0x%lx\n", (u64)ct);
	if (!ct || *(const u32 *)ct != 0x504d4350) { /* "PCMP" */
		out("fail mp_config signature\n");
		return;
	}
	unsigned len = *(const u16 *)(ct + 4);
	out("info mp_config_len %u\n", len);
	out("info mp_config_entries %u\n", *(const u16 *)(ct + 34));
	out("info mp_config_sum %u\n", sum_bytes(ct, len));
	out("info mp_lapic 0x%x\n", *(const u32 *)(ct + 36));
	/* Walk by length, as Linux does; the header's entry count is reported raw. */
	unsigned cpus = 0, ioapics = 0, parsed = 0, off = 44;
	while (off < len && parsed < 1024) {
		const u8 *e = ct + off;
		parsed++;
		if (e[0] == 0) {
			out("info mp_cpu %u 0x%x\n", e[1], e[3]);
			cpus++;
			off += 20;
		} else if (e[0] <= 4) {
			ioapics += e[0] == 2;
			off += 8;
		} else {
			out("fail mp_entry_type %u\n", e[0]);
			return;
		}
	}
	out("info mp_entries_parsed %u\n", parsed);
	out("info mp_ioapics %u\n", ioapics);
	out("info cpus %u\n", cpus);
}

void test_boot(const u8 *zp)
{
	report_cpu();
	report_zero_page(zp);
	report_mp();
}
