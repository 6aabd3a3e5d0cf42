/* 64-bit entry of the Linux boot protocol: long mode, paging on, rsi = zero page.
 * Built twice: plain for tiny.elf, and with BZIMAGE_PAD for the bzImage payload,
 * whose 64-bit entry must sit at load address + 0x200. */
	.code64
#ifdef BZIMAGE_PAD
	/* Where a 32-bit boot-protocol loader would jump: ud2 (faults, never runs on). */
	.section .text.head, "ax"
	.fill 0x100, 2, 0x0b0f
#endif

	.section .text.entry, "ax"
	.globl _start
_start:
	mov %rsi, entry_rsi(%rip)
	mov %rsp, entry_rsp(%rip)
	pushfq
	popq entry_rflags(%rip)
	cli
	cld
	lea __stack_top(%rip), %rsp
	lea __bss_start(%rip), %rdi
	lea __bss_end(%rip), %rcx
	sub %rdi, %rcx
	xor %eax, %eax
	rep stosb
	mov entry_rsi(%rip), %rdi
	call guest_main
1:	cli
	hlt
	jmp 1b

	.data
	.balign 8
	.globl entry_rsi, entry_rsp, entry_rflags
entry_rsi:	.quad 0
entry_rsp:	.quad 0
entry_rflags:	.quad 0

	.section .note.GNU-stack, "", @progbits
