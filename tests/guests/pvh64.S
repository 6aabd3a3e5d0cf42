/* tiny-pvh64.elf: the 64-bit guest behind a PVH trampoline, so the same C tests can
 * run under QEMU microvm (a reference virtio-mmio implementation). The 32-bit entry
 * builds the same identity map as the VMM (4 GiB, 2 MiB pages), enters long mode,
 * turns hvm_start_info into a zero page and jumps to entry64.S's _start. */
	.section .note.Xen, "a"
	.balign 4
	.long 4, 4, 18		/* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long pvh64_start

	.text
	.code32
	.globl pvh64_start
pvh64_start:
	cli
	cld
	mov $pvh_stack_top, %esp
	mov %ebx, pvh_start_info
	mov $pt_pml4, %edi		/* clear PML4 and PDPT */
	mov $2048, %ecx
	xor %eax, %eax
	rep stosl
	movl $(pt_pdpt + 3), pt_pml4
	movl $(pt_pd + 0x0003), pt_pdpt
	movl $(pt_pd + 0x1003), pt_pdpt + 8
	movl $(pt_pd + 0x2003), pt_pdpt + 16
	movl $(pt_pd + 0x3003), pt_pdpt + 24
	mov $pt_pd, %edi		/* 2048 PDEs: 2 MiB pages over 4 GiB */
	xor %ecx, %ecx
1:	mov %ecx, %eax
	shl $21, %eax
	or $0x83, %eax
	mov %eax, (%edi)
	mov %ecx, %eax
	shr $11, %eax
	mov %eax, 4(%edi)
	add $8, %edi
	inc %ecx
	cmp $2048, %ecx
	jb 1b
	mov %cr4, %eax
	or $0x20, %eax			/* PAE */
	mov %eax, %cr4
	mov $pt_pml4, %eax
	mov %eax, %cr3
	mov $0xc0000080, %ecx		/* EFER.LME */
	rdmsr
	or $0x100, %eax
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax		/* PG | PE */
	mov %eax, %cr0
	lgdt gdt_desc
	ljmp $0x08, $long64

	.code64
long64:
	mov $0x10, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	lea pvh_stack_top(%rip), %rsp
	mov pvh_start_info(%rip), %edi
	lea pvh_zero_page(%rip), %rsi
	call pvh_make_zero_page
	lea pvh_zero_page(%rip), %rsi
	jmp _start

	.section .rodata
	.balign 8
gdt:	.quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff
gdt_desc:
	.word 23
	.long gdt

	/* Outside .bss: entry64.S clears .bss while these are live. */
	.section .pvh, "aw", @nobits
	.balign 4096
pt_pml4:	.skip 4096
pt_pdpt:	.skip 4096
pt_pd:		.skip 4 * 4096
pvh_zero_page:	.skip 4096
pvh_start_info:	.skip 8
	.balign 16
	.skip 4096
pvh_stack_top:

	.section .note.GNU-stack, "", @progbits
