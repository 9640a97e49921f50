/* coro_aarch64.S: context switch for aarch64 (AAPCS64): callee-saved registers only. */

/* void tk_coro_ctx_swap(void **save, void *load)
 *   x0 = where to store the current stack pointer
 *   x1 = stack pointer of the context to resume
 * Frame of 160 bytes on the current stack:
 *   [sp+0]   x19 x20   [sp+16] x21 x22   [sp+32] x23 x24
 *   [sp+48]  x25 x26   [sp+64] x27 x28   [sp+80] x29 x30
 *   [sp+96]  d8  d9    [sp+112] d10 d11  [sp+128] d12 d13  [sp+144] d14 d15 */
	.text
	.globl	tk_coro_ctx_swap
	.type	tk_coro_ctx_swap, %function
	.p2align 4
tk_coro_ctx_swap:
	.cfi_startproc
	sub	sp, sp, #160
	.cfi_adjust_cfa_offset 160
	stp	x19, x20, [sp, #0]	/* callee-saved; first run: x19 = argument, x20 = function */
	stp	x21, x22, [sp, #16]	/* callee-saved */
	stp	x23, x24, [sp, #32]	/* callee-saved */
	stp	x25, x26, [sp, #48]	/* callee-saved */
	stp	x27, x28, [sp, #64]	/* callee-saved */
	stp	x29, x30, [sp, #80]	/* frame pointer and link register (our return address) */
	stp	d8, d9, [sp, #96]	/* low 64 bits of v8..v15 are callee-saved */
	stp	d10, d11, [sp, #112]
	stp	d12, d13, [sp, #128]
	stp	d14, d15, [sp, #144]
	mov	x9, sp
	str	x9, [x0]		/* save this context's stack pointer */

	mov	sp, x1			/* switch stacks: from here on we are the other context */
	ldp	x19, x20, [sp, #0]
	ldp	x21, x22, [sp, #16]
	ldp	x23, x24, [sp, #32]
	ldp	x25, x26, [sp, #48]
	ldp	x27, x28, [sp, #64]
	ldp	x29, x30, [sp, #80]
	ldp	d8, d9, [sp, #96]
	ldp	d10, d11, [sp, #112]
	ldp	d12, d13, [sp, #128]
	ldp	d14, d15, [sp, #144]
	add	sp, sp, #160
	.cfi_adjust_cfa_offset -160
	ret				/* to x30: the other context, or the trampoline at its first run */
	.cfi_endproc
	.size	tk_coro_ctx_swap, .-tk_coro_ctx_swap

/* First code of a new coroutine, entered by tk_coro_ctx_swap's ret with
 * x19 = the tk_coro_t and x20 = tk_coro_start_. Never returns. */
	.globl	tk_coro_trampoline
	.type	tk_coro_trampoline, %function
	.p2align 4
tk_coro_trampoline:
	.cfi_startproc
	.cfi_undefined x30	/* outermost frame: debuggers stop unwinding here */
	mov	x29, #0		/* no caller frame */
	mov	x0, x19		/* tk_coro_start_(c) */
	blr	x20
	brk	#0		/* tk_coro_start_ never returns */
	.cfi_endproc
	.size	tk_coro_trampoline, .-tk_coro_trampoline

	.section .note.GNU-stack,"",%progbits	/* no executable stack */
