/* Serial output, a printf subset, command-line helpers and exits. */
#include <stdarg.h>
#include "guest.h"

#define COM1 0x3f8
#define LSR (COM1 + 5)
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

const char *g_cmdline = "";

void *memset(void *d, int c, size_t n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

void putc_serial(char c)
{
	while (!(inb(LSR) & LSR_THR_EMPTY))
		;
	outb(COM1, (u8)c);
}

char getc_serial(void)
{
	while (!(inb(LSR) & LSR_DATA_READY))
		;
	return (char)inb(COM1);
}

static void put_str(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

static void put_num(u64 v, unsigned base)
{
	char buf[20];
	int i = 0;
	do {
		buf[i++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (i)
		putc_serial(buf[--i]);
}

void out(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			putc_serial(*fmt);
			continue;
		}
		int is_long = 0;
		if (*++fmt == 'l') {
			is_long = 1;
			fmt++;
		}
		switch (*fmt) {
		case 's':
			put_str(va_arg(ap, const char *));
			break;
		case 'c':
			putc_serial((char)va_arg(ap, int));
			break;
		case 'u':
		case 'x': {
			u64 v = is_long ? va_arg(ap, u64) : va_arg(ap, u32);
			put_num(v, *fmt == 'u' ? 10 : 16);
			break;
		}
		default:
			putc_serial('%');
			putc_serial(*fmt);
		}
	}
	va_end(ap);
}

void out_hex_bytes(const u8 *p, unsigned n)
{
	while (n--) {
		u8 b = *p++;
		putc_serial("0123456789abcdef"[b >> 4]);
		putc_serial("0123456789abcdef"[b & 15]);
	}
}

u32 fnv1a(const volatile u8 *p, u64 n)
{
	u32 h = 0x811c9dc5;
	while (n--) {
		h ^= *p++;
		h *= 0x01000193;
	}
	return h;
}

void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

void reset(void)
{
	outb(0x64, 0xfe);
	halt_forever();
}

void done_and_reset(void)
{
	out("done\n");
	reset();
}

const char *cmdline(void)
{
	return g_cmdline;
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n';
}

const char *cmd_value(const char *key, const char **from)
{
	const char *p = (from && *from) ? *from : g_cmdline;
	while (*p) {
		while (is_space(*p))
			p++;
		const char *k = key, *t = p;
		while (*k && *t == *k) {
			k++;
			t++;
		}
		while (*p && !is_space(*p))
			p++;
		if (!*k && *t == '=') {
			if (from)
				*from = p;
			return t + 1;
		}
	}
	return NULL;
}

int token_is(const char *val, const char *word)
{
	while (*word && *val == *word) {
		val++;
		word++;
	}
	return !*word && (!*val || is_space(*val));
}

u64 parse_num(const char **pp)
{
	const char *p = *pp;
	u64 v = 0;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		p += 2;
		for (;; p++) {
			char c = *p;
			if (c >= '0' && c <= '9')
				v = v * 16 + (u64)(c - '0');
			else if (c >= 'a' && c <= 'f')
				v = v * 16 + (u64)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				v = v * 16 + (u64)(c - 'A' + 10);
			else
				break;
		}
	} else {
		while (*p >= '0' && *p <= '9')
			v = v * 10 + (u64)(*p++ - '0');
	}
	*pp = p;
	return v;
}
