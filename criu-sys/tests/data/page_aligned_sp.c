/*
 * A process whose only thread waits in pause(2) with its stack pointer at a
 * page boundary, beside 4 MiB of anonymous memory it has written: what CRIU's
 * dump marks lazy (criu-sys/tests/lazy_pages.rs, patch 0023). x86-64 only.
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

int main(void)
{
	size_t data_len = 4 << 20, stack_len = 64 << 10;
	char *data = mmap(NULL, data_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *stack = mmap(NULL, stack_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (data == MAP_FAILED || stack == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(data, 0x5a, data_len);
	printf("ready\n");
	fflush(stdout);
	/* mmap returns page-aligned memory: its end is a page boundary. */
	__asm__ volatile("mov %0, %%rsp\n"
			 "1: mov $34, %%eax\n" /* __NR_pause */
			 "syscall\n"
			 "jmp 1b\n"
			 :
			 : "r"(stack + stack_len)
			 : "rax", "rcx", "r11", "memory");
	return 0;
}
