/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What the eBPF programs and their loader (src/bpf.rs) share: the layout of one
 * watched cgroup's counters and of its start-up timeline. Every field is a u64 and the
 * order matters: src/bpf.rs reads the map values word by word and checks these offsets
 * against the skeleton's generated copies of these structs at compile time.
 */
#ifndef REKINDLE_BPF_H
#define REKINDLE_BPF_H

/* How many cgroups can be watched at once (entries of the `cgroups` map). */
#define MAX_WATCHED 4096

/*
 * Run-queue latency histogram: bucket 0 counts waits below 2 us, bucket i (i >= 1)
 * waits in [2^i, 2^(i+1)) us, and the last bucket everything from 2^(RUNQ_BUCKETS-1) us
 * (about 8.4 s) up.
 */
#define RUNQ_BUCKETS 24

struct cgroup_stats {
	/* on-CPU time of the cgroup's tasks, ns, accounted when a task leaves a CPU */
	__u64 cpu_ns;
	/* waits between becoming runnable (wake-up, new task, preemption) and running */
	__u64 runq_count;
	__u64 runq_total_ns;
	__u64 runq_hist[RUNQ_BUCKETS];
	/* page faults, from the tasks' own min_flt/maj_flt accounting */
	__u64 faults_minor;
	__u64 faults_major;
	/* successful execve()s, and exits of processes (thread-group leaders) */
	__u64 execs;
	__u64 exits;
};

/*
 * A watched cgroup's start-up timeline: CLOCK_MONOTONIC ns of the first switch-in and
 * the first exec of one of its tasks since userspace (re)set the entry to zeros; 0 =
 * none yet. Kept apart from the counters so that it can be restarted (when the agent is
 * about to start the container) without touching them.
 */
struct timeline {
	__u64 first_sched_ns;
	__u64 first_exec_ns;
};

#endif /* REKINDLE_BPF_H */
