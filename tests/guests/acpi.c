/* test=acpi: finds the ACPI tables the way Linux does (the RSDP in 0xE0000-0xFFFFF, then
 * XSDT -> FACP -> FACS/DSDT), checks their checksums, reports what it found, then ends
 * the VM as `acpi=` says:
 *   poweroff  S5 through the FADT's PM1a control block (as Linux's acpi_power_off)
 *   panic     a panic line on the console, then PANICKED to the pvpanic port
 *   fake      the console lines of a power-off and a panic, then an i8042 reset: a guest
 *             user can print those, so they must not end the VM. */
#include "guest.h"

#define PVPANIC_PORT 0x505
#define SLP_TYP_S5 (5 << 10)
#define SLP_EN (1 << 13)

static int same(const volatile u8 *p, const char *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (p[i] != (u8)s[i])
			return 0;
	return 1;
}

static int checksum_ok(const volatile u8 *p, u32 n)
{
	u8 sum = 0;
	for (u32 i = 0; i < n; i++)
		sum += p[i];
	return sum == 0;
}

static u32 rd32(const volatile u8 *p)
{
	return p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static u64 rd64(const volatile u8 *p)
{
	return rd32(p) | (u64)rd32(p + 4) << 32;
}

/* A table's address, after checking its signature and checksum; 0 if either is wrong. */
static const volatile u8 *table(u64 addr, const char *sig)
{
	const volatile u8 *t = (const volatile u8 *)addr;
	if (!addr || !same(t, sig, 4)) {
		out("fail acpi no %s at 0x%lx\n", sig, addr);
		return 0;
	}
	if (!same(t, "FACS", 4) && !checksum_ok(t, rd32(t + 4))) {
		out("fail acpi %s checksum\n", sig);
		return 0;
	}
	out("info acpi_table %s\n", sig);
	return t;
}

static const volatile u8 *find_rsdp(void)
{
	for (u64 a = 0xe0000; a < 0x100000; a += 16) {
		const volatile u8 *p = (const volatile u8 *)a;
		if (same(p, "RSD PTR ", 8) && checksum_ok(p, 20) && checksum_ok(p, rd32(p + 20))) {
			out("info acpi_rsdp 0x%lx\n", a);
			return p;
		}
	}
	out("fail acpi no RSDP\n");
	return 0;
}

static void action(u16 pm1a_cnt)
{
	const char *a = cmd_value("acpi", NULL);
	if (a && token_is(a, "poweroff")) {
		outw(pm1a_cnt, SLP_TYP_S5);
		outw(pm1a_cnt, SLP_TYP_S5 | SLP_EN);
		/* The VMM stops here; if it does not, the test times out. */
		halt_forever();
	}
	if (a && token_is(a, "panic")) {
		out("Kernel panic - not syncing: tiny guest test panic\n");
		outb(PVPANIC_PORT, 1);
		halt_forever();
	}
	if (a && token_is(a, "fake")) {
		out("[   23.720000] reboot: Power down\n");
		out("[   23.720000] reboot: Power off not available: System halted instead\n");
		out("Kernel panic - not syncing: a guest user wrote this\n");
		out("---[ end Kernel panic - not syncing: a guest user wrote this ]---\n");
		/* Give a VMM that believed them time to stop us before we say we survived. */
		for (u64 start = rdtsc(); rdtsc() - start < (1ull << 31);)
			__asm__ volatile("pause");
		out("info still_running\n");
	}
}

void test_acpi(void)
{
	const volatile u8 *rsdp = find_rsdp();
	const volatile u8 *xsdt = rsdp ? table(rd64(rsdp + 24), "XSDT") : 0;
	const volatile u8 *fadt = xsdt ? table(rd64(xsdt + 36), "FACP") : 0;
	if (!fadt)
		return;
	if (!table(rd64(fadt + 132), "FACS") || !table(rd64(fadt + 140), "DSDT"))
		return;
	/* The MADT: Linux boots one CPU without it, even with an MP table. */
	const volatile u8 *madt = table(rd64(xsdt + 44), "APIC");
	if (!madt)
		return;
	unsigned lapics = 0;
	for (u32 at = 44; at + 2 <= rd32(madt + 4) && madt[at + 1]; at += madt[at + 1])
		lapics += madt[at] == 0 && (rd32(madt + at + 4) & 1);
	out("info acpi_lapics %u\n", lapics);
	u32 flags = rd32(fadt + 112);
	u16 pm1a_cnt = (u16)rd32(fadt + 64);
	out("info acpi_hw_reduced %u\n", (flags >> 20) & 1);
	out("info acpi_pm1a_cnt 0x%x\n", pm1a_cnt);
	out("info acpi_sci %u\n", fadt[46] | fadt[47] << 8);
	u8 caps = inb(PVPANIC_PORT);
	out("info pvpanic_caps %u\n", caps);
	action(pm1a_cnt);
}
