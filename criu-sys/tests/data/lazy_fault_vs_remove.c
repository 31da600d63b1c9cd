/*
 * The process of criu-sys/tests/lazy_pages.rs: 64 MiB of known data, dumped by
 * CRIU and restored with lazy pages. Once restored and told to go (the file
 * argv[1] exists), one thread reads every page — each a page fault the
 * lazy-pages daemon serves — while another keeps dropping a page of its own
 * (madvise MADV_DONTNEED: a "remove" event on the uffd, during which the
 * daemon's copies fail with EAGAIN). Prints one line: how many pages held the
 * wrong data and the longest single page read, in ms.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGES (64 * 256)
#define PAGE 4096L

static char *dropped, *data;
static volatile int stop;

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void *remover(void *arg)
{
	long n = 0;

	(void)arg;
	while (!stop) {
		madvise(dropped, PAGE, MADV_DONTNEED);
		dropped[0] = 1;
		n++;
	}
	return (void *)n;
}

int main(int argc, char **argv)
{
	struct stat st;
	pthread_t t;
	double worst = 0, start;
	long i, bad = 0;
	void *n;

	if (argc != 2)
		return 2;
	dropped = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	data = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dropped == MAP_FAILED || data == MAP_FAILED)
		return 3;
	dropped[0] = 1;
	for (i = 0; i < PAGES; i++)
		memset(data + i * PAGE, (int)(i * 7 + 1), PAGE);
	printf("ready %d\n", getpid());
	fflush(stdout);

	while (stat(argv[1], &st))
		usleep(10000);

	if (pthread_create(&t, NULL, remover, NULL))
		return 4;
	start = now_ms();
	for (i = 0; i < PAGES; i++) {
		double a = now_ms(), d;

		if (data[i * PAGE] != (char)(i * 7 + 1) || data[i * PAGE + PAGE - 1] != (char)(i * 7 + 1))
			bad++;
		d = now_ms() - a;
		if (d > worst)
			worst = d;
	}
	stop = 1;
	pthread_join(t, &n);
	printf("pages %d bad %ld worst_ms %.1f total_ms %.1f removes %ld\n", PAGES, bad, worst,
	       now_ms() - start, (long)n);
	fflush(stdout);
	return 0;
}
