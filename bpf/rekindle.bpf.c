// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Rekindle's per-cgroup metrics: CPU time, run-queue latency, page faults, exec/exit
 * counts and the first moments of a container's life, for the cgroups the agent
 * watches. Loaded and read by src/bpf.rs; see bpf/README.md.
 *
 * Only BTF-typed tracepoints (tp_btf): this kernel has no kprobes, and tp_btf needs
 * neither tracefs nor perf events. Cgroup ids are cgroup v2 ids (kernfs node ids, the
 * inode numbers of the directories under the cgroup2 mount).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "rekindle.h"

/* tp_btf programs and bpf_probe_read_kernel need a GPL-compatible licence. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TASK_RUNNING 0

/*
 * The watch set and the counters in one map: a cgroup is watched while it has an
 * entry (userspace inserts a zeroed one and deletes it). An unwatched cgroup costs one
 * failed hash lookup per event and is never written.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_WATCHED);
	__type(key, __u64);
	__type(value, struct cgroup_stats);
} cgroups SEC(".maps");

/*
 * Start-up timelines (struct timeline), for watched cgroups only: userspace inserts a
 * zeroed entry before it inserts the cgroup's `cgroups` entry, and overwrites it with
 * zeros to restart the timeline; the programs set each field once.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_WATCHED);
	__type(key, __u64);
	__type(value, struct timeline);
} timelines SEC(".maps");

/*
 * Per CPU: the watched task now running here (its thread id) and since when; cgid 0 =
 * none. A task runs on one CPU between its switch-in and
 * its switch-out, so the task leaving the CPU is normally the one recorded here — but a
 * switch can go unseen (a missed program run; on the machines this was written on, no
 * tracepoint fires while the sandbox's own init threads are current), so the slot is
 * only used when the leaving task is the recorded one.
 */
struct oncpu {
	__u64 cgid;
	__u64 since_ns;
	__u64 tid;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct oncpu);
} oncpu SEC(".maps");

/* Per task: when it became runnable (ns), 0 = not waiting. Freed with the task. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} queued_at SEC(".maps");

/*
 * Per task: its fault counters when last seen in a watched cgroup. Faults are counted as
 * the growth of the task's own counters between sightings (switch-in, switch-out, exit),
 * so a switch that goes unseen (see oncpu) delays a task's faults to its next sighting
 * instead of losing them. Freed with the task.
 */
struct fault_mark {
	__u64 min_flt;
	__u64 maj_flt;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fault_mark);
} fault_seen SEC(".maps");

static __always_inline __u64 task_cgroup_id(struct task_struct *t)
{
	/*
	 * What bpf_get_current_cgroup_id() returns for current, for any task. Plain loads
	 * (the verifier guards them): a BPF_CORE_READ chain would cost a helper call per hop.
	 */
	return t->cgroups->dfl_cgrp->kn->id;
}

static __always_inline struct cgroup_stats *watched(__u64 cgid)
{
	return bpf_map_lookup_elem(&cgroups, &cgid);
}

/* Adds the faults `t` took since it was last seen; the first sighting only marks. */
static __always_inline void account_faults(struct task_struct *t, struct cgroup_stats *s)
{
	struct fault_mark *m = bpf_task_storage_get(&fault_seen, t, 0, 0);

	if (!m) {
		m = bpf_task_storage_get(&fault_seen, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (m) {
			m->min_flt = t->min_flt;
			m->maj_flt = t->maj_flt;
		}
		return;
	}
	__sync_fetch_and_add(&s->faults_minor, t->min_flt - m->min_flt);
	__sync_fetch_and_add(&s->faults_major, t->maj_flt - m->maj_flt);
	m->min_flt = t->min_flt;
	m->maj_flt = t->maj_flt;
}

static __always_inline void mark_queued(struct task_struct *p, __u64 now)
{
	__u64 *ts = bpf_task_storage_get(&queued_at, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (ts)
		*ts = now;
}

/* Index of a wait of `us` microseconds in runq_hist (see rekindle.h). */
static __always_inline __u32 runq_bucket(__u64 us)
{
	__u32 b = 0;

	if (us >> 32) { us >>= 32; b += 32; }
	if (us >> 16) { us >>= 16; b += 16; }
	if (us >> 8) { us >>= 8; b += 8; }
	if (us >> 4) { us >>= 4; b += 4; }
	if (us >> 2) { us >>= 2; b += 2; }
	if (us >> 1) { b += 1; }
	return b < RUNQ_BUCKETS ? b : RUNQ_BUCKETS - 1;
}

static __always_inline void set_once(__u64 *slot, __u64 now)
{
	if (!*slot)
		__sync_val_compare_and_swap(slot, 0, now);
}

static __always_inline int on_wakeup(struct task_struct *p)
{
	if (watched(task_cgroup_id(p)))
		mark_queued(p, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(rekindle_wakeup, struct task_struct *p)
{
	return on_wakeup(p);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(rekindle_wakeup_new, struct task_struct *p)
{
	return on_wakeup(p);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(rekindle_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 zero = 0;
	struct oncpu *cpu = bpf_map_lookup_elem(&oncpu, &zero);
	struct cgroup_stats *s;
	struct timeline *tl;
	__u64 cgid;

	if (!cpu)
		return 0;

	/* The task leaving: the faults it took, its slice, and whether it queues again. */
	s = watched(task_cgroup_id(prev));
	if (s)
		account_faults(prev, s);
	if (cpu->cgid) {
		s = cpu->tid == (__u64)prev->pid ? watched(cpu->cgid) : NULL;
		if (s) {
			__sync_fetch_and_add(&s->cpu_ns, now - cpu->since_ns);
			if (preempt || prev_state == TASK_RUNNING)
				mark_queued(prev, now);
		}
		cpu->cgid = 0;
	}

	/* The task arriving: remember it if its cgroup is watched; close its wait. */
	cgid = task_cgroup_id(next);
	s = watched(cgid);
	if (!s)
		return 0;
	account_faults(next, s);
	cpu->cgid = cgid;
	cpu->since_ns = now;
	cpu->tid = next->pid;
	tl = bpf_map_lookup_elem(&timelines, &cgid);
	if (tl)
		set_once(&tl->first_sched_ns, now);

	__u64 *ts = bpf_task_storage_get(&queued_at, next, 0, 0);
	if (ts && *ts) {
		__u64 wait = now - *ts;

		*ts = 0;
		__sync_fetch_and_add(&s->runq_count, 1);
		__sync_fetch_and_add(&s->runq_total_ns, wait);
		__sync_fetch_and_add(&s->runq_hist[runq_bucket(wait / 1000)], 1);
	}
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(rekindle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 cgid = bpf_get_current_cgroup_id();
	struct cgroup_stats *s = watched(cgid);
	struct timeline *tl;

	if (!s)
		return 0;
	__sync_fetch_and_add(&s->execs, 1);
	tl = bpf_map_lookup_elem(&timelines, &cgid);
	if (tl)
		set_once(&tl->first_exec_ns, bpf_ktime_get_ns());
	return 0;
}

/*
 * Fires once per exiting thread. A process is counted when its thread-group leader
 * exits (newer kernels pass a group_dead flag; the leader test works on all of them).
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(rekindle_exit, struct task_struct *p)
{
	struct cgroup_stats *s = watched(task_cgroup_id(p));

	if (!s)
		return 0;
	account_faults(p, s);
	if (p->pid == p->tgid)
		__sync_fetch_and_add(&s->exits, 1);
	return 0;
}
