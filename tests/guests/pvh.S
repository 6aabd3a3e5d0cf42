/* tiny-pvh.elf: a PVH guest (XEN_ELFNOTE_PHYS32_ENTRY), also bootable by QEMU microvm.
 * Entered in 32-bit protected mode, paging off, ebx = struct hvm_start_info. Prints
 * "ok pvh magic" (or "fail pvh magic 0x<hex>"), facts about the start info, the
 * command line and the memory map, then "done", then resets through the i8042. */
#define START_MAGIC 0x336ec578

	.section .note.Xen, "a"
	.balign 4
	.long 4			/* namesz: "Xen\0" */
	.long 4			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long pvh_start

	.text
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	mov $stack_top, %esp
	mov %ebx, %esi
	cmpl $START_MAGIC, (%esi)
	je 1f
	mov $s_bad_magic, %ecx
	call puts
	mov (%esi), %eax
	call puthex32
	call newline
	jmp finish
1:	mov $s_ok_magic, %ecx
	call puts

	mov $s_start_info, %ecx
	call puts
	mov %esi, %eax
	call puthex32
	call newline

	mov $s_version, %ecx
	call puts
	mov 4(%esi), %eax
	call puthex32
	call newline

	mov $s_cr0, %ecx
	call puts
	mov %cr0, %eax
	call puthex32
	call newline

	mov $s_cs, %ecx
	call puts
	xor %eax, %eax
	mov %cs, %ax
	call puthex32
	call newline

	/* Command line: cmdline_paddr (u64) at offset 24; 0 means none. */
	mov $s_cmdline, %ecx
	call puts
	cmpl $0, 28(%esi)
	jne 3f
	mov 24(%esi), %ecx
	test %ecx, %ecx
	jz 3f
	mov $2048, %edi
2:	movb (%ecx), %al
	test %al, %al
	jz 3f
	call putc
	inc %ecx
	dec %edi
	jnz 2b
3:	call newline

	/* Memory map (start info version >= 1): memmap_paddr at 40, entries at 48. */
	cmpl $1, 4(%esi)
	jb finish
	cmpl $0, 44(%esi)
	jne finish
	mov 40(%esi), %ebx
	test %ebx, %ebx
	jz finish
	mov 48(%esi), %edi
	cmp $32, %edi
	jbe 4f
	mov $32, %edi
4:	test %edi, %edi
	jz finish
	mov $s_memmap, %ecx
	call puts
	mov %ebx, %ecx
	call puthex64
	mov $' ', %al
	call putc
	lea 8(%ebx), %ecx
	call puthex64
	mov $' ', %al
	call putc
	mov 16(%ebx), %eax
	call puthex32
	call newline
	add $24, %ebx
	dec %edi
	jmp 4b

finish:
	mov $s_done, %ecx
	call puts
	mov $0xfe, %al
	out %al, $0x64
5:	hlt
	jmp 5b

/* putc: al = byte; waits for THR empty (LSR bit 5). Preserves all but flags. */
putc:
	push %edx
	push %eax
	mov $0x3fd, %dx
6:	in %dx, %al
	test $0x20, %al
	jz 6b
	pop %eax
	mov $0x3f8, %dx
	out %al, %dx
	pop %edx
	ret

/* puts: ecx = NUL-terminated string. */
puts:
	push %eax
	push %ecx
7:	movb (%ecx), %al
	test %al, %al
	jz 8f
	call putc
	inc %ecx
	jmp 7b
8:	pop %ecx
	pop %eax
	ret

newline:
	push %eax
	mov $'\n', %al
	call putc
	pop %eax
	ret

/* puthex32: eax printed as 0x + 8 hex digits. */
puthex32:
	push %eax
	push %ecx
	push %edx
	mov %eax, %edx
	mov $'0', %al
	call putc
	mov $'x', %al
	call putc
	call hex8
	pop %edx
	pop %ecx
	pop %eax
	ret

/* puthex64: ecx = address of a u64, printed as 0x + 16 hex digits. */
puthex64:
	push %eax
	push %edx
	mov $'0', %al
	call putc
	mov $'x', %al
	call putc
	mov 4(%ecx), %edx
	call hex8
	mov (%ecx), %edx
	call hex8
	pop %edx
	pop %eax
	ret

/* hex8: edx printed as 8 hex digits; clobbers eax, edx. */
hex8:
	push %ecx
	mov $8, %ecx
9:	rol $4, %edx
	mov %edx, %eax
	and $0xf, %eax
	movb hexdigits(%eax), %al
	call putc
	dec %ecx
	jnz 9b
	pop %ecx
	ret

	.section .rodata
hexdigits:	.ascii "0123456789abcdef"
s_ok_magic:	.asciz "ok pvh magic\n"
s_bad_magic:	.asciz "fail pvh magic "
s_start_info:	.asciz "info pvh_start_info "
s_version:	.asciz "info pvh_version "
s_cr0:		.asciz "info pvh_cr0 "
s_cs:		.asciz "info pvh_cs "
s_cmdline:	.asciz "info cmdline "
s_memmap:	.asciz "info memmap "
s_done:		.asciz "done\n"

	.bss
	.balign 16
	.skip 4096
stack_top:

	.section .note.GNU-stack, "", @progbits
