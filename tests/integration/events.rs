//! containerd learns what happens to a task from the events its shim publishes: the
//! agent's pool manager and CRI both listen to them.

use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use containerd_client::types::Envelope;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::harness::{http, millis, secs, story, Ctx, NAMESPACE};

/// Every task event starts with `string container_id = 1`.
#[derive(Clone, PartialEq, prost::Message)]
struct TaskEvent {
    #[prost(string, tag = "1")]
    container_id: String,
}

/// A subscription to containerd's events, running in the background. containerd
/// sends the response headers of Subscribe only with the first event, so the
/// subscription is confirmed by publishing a marker event and waiting for it.
async fn subscribe(ctx: &Ctx) -> anyhow::Result<mpsc::UnboundedReceiver<Envelope>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let channel = ctx.channel();
    tokio::spawn(async move {
        let mut client = EventsClient::new(channel);
        let sub = client.subscribe(SubscribeRequest {
            filters: vec![format!("namespace=={NAMESPACE}")],
        });
        let Ok(stream) = sub.await else { return };
        let mut stream = stream.into_inner();
        while let Ok(Some(envelope)) = stream.message().await {
            if tx.send(envelope).is_err() {
                return;
            }
        }
    });
    let marker = format!("/rekindle-it/subscribed/{}", ctx.new_id("sub"));
    let deadline = tokio::time::Instant::now() + secs(10);
    loop {
        let any = prost_types::Any {
            type_url: "containerd.events.ContainerCreate".into(),
            value: Vec::new(),
        };
        EventsClient::new(ctx.channel())
            .publish(ctx.req(PublishRequest {
                topic: marker.clone(),
                event: Some(any),
            }))
            .await?;
        match tokio::time::timeout(millis(200), rx.recv()).await {
            Ok(Some(e)) if e.topic == marker => return Ok(rx),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => anyhow::bail!("the event subscription ended"),
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no event came through Events.Subscribe within 10 s");
        }
    }
}

#[test]
fn containerd_hears_about_each_step_of_a_function_s_life() {
    story("events", |ctx| async move {
        let mut events = subscribe(&ctx).await?;

        let f = ctx.start_function("events").await?;
        f.pause().await?;
        f.resume().await?;
        http::count(f.port(), secs(5)).await?;
        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGTERM, false).await?;
        assert_eq!(exited.await??, 0);
        let id = f.id.clone();
        f.delete().await?;

        // While the shim lives, its events are due. /tasks/delete is sent as the shim
        // shuts down, and containerd's own runc shim drops it now and then: looked for,
        // but not required.
        let expected = [
            "/tasks/create",
            "/tasks/start",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
        ];
        let mut seen: Vec<String> = Vec::new();
        let mut exit_status = None;
        let mut deadline = tokio::time::Instant::now() + secs(10);
        let mut grace_started = false;
        while !seen.iter().any(|s| s == "/tasks/delete") {
            if !grace_started && expected.iter().all(|t| seen.iter().any(|s| s == t)) {
                grace_started = true;
                deadline = tokio::time::Instant::now() + secs(2);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(Some(envelope)) = tokio::time::timeout(left, events.recv()).await else {
                break;
            };
            let Some(any) = envelope.event else { continue };
            let Ok(ev) = TaskEvent::decode(any.value.as_slice()) else {
                continue;
            };
            if ev.container_id != id || !envelope.topic.starts_with("/tasks/") {
                continue;
            }
            if envelope.topic == "/tasks/exit" {
                let exit = containerd_client::events::TaskExit::decode(any.value.as_slice())?;
                if exit.id == id {
                    exit_status = Some(exit.exit_status);
                }
            }
            seen.push(envelope.topic);
        }
        let mut order: Vec<&str> = seen
            .iter()
            .map(String::as_str)
            .filter(|t| expected.contains(t))
            .collect();
        order.dedup();
        assert_eq!(order, expected, "task events of {id} (all seen: {seen:?})");
        assert_eq!(
            exit_status,
            Some(0),
            "exit status in the /tasks/exit event of the init"
        );
        if !seen.iter().any(|s| s == "/tasks/delete") {
            eprintln!(
                "[rekindle-it] note: no /tasks/delete event for {id} within 2 s (seen: {seen:?})"
            );
        }
        Ok(())
    });
}
