//! Garbage-collection policy. Pure: which images to delete, given their sizes, when they
//! were last used, and whether something holds them.
//!
//! Two rules, applied in order: first every image unused for longer than `max_age`; then,
//! while the store holds more than `max_bytes`, the least-recently-used images. A staged
//! or leased image is never selected; it is reported as skipped instead.

use std::time::Duration;

/// One image as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// Bytes it takes in the store (compressed).
    pub bytes: u64,
    /// Last used, seconds since the epoch.
    pub last_used: u64,
    /// Why it must be kept whatever the policy says: `staged` or `leased`.
    pub held: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Age,
    Size,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::Size => "size",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// To delete, oldest first: name, bytes, why.
    pub delete: Vec<(String, u64, Reason)>,
    /// Selected but held: name, why held.
    pub skipped: Vec<(String, &'static str)>,
}

/// Decides what to delete. `now` in seconds since the epoch.
pub fn plan(
    candidates: &[Candidate],
    now: u64,
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
) -> Plan {
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    let mut total: u64 = candidates.iter().map(|c| c.bytes).sum();
    let mut chosen = vec![false; order.len()];
    let mut plan = Plan::default();
    let skip = |plan: &mut Plan, c: &Candidate, why: &'static str| {
        if !plan.skipped.iter().any(|(n, _)| n == &c.name) {
            plan.skipped.push((c.name.clone(), why));
        }
    };
    if let Some(max_age) = max_age {
        for (i, c) in order.iter().enumerate() {
            if now.saturating_sub(c.last_used) > max_age.as_secs() {
                match c.held {
                    Some(why) => skip(&mut plan, c, why),
                    None => {
                        chosen[i] = true;
                        total -= c.bytes;
                        plan.delete.push((c.name.clone(), c.bytes, Reason::Age));
                    }
                }
            }
        }
    }
    if let Some(max_bytes) = max_bytes {
        for (i, c) in order.iter().enumerate() {
            if total <= max_bytes {
                break;
            }
            if chosen[i] {
                continue;
            }
            match c.held {
                Some(why) => skip(&mut plan, c, why),
                None => {
                    chosen[i] = true;
                    total -= c.bytes;
                    plan.delete.push((c.name.clone(), c.bytes, Reason::Size));
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, bytes: u64, last_used: u64, held: Option<&'static str>) -> Candidate {
        Candidate {
            name: name.into(),
            bytes,
            last_used,
            held,
        }
    }

    fn names(p: &Plan) -> Vec<(&str, &str)> {
        p.delete
            .iter()
            .map(|(n, _, r)| (n.as_str(), r.as_str()))
            .collect()
    }

    #[test]
    fn nothing_without_a_policy() {
        let cs = [c("a", 10, 0, None)];
        assert_eq!(plan(&cs, 100, None, None), Plan::default());
    }

    #[test]
    fn old_images_go_by_age() {
        let cs = [c("old", 10, 0, None), c("new", 10, 95, None)];
        let p = plan(&cs, 100, None, Some(Duration::from_secs(10)));
        assert_eq!(names(&p), [("old", "age")]);
    }

    #[test]
    fn least_recently_used_go_until_within_budget() {
        let cs = [
            c("b", 30, 20, None),
            c("a", 30, 10, None),
            c("c", 30, 30, None),
            c("d", 30, 40, None),
        ];
        let p = plan(&cs, 100, Some(70), None);
        assert_eq!(names(&p), [("a", "size"), ("b", "size")]);
        let p = plan(&cs, 100, Some(120), None);
        assert!(p.delete.is_empty());
        let p = plan(&cs, 100, Some(0), None);
        assert_eq!(p.delete.len(), 4);
    }

    #[test]
    fn staged_and_leased_images_are_never_deleted() {
        let cs = [
            c("staged", 50, 0, Some("staged")),
            c("leased", 50, 1, Some("leased")),
            c("free", 50, 2, None),
            c("newest", 50, 3, None),
        ];
        let p = plan(&cs, 100, Some(0), Some(Duration::from_secs(1)));
        assert_eq!(names(&p), [("free", "age"), ("newest", "age")], "{p:?}");
        assert_eq!(
            p.skipped,
            [
                ("staged".to_string(), "staged"),
                ("leased".to_string(), "leased")
            ]
        );
    }

    #[test]
    fn age_and_size_combine() {
        let cs = [
            c("ancient", 10, 0, None),
            c("older", 40, 50, None),
            c("recent", 40, 90, None),
        ];
        let p = plan(&cs, 100, Some(50), Some(Duration::from_secs(60)));
        assert_eq!(names(&p), [("ancient", "age"), ("older", "size")]);
    }
}
