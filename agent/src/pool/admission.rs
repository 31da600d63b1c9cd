//! Admission of the gateway's requests to a function's pool: serve it now on an idle
//! instance, start one for it, queue it, or refuse it. Pure: the manager
//! ([`super::manager`]) takes the counts under its lock, carries the decision out there
//! (so no two requests get the same instance or the same room to start one), and does
//! the waiting.
//!
//! Rules, per function:
//! 1. The queue is first in, first out: while requests wait, a new one queues behind them
//!    (an instance freed goes to the oldest waiter, never to a newcomer).
//! 2. An idle running instance first, then an idle frozen one (thawed).
//! 3. Else a new instance, while loaded + starting instances stay under `max_instances`
//!    and the node's memory budget has room (possibly after releasing idle instances of
//!    other functions, [`super::make_room`]).
//! 4. Else the request waits in the queue while it has fewer than `max_queue` requests;
//!    past that it is refused (`queue_full`). A request whose start the budget can never
//!    allow (nothing anywhere that could free memory is busy) is refused (`budget`).
//!
//! The head of the queue is dispatched by [`dispatch`] whenever an instance or room may
//! have freed up (a request ended, an instance stopped, a start failed, a pool action
//! ended); the waiting itself is bounded by `max_queue_wait_secs` (`queue_timeout`).

use std::time::Duration;

/// A function's pool and queue, as admission sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Running instances serving nothing and under no action.
    pub idle_hot: u32,
    /// Frozen instances under no action.
    pub idle_warm: u32,
    /// Instances loaded (running or frozen, busy or not) and starts in flight.
    pub loaded: u32,
    pub starting: u32,
    /// Requests waiting in the function's queue.
    pub queued: u32,
}

/// A function's admission limits (its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_instances: u32,
    pub max_queue: u32,
}

/// Whether the node's memory budget has room for one more instance of the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Yes (no budget, or room after releasing idle instances or staged images).
    Fits,
    /// Not now; busy instances or starts in flight may free room when they end.
    Later,
    /// Not now and nothing that could free it is in flight.
    Never,
}

/// Why a request was refused (the gateway's 503, the `reason` label of
/// `rekindle_gateway_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The function's queue holds `max_queue` requests already.
    QueueFull,
    /// The request waited `max_queue_wait_secs` (or its invoke timeout) in the queue.
    QueueTimeout,
    /// The node's memory budget has no room for an instance and none can come.
    Budget,
    /// The agent is shutting down.
    ShuttingDown,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::QueueFull,
        Refusal::QueueTimeout,
        Refusal::Budget,
        Refusal::ShuttingDown,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::QueueTimeout => "queue_timeout",
            Refusal::Budget => "budget",
            Refusal::ShuttingDown => "shutdown",
        }
    }

    /// What the 503's `Retry-After` suggests: a queue drains in about a request's time,
    /// the budget frees when another function's instances go idle (the pool's keep-alive
    /// decisions run every reconcile), a restarting agent takes longer.
    pub fn retry_after(self) -> Duration {
        Duration::from_secs(match self {
            Refusal::QueueFull | Refusal::QueueTimeout => 1,
            Refusal::Budget => 5,
            Refusal::ShuttingDown => 10,
        })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::QueueFull => "every instance the pool allows is busy and the queue is full",
            Refusal::QueueTimeout => {
                "every instance the pool allows stayed busy for as long as a request may wait"
            }
            Refusal::Budget => "the node's memory budget has no room for another instance",
            Refusal::ShuttingDown => "the agent is shutting down",
        })
    }
}

/// What to do with a request (or with the head of the queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// On an idle running instance.
    Hot,
    /// On an idle frozen instance, thawed.
    Warm,
    /// On a new instance started for it (room reserved now).
    Start,
    /// In the queue (only for a new request).
    Queue,
    /// Not for the head of the queue: nothing frees up yet.
    Wait,
    Refuse(Refusal),
}

/// Serve, start, or neither (`None`): rules 2 and 3, and the budget part of rule 4.
fn place(c: &Counts, l: &Limits, room: impl FnOnce() -> Room) -> Option<Admission> {
    if c.idle_hot > 0 {
        return Some(Admission::Hot);
    }
    if c.idle_warm > 0 {
        return Some(Admission::Warm);
    }
    if c.loaded + c.starting >= l.max_instances {
        return None;
    }
    match room() {
        Room::Fits => Some(Admission::Start),
        Room::Later => None,
        Room::Never => Some(Admission::Refuse(Refusal::Budget)),
    }
}

/// A new request. `room` is asked only when a start is otherwise allowed (it may be
/// costly: it looks at every function's pool).
pub fn admit(c: &Counts, l: &Limits, room: impl FnOnce() -> Room) -> Admission {
    let queue = || {
        if c.queued < l.max_queue {
            Admission::Queue
        } else {
            Admission::Refuse(Refusal::QueueFull)
        }
    };
    if c.queued > 0 {
        return queue();
    }
    place(c, l, room).unwrap_or_else(queue)
}

/// The oldest queued request, when something may have freed up: `Wait` while nothing
/// has.
pub fn dispatch(c: &Counts, l: &Limits, room: impl FnOnce() -> Room) -> Admission {
    place(c, l, room).unwrap_or(Admission::Wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_instances: 2,
        max_queue: 3,
    };

    fn counts(idle_hot: u32, idle_warm: u32, loaded: u32, starting: u32, queued: u32) -> Counts {
        Counts {
            idle_hot,
            idle_warm,
            loaded,
            starting,
            queued,
        }
    }

    fn no_room_asked() -> Room {
        panic!("room asked although no start was possible")
    }

    #[test]
    fn idle_instances_serve_first_hot_before_warm() {
        assert_eq!(
            admit(&counts(1, 1, 2, 0, 0), &LIMITS, no_room_asked),
            Admission::Hot
        );
        assert_eq!(
            admit(&counts(0, 1, 2, 0, 0), &LIMITS, no_room_asked),
            Admission::Warm
        );
        assert_eq!(
            dispatch(&counts(0, 1, 2, 0, 0), &LIMITS, no_room_asked),
            Admission::Warm
        );
    }

    #[test]
    fn a_start_needs_an_instance_under_the_limit_and_room_in_the_budget() {
        // Nothing loaded: start, if the budget allows.
        assert_eq!(
            admit(&counts(0, 0, 0, 0, 0), &LIMITS, || Room::Fits),
            Admission::Start
        );
        // One busy, one starting: the limit (starts in flight count) — queue.
        assert_eq!(
            admit(&counts(0, 0, 1, 1, 0), &LIMITS, no_room_asked),
            Admission::Queue
        );
        // Room may come when a busy instance somewhere ends: queue.
        assert_eq!(
            admit(&counts(0, 0, 1, 0, 0), &LIMITS, || Room::Later),
            Admission::Queue
        );
        // No room and nothing in flight to free any: refused now, not after a wait.
        assert_eq!(
            admit(&counts(0, 0, 0, 0, 0), &LIMITS, || Room::Never),
            Admission::Refuse(Refusal::Budget)
        );
    }

    #[test]
    fn the_queue_is_bounded_and_first_in_first_out() {
        // Waiters ahead: a newcomer queues behind them even when an instance is idle
        // (the idle one goes to the oldest waiter).
        assert_eq!(
            admit(&counts(1, 0, 2, 0, 2), &LIMITS, no_room_asked),
            Admission::Queue
        );
        assert_eq!(
            admit(&counts(0, 0, 2, 0, 3), &LIMITS, no_room_asked),
            Admission::Refuse(Refusal::QueueFull)
        );
        // No queue at all: refused at once when nothing is free.
        let no_queue = Limits {
            max_queue: 0,
            ..LIMITS
        };
        assert_eq!(
            admit(&counts(0, 0, 2, 0, 0), &no_queue, no_room_asked),
            Admission::Refuse(Refusal::QueueFull)
        );
        assert_eq!(
            admit(&counts(1, 0, 2, 0, 0), &no_queue, no_room_asked),
            Admission::Hot
        );
    }

    #[test]
    fn the_head_of_the_queue_waits_until_something_frees() {
        assert_eq!(
            dispatch(&counts(0, 0, 2, 0, 5), &LIMITS, no_room_asked),
            Admission::Wait
        );
        assert_eq!(
            dispatch(&counts(1, 0, 2, 0, 5), &LIMITS, no_room_asked),
            Admission::Hot
        );
        // An instance stopped (or a start failed): room under the limit.
        assert_eq!(
            dispatch(&counts(0, 0, 1, 0, 5), &LIMITS, || Room::Fits),
            Admission::Start
        );
        assert_eq!(
            dispatch(&counts(0, 0, 1, 0, 5), &LIMITS, || Room::Later),
            Admission::Wait
        );
        assert_eq!(
            dispatch(&counts(0, 0, 0, 0, 5), &LIMITS, || Room::Never),
            Admission::Refuse(Refusal::Budget)
        );
    }

    /// N requests at once on a cold function: the starts stay within the limit, the
    /// queue takes what it can hold, the rest is refused; as instances free up, queued
    /// requests are served one by one, none twice.
    #[test]
    fn a_cold_burst_starts_at_most_the_limit_and_queues_the_rest() {
        let mut c = Counts::default();
        let (mut started, mut queued, mut refused) = (0, 0, 0);
        for _ in 0..10 {
            match admit(&c, &LIMITS, || Room::Fits) {
                Admission::Start => {
                    c.starting += 1;
                    started += 1;
                }
                Admission::Queue => {
                    c.queued += 1;
                    queued += 1;
                }
                Admission::Refuse(Refusal::QueueFull) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((started, queued, refused), (2, 3, 5));
        // The starts land, serving their own requests: nothing for the queue yet.
        c.starting = 0;
        c.loaded = 2;
        assert_eq!(dispatch(&c, &LIMITS, no_room_asked), Admission::Wait);
        // Each time a request ends its instance goes to the head of the queue.
        let mut served = 0;
        while c.queued > 0 {
            c.idle_hot += 1; // a request ended
            assert_eq!(dispatch(&c, &LIMITS, no_room_asked), Admission::Hot);
            c.idle_hot -= 1;
            c.queued -= 1;
            served += 1;
            assert_eq!(dispatch(&c, &LIMITS, no_room_asked), Admission::Wait);
        }
        assert_eq!(served, queued);
    }

    #[test]
    fn refusals_have_labels_and_a_retry_hint() {
        let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            ["queue_full", "queue_timeout", "budget", "shutdown"]
        );
        for r in Refusal::ALL {
            assert!(r.retry_after() >= Duration::from_secs(1), "{r:?}");
            assert!(!r.to_string().is_empty());
        }
    }
}
