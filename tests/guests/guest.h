/* Shared declarations for the tiny 64-bit test guest (see docs/guest-abi.md).
 * Every instruction is expensive under PVM, so helpers stay simple. */
#ifndef GUEST_H
#define GUEST_H

#include <stdint.h>
#include <stddef.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

static inline void outb(u16 port, u8 v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(u16 port, u16 v)
{
	__asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u32 mmio_read32(u64 addr)
{
	return *(volatile u32 *)addr;
}

static inline void mmio_write32(u64 addr, u32 v)
{
	*(volatile u32 *)addr = v;
}

static inline void barrier(void)
{
	__asm__ volatile("" : : : "memory");
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

/* Entry state saved by entry64.S before it switches to its own stack. */
extern u64 entry_rsi, entry_rsp, entry_rflags;

/* lib.c */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void putc_serial(char c);
char getc_serial(void);
/* printf subset: %s %c %u %x %lu %lx (hex without prefix: write 0x%lx). */
void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void out_hex_bytes(const u8 *p, unsigned n);
u32 fnv1a(const volatile u8 *p, u64 n);
__attribute__((noreturn)) void reset(void);
__attribute__((noreturn)) void halt_forever(void);
__attribute__((noreturn)) void done_and_reset(void);

/* Command line: value after "key=" of the first token starting with it, or NULL. */
const char *cmdline(void);
const char *cmd_value(const char *key, const char **from);
int token_is(const char *val, const char *word);
/* Parses a hex (0x-prefixed) or decimal number; advances *p. */
u64 parse_num(const char **p);

/* Modes. */
void test_boot(const u8 *zp);
void test_blk(void);
void test_blkwrite(void);
void test_blkscan(void);
void test_vsock(void);
void test_net(void);
void test_acpi(void);

#endif
