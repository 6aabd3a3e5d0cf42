/* tiny-pvh64.elf only: builds a Linux zero page from a PVH hvm_start_info. */
#include "guest.h"

void pvh_make_zero_page(u64 si_addr, u8 *zp);

void pvh_make_zero_page(u64 si_addr, u8 *zp)
{
	const u8 *si = (const u8 *)si_addr;
	memset(zp, 0, 4096);
	*(u16 *)(zp + 0x1fe) = 0xaa55;
	*(u32 *)(zp + 0x202) = 0x53726448; /* "HdrS" */
	zp[0x210] = 0xff;
	u64 cmd = *(const u64 *)(si + 24);
	*(u32 *)(zp + 0x228) = (u32)cmd;
	*(u32 *)(zp + 0xc8) = (u32)(cmd >> 32);
	if (*(const u32 *)(si + 4) >= 1) {
		const u8 *mm = (const u8 *)*(const u64 *)(si + 40);
		u32 n = *(const u32 *)(si + 48);
		if (n > 128)
			n = 128;
		for (u32 i = 0; i < n; i++)
			memcpy(zp + 0x2d0 + 20 * i, mm + 24 * i, 20);
		zp[0x1e8] = (u8)n;
	}
	if (*(const u32 *)(si + 12)) {
		const u8 *mod = (const u8 *)*(const u64 *)(si + 16);
		u64 addr = *(const u64 *)mod, size = *(const u64 *)(mod + 8);
		*(u32 *)(zp + 0x218) = (u32)addr;
		*(u32 *)(zp + 0xc0) = (u32)(addr >> 32);
		*(u32 *)(zp + 0x21c) = (u32)size;
		*(u32 *)(zp + 0xc4) = (u32)(size >> 32);
	}
}
