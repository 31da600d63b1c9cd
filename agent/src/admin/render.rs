//! The admin API's answers as text for people (the CLI's default output).

use super::{CheckpointDone, FunctionStatus, InvokeDone, NodeStatus, Removed};
use crate::image::{human_bytes, human_duration, table};

fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else if x >= 10.0 {
        format!("{x:.0} ms")
    } else {
        format!("{x:.1} ms")
    }
}

fn tiers(hot: u32, warm: u32, staged: u32) -> String {
    format!("{hot}/{warm}/{staged}")
}

/// `rekindle functions ls`: one row per function.
pub fn functions_table(fns: &[FunctionStatus]) -> String {
    if fns.is_empty() {
        return "no functions registered (add one: rekindle functions add NAME --image REF \
                --port PORT)\n"
            .into();
    }
    let rows: Vec<Vec<String>> = fns
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.spec.image_ref.clone(),
                f.spec.port.to_string(),
                format!("{} MiB", f.spec.memory_mb),
                format!("{}-{}", f.spec.min_instances, f.spec.max_instances),
                f.instances.hot.to_string(),
                f.instances.warm.to_string(),
                f.busy.to_string(),
                f.image.name().into(),
                if f.persisted {
                    f.source.clone()
                } else {
                    format!("{} (until restart)", f.source)
                },
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "IMAGE REF",
            "PORT",
            "MEMORY",
            "INSTANCES",
            "HOT",
            "WARM",
            "BUSY",
            "CHECKPOINT",
            "SOURCE",
        ],
        &rows,
    )
}

/// `rekindle status`: the node, then its pools, instances, images and start latencies.
pub fn status_text(s: &NodeStatus) -> String {
    let mut out = format!(
        "rekindle-agent {}, up {}, policy {}\n",
        s.version,
        human_duration(s.uptime_secs as u64),
        s.policy
    );
    out += &match s.memory.budget_bytes {
        Some(b) => format!(
            "memory: {} of a {} budget ({:.0}%)\n",
            human_bytes(s.memory.used_bytes),
            human_bytes(b),
            if b == 0 {
                0.0
            } else {
                100.0 * s.memory.used_bytes as f64 / b as f64
            }
        ),
        None => format!(
            "memory: {} held by the pools (no budget)\n",
            human_bytes(s.memory.used_bytes)
        ),
    };
    out += &if s.restored.reachable {
        format!(
            "rekindle-restored: {} image(s) in the store, {} staged ({})\n",
            s.restored.images_total, s.restored.images_staged, s.restored.socket
        )
    } else {
        format!(
            "rekindle-restored: NOT REACHABLE on {}: {}\n",
            s.restored.socket,
            s.restored.error.as_deref().unwrap_or("?")
        )
    };
    out += &if s.fast_path.available {
        format!(
            "fast path (checkpoint, restore): available, CRIU {}\n",
            s.fast_path.criu_version.as_deref().unwrap_or("?")
        )
    } else {
        format!(
            "fast path (checkpoint, restore): UNAVAILABLE, instances start cold: {}\n",
            s.fast_path.reason.as_deref().unwrap_or("?")
        )
    };

    out += "\nPOOLS\n";
    if s.functions.is_empty() {
        out += "no functions registered\n";
    } else {
        let rows: Vec<Vec<String>> = s
            .functions
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    f.instances.hot.to_string(),
                    f.instances.warm.to_string(),
                    f.instances.staged.to_string(),
                    f.busy.to_string(),
                    f.starting.to_string(),
                    f.image.name().into(),
                    tiers(f.targets.hot, f.targets.warm, f.targets.staged),
                    human_bytes(f.memory_bytes),
                ]
            })
            .collect();
        out += &table(
            &[
                "FUNCTION",
                "HOT",
                "WARM",
                "STAGED",
                "BUSY",
                "STARTING",
                "CHECKPOINT",
                "TARGET H/W/S",
                "MEMORY",
            ],
            &rows,
        );
    }

    out += "\nINSTANCES\n";
    if s.instances.is_empty() {
        out += "none loaded\n";
    } else {
        let rows: Vec<Vec<String>> = s
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.id.clone(),
                    i.function.clone(),
                    i.tier.clone(),
                    if i.busy {
                        "busy".into()
                    } else {
                        format!("idle {}", human_duration(i.idle_secs as u64))
                    },
                    match &i.restored_from {
                        Some(img) => format!("restored from {img}"),
                        None => "cold start".into(),
                    },
                ]
            })
            .collect();
        out += &table(&["INSTANCE", "FUNCTION", "TIER", "STATE", "FROM"], &rows);
    }

    out += "\nIMAGES\n";
    if s.images.is_empty() {
        out += "no checkpoint image of a registered function\n";
    } else {
        let rows: Vec<Vec<String>> = s
            .images
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    i.function.clone(),
                    if i.staged { "yes" } else { "no" }.into(),
                    human_bytes(i.size_bytes),
                    human_bytes(i.compressed_bytes),
                ]
            })
            .collect();
        out += &table(&["IMAGE", "FUNCTION", "STAGED", "SIZE", "ON DISK"], &rows);
    }

    out += "\nRECENT STARTS\n";
    if s.start_latencies.is_empty() {
        out += "no request served yet\n";
    } else {
        let rows: Vec<Vec<String>> = s
            .start_latencies
            .iter()
            .map(|t| {
                vec![
                    t.tier.clone(),
                    t.count.to_string(),
                    ms(t.p50_ms),
                    ms(t.p99_ms),
                    ms(t.max_ms),
                    ms(t.last_ms),
                ]
            })
            .collect();
        out += &table(&["TIER", "COUNT", "P50", "P99", "MAX", "LAST"], &rows);
    }
    out
}

/// `rekindle functions add`.
pub fn added_text(f: &FunctionStatus) -> String {
    format!(
        "registered {} ({}, port {}, {} MiB, {}-{} instances); checkpoint image: {}\n\
         note: registered until rekindle-agent restarts; add a [[function]] table to \
         agent.toml to keep it\n",
        f.name,
        f.spec.image_ref,
        f.spec.port,
        f.spec.memory_mb,
        f.spec.min_instances,
        f.spec.max_instances,
        f.image.name()
    )
}

/// `rekindle functions rm`.
pub fn removed_text(r: &Removed) -> String {
    format!(
        "removed {}: {} instance(s) stopped (its checkpoint image stays in the store: \
         rekindle image rm to delete it)\n",
        r.name, r.instances_stopped
    )
}

/// `rekindle checkpoint`.
pub fn checkpoint_text(c: &CheckpointDone) -> String {
    format!(
        "checkpointed {} of {} into image {} in {}; the instance was {}\n",
        c.instance,
        c.function,
        c.image,
        ms(c.secs * 1000.0),
        if c.kept_running {
            "left running"
        } else {
            "stopped"
        }
    )
}

/// `rekindle invoke`'s line on stderr (the function's answer goes to stdout as is).
pub fn invoke_summary(i: &InvokeDone) -> String {
    let mut parts = Vec::new();
    if let Some(s) = i.start_secs {
        parts.push(format!("start {}", ms(s * 1000.0)));
    }
    if let Some(q) = i.queued_secs {
        parts.push(format!("queued {}", ms(q * 1000.0)));
    }
    format!(
        "{}: HTTP {}, served {} by {} in {}{}\n",
        i.function,
        i.status,
        i.tier,
        i.instance,
        ms(i.secs * 1000.0),
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::config::FunctionConfig;

    fn function() -> FunctionStatus {
        let cfg = FunctionConfig::new("hello", "docker.io/rekindle/python-fn:latest", 8080);
        FunctionStatus {
            name: "hello".into(),
            source: "api".into(),
            persisted: false,
            spec: FunctionSpecView::from(&cfg),
            instances: Tiers {
                hot: 2,
                warm: 1,
                staged: 1,
            },
            busy: 1,
            starting: 0,
            image: ImageWhere::Staged,
            targets: Tiers {
                hot: 1,
                warm: 1,
                staged: 1,
            },
            memory_bytes: 3 * (256 << 20),
        }
    }

    fn status() -> NodeStatus {
        NodeStatus {
            version: "0.1.0".into(),
            uptime_secs: 3725.0,
            policy: "rekindle".into(),
            memory: Memory {
                budget_bytes: Some(4 << 30),
                used_bytes: 1 << 30,
            },
            functions: vec![function()],
            instances: vec![
                InstanceStatus {
                    function: "hello".into(),
                    id: "hello-1a2b".into(),
                    tier: "hot".into(),
                    busy: false,
                    idle_secs: 12.0,
                    restored_from: Some("hello".into()),
                },
                InstanceStatus {
                    function: "hello".into(),
                    id: "hello-3c4d".into(),
                    tier: "warm".into(),
                    busy: true,
                    idle_secs: 0.0,
                    restored_from: None,
                },
            ],
            images: vec![ImageStatus {
                name: "hello".into(),
                function: "hello".into(),
                staged: true,
                size_bytes: 64 << 20,
                compressed_bytes: 16 << 20,
                created_unix: 1,
            }],
            restored: RestoredStatus {
                socket: "/run/rekindle/restored.sock".into(),
                reachable: true,
                error: None,
                images_total: 3,
                images_staged: 1,
            },
            fast_path: crate::fast_path::FastPath {
                available: true,
                criu_version: Some("4.2.1".into()),
                reason: None,
            },
            start_latencies: tier_latencies(&[
                (crate::metrics::StartTier::Hot, 0.0004),
                (crate::metrics::StartTier::Cold, 2.5),
            ]),
        }
    }

    #[test]
    fn the_functions_table_has_one_row_per_function() {
        let t = functions_table(&[function()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("NAME   IMAGE REF"), "{t}");
        assert!(
            lines[1].starts_with("hello  docker.io/rekindle/python-fn:latest  8080  256 MiB"),
            "{t}"
        );
        assert!(lines[1].ends_with("staged      api (until restart)"), "{t}");
        assert!(functions_table(&[]).contains("rekindle functions add"));
    }

    #[test]
    fn status_shows_the_node_pools_instances_images_and_latencies() {
        let t = status_text(&status());
        for needle in [
            "rekindle-agent 0.1.0, up 1h 2m, policy rekindle",
            "memory: 1.0 GiB of a 4.0 GiB budget (25%)",
            "rekindle-restored: 3 image(s) in the store, 1 staged",
            "fast path (checkpoint, restore): available, CRIU 4.2.1",
            "FUNCTION  HOT  WARM  STAGED  BUSY  STARTING  CHECKPOINT  TARGET H/W/S  MEMORY",
            "hello     2    1     1       1     0         staged      1/1/1         768.0 MiB",
            "hello-1a2b  hello     hot   idle 12s  restored from hello",
            "hello-3c4d  hello     warm  busy      cold start",
            "hello  hello     yes     64.0 MiB  16.0 MiB",
            "TIER  COUNT  P50     P99     MAX     LAST",
            "hot   1      0.4 ms  0.4 ms  0.4 ms  0.4 ms",
            "cold  1      2.50 s",
        ] {
            assert!(t.contains(needle), "{needle:?} missing in:\n{t}");
        }
        let mut down = status();
        down.restored.reachable = false;
        down.restored.error = Some("connection refused".into());
        down.fast_path = crate::fast_path::FastPath {
            available: false,
            criu_version: None,
            reason: Some("rekindle-restored found no working CRIU".into()),
        };
        down.memory.budget_bytes = None;
        down.functions.clear();
        down.instances.clear();
        down.images.clear();
        down.start_latencies.clear();
        let t = status_text(&down);
        for needle in [
            "NOT REACHABLE on /run/rekindle/restored.sock: connection refused",
            "UNAVAILABLE, instances start cold: rekindle-restored found no working CRIU",
            "(no budget)",
            "no functions registered",
            "none loaded",
            "no request served yet",
        ] {
            assert!(t.contains(needle), "{needle:?} missing in:\n{t}");
        }
    }

    #[test]
    fn one_line_answers_say_what_happened() {
        assert!(added_text(&function()).contains("until rekindle-agent restarts"));
        let r = removed_text(&Removed {
            name: "hello".into(),
            instances_stopped: 2,
        });
        assert!(r.starts_with("removed hello: 2 instance(s) stopped"), "{r}");
        let c = checkpoint_text(&CheckpointDone {
            function: "hello".into(),
            instance: "hello-1".into(),
            image: "hello".into(),
            kept_running: true,
            secs: 0.25,
        });
        assert_eq!(
            c,
            "checkpointed hello-1 of hello into image hello in 250 ms; the instance was left running\n"
        );
        let i = invoke_summary(&InvokeDone {
            function: "hello".into(),
            status: 200,
            tier: "cold".into(),
            instance: "hello-1".into(),
            secs: 1.5,
            start_secs: Some(1.2),
            queued_secs: None,
            content_type: Some("application/json".into()),
            body: "{}".into(),
        });
        assert_eq!(
            i,
            "hello: HTTP 200, served cold by hello-1 in 1.50 s (start 1.20 s)\n"
        );
    }
}
