//! The task events containerd publishes, collected in the background.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use containerd_client::types::Envelope;
use prost::Message as _;
use prost_types::Any;

use super::super::{secs, Ctx, NAMESPACE};

/// Every task event topic containerd publishes for one container, collected in the
/// background from `Events.Subscribe`.
pub struct TaskEvents {
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

/// Every task event starts with `string container_id = 1`.
#[derive(Clone, PartialEq, prost::Message)]
struct TaskEvent {
    #[prost(string, tag = "1")]
    container_id: String,
}

impl TaskEvents {
    /// Subscribes, and confirms the subscription with a marker event of our own
    /// (containerd answers Subscribe only with its first event).
    pub async fn subscribe(ctx: &Ctx) -> Result<Self> {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
        let channel = ctx.channel();
        tokio::spawn(async move {
            let mut client = EventsClient::new(channel);
            let Ok(stream) = client
                .subscribe(SubscribeRequest {
                    filters: vec![format!("namespace=={NAMESPACE}")],
                })
                .await
            else {
                return;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(e)) = stream.message().await {
                if tx.send(e).is_err() {
                    return;
                }
            }
        });
        let marker = format!("/rekindle-it/subscribed/{}", ctx.new_id("sub"));
        let deadline = Instant::now() + secs(10);
        loop {
            EventsClient::new(ctx.channel())
                .publish(ctx.req(PublishRequest {
                    topic: marker.clone(),
                    event: Some(Any {
                        type_url: "containerd.events.ContainerCreate".into(),
                        value: Vec::new(),
                    }),
                }))
                .await?;
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(e)) if e.topic == marker => break,
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => bail!("the event subscription ended"),
            }
            if Instant::now() > deadline {
                bail!("no event came through Events.Subscribe within 10 s");
            }
        }
        let sink = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let Some(any) = e.event else { continue };
                if !e.topic.starts_with("/tasks/") {
                    continue;
                }
                if let Ok(ev) = TaskEvent::decode(any.value.as_slice()) {
                    sink.lock().unwrap().push((ev.container_id, e.topic));
                }
            }
        });
        Ok(TaskEvents { seen })
    }

    /// The topics seen for `id`, in order, once all of `expected` are among them (or
    /// an error listing what came).
    pub async fn wait_for(&self, id: &str, expected: &[&str]) -> Result<Vec<String>> {
        let deadline = Instant::now() + secs(10);
        loop {
            let topics: Vec<String> = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(c, _)| c == id)
                .map(|(_, t)| t.clone())
                .collect();
            if expected.iter().all(|e| topics.iter().any(|t| t == e)) {
                return Ok(topics);
            }
            if Instant::now() > deadline {
                bail!("events for {id}: expected {expected:?}, containerd published {topics:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
