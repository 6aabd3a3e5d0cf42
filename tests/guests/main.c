/* Dispatch on the `test=NAME` token of the kernel command line. */
#include "guest.h"

extern const char *g_cmdline;

static void test_echo(void)
{
	char line[256];
	unsigned n = 0;
	out("info ready\n");
	for (;;) {
		char c = getc_serial();
		if (c == '\n')
			break;
		if (c != '\r' && n < sizeof(line) - 1)
			line[n++] = c;
	}
	line[n] = 0;
	out("info echo %s\n", line);
}

static void __attribute__((noreturn)) test_triplefault(void)
{
	/* With an empty IDT, #UD cannot be delivered: #UD -> #GP -> #DF -> shutdown.
	 * ud2 rather than int3: PVM's instruction emulator lacks int3. */
	static const struct __attribute__((packed)) {
		u16 limit;
		u64 base;
	} idtr = { 0, 0 };
	out("info triplefault\n");
	__asm__ volatile("lidt %0; ud2" : : "m"(idtr));
	halt_forever();
}

void guest_main(const u8 *zp)
{
	u64 ptr = *(const u32 *)(zp + 0x228) | ((u64) * (const u32 *)(zp + 0xc8) << 32);
	if (ptr)
		g_cmdline = (const char *)ptr;

	const char *t = cmd_value("test", NULL);
	if (t && token_is(t, "bench")) {
		putc_serial('!');
		reset();
	}
	if (!t) {
		out("fail test no test= on the command line\n");
		done_and_reset();
	}
	if (token_is(t, "boot") || token_is(t, "cpus")) {
		test_boot(zp);
	} else if (token_is(t, "echo")) {
		test_echo();
	} else if (token_is(t, "blk")) {
		test_blk();
	} else if (token_is(t, "blkwrite")) {
		test_blkwrite();
	} else if (token_is(t, "blkscan")) {
		test_blkscan();
	} else if (token_is(t, "vsock")) {
		test_vsock();
	} else if (token_is(t, "net")) {
		test_net();
	} else if (token_is(t, "triplefault")) {
		test_triplefault();
	} else if (token_is(t, "acpi")) {
		test_acpi();
	} else if (token_is(t, "hang")) {
		out("info ready\n");
		halt_forever();
	} else if (token_is(t, "spin")) {
		/* Busy on its vCPU until killed: CPU-share tests measure what it gets. */
		out("info ready\n");
		for (;;)
			__asm__ volatile("" ::: "memory");
	} else {
		out("fail test unknown mode\n");
	}
	done_and_reset();
}
