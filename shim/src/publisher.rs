//! Events to containerd (`Events.Forward` on containerd's ttrpc socket), surviving a
//! containerd restart.
//!
//! The crate's `RemotePublisher` reconnects only when ttrpc reports `RemoteClosed` or
//! `LocalClosed`; a connection whose server went away reports
//! `Others("reserve channel capacity failed: channel closed")` instead, so after a
//! restart of containerd every event of the shim (`/tasks/exit`, `/tasks/exec-added`,
//! ...) was retried on the dead connection and dropped — CRI never learnt that a
//! container exited. This one reconnects after any failed forward, as containerd's Go
//! shims do, and retries a few times with a growing pause (the new containerd may
//! still be starting), keeping the events in order.

use std::time::Duration;

use containerd_shim::{
    protos::{
        protobuf::{well_known_types::any::Any, Message},
        shim::{event::Envelope, events::ForwardRequest},
        shim_async::{Client, EventsClient},
        ttrpc::context::with_duration,
    },
    util::{connect, timestamp},
};
use tokio::sync::Mutex;
use tracing::{debug, warn};

/// The package of every task event (containerd's events/task.proto).
const EVENTS_PACKAGE: &str = "containerd.events";

/// `event` as `Events.Forward` carries it: its bytes under its type URL. Built
/// without rust-protobuf's reflection (`containerd_shim::util::convert_to_any`
/// asks the message for its descriptor): a process's first descriptor lookup
/// parses the embedded .proto files, ~0.9 ms of CPU (perf, in the bench), and
/// every shim's first event is its container's TaskCreate, on the restore's path.
pub fn event_any<M: Message>(event: &M) -> Result<Any, String> {
    let mut any = Any::new();
    any.type_url = format!("{EVENTS_PACKAGE}.{}", M::NAME);
    any.value = event.write_to_bytes().map_err(|e| e.to_string())?;
    Ok(any)
}

/// Pauses between the attempts to forward one event: none before the first reconnect
/// (the usual case: containerd was restarted and is back), then about 8 s in all, for a
/// containerd still starting, short enough that a containerd gone for good does not
/// hold the events behind for long.
const RETRY_PAUSES_MS: [u64; 6] = [0, 100, 500, 1000, 2000, 4000];

pub struct EventPublisher {
    address: String,
    client: Mutex<Option<EventsClient>>,
}

impl EventPublisher {
    /// Connects now unless connected; a failure is only logged (the first event
    /// connects again, with its retries). The forwarding loop calls it first, so that
    /// the shim serves containerd's first request without waiting for this connect
    /// (0.1-5 ms on a busy node, measured) and the first event finds it made.
    pub async fn connect_ahead(&self) {
        let mut client = self.client.lock().await;
        if client.is_none() {
            match Self::connect(&self.address).await {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    warn!(error = %e, "containerd's event service: not connected yet; the first event tries again")
                }
            }
        }
    }

    /// A publisher that connects at its first event.
    pub fn unconnected(address: &str) -> Self {
        EventPublisher {
            address: address.to_string(),
            client: Mutex::new(None),
        }
    }

    async fn connect(address: &str) -> Result<EventsClient, String> {
        let addr = address.to_string();
        let fd = tokio::task::spawn_blocking(move || connect(addr))
            .await
            .map_err(|e| format!("connect to {address}: {e}"))?
            .map_err(|e| format!("connect to {address}: {e}"))?;
        // SAFETY: `fd` is the connected unix socket `connect` returned; the client
        // takes ownership of it.
        Ok(EventsClient::new(unsafe {
            Client::from_raw_unix_socket_fd(fd)
        }))
    }

    /// Forwards one event, reconnecting and retrying if containerd does not take it.
    pub async fn publish(&self, topic: &str, namespace: &str, event: Any) -> Result<(), String> {
        let mut envelope = Envelope::new();
        envelope.set_topic(topic.to_string());
        envelope.set_namespace(namespace.to_string());
        envelope.set_timestamp(timestamp().map_err(|e| e.to_string())?);
        envelope.set_event(event);
        let mut req = ForwardRequest::new();
        req.set_envelope(envelope);

        let mut client = self.client.lock().await;
        let mut last = String::new();
        for pause in RETRY_PAUSES_MS.iter().map(|ms| Some(*ms)).chain([None]) {
            if client.is_none() {
                match Self::connect(&self.address).await {
                    Ok(c) => *client = Some(c),
                    Err(e) => last = e,
                }
            }
            if let Some(c) = client.as_ref() {
                match c.forward(with_duration(Duration::from_secs(5)), &req).await {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        debug!(topic, error = %e, "forward failed: reconnecting to containerd");
                        last = e.to_string();
                        *client = None;
                    }
                }
            }
            let Some(ms) = pause else { break };
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        warn!(topic, error = %last, "containerd did not take the event: dropped");
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::{
        events::task::{
            TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit,
            TaskIO, TaskOOM, TaskPaused, TaskResumed, TaskStart,
        },
        protobuf::MessageFull,
    };

    use super::event_any;

    /// The type URL containerd decodes by, built by hand, is the one the message's
    /// descriptor names; the bytes are the message's.
    fn same_as_reflection<M: MessageFull + PartialEq + std::fmt::Debug>(event: M) {
        let any = event_any(&event).unwrap();
        assert_eq!(any.type_url, M::descriptor().full_name());
        assert_eq!(M::parse_from_bytes(&any.value).unwrap(), event);
    }

    #[test]
    fn every_task_event_gets_the_type_url_of_its_descriptor() {
        same_as_reflection(TaskCreate {
            container_id: "c".into(),
            bundle: "/b".into(),
            pid: 42,
            ..Default::default()
        });
        same_as_reflection(TaskStart {
            container_id: "c".into(),
            pid: 42,
            ..Default::default()
        });
        same_as_reflection(TaskExit {
            container_id: "c".into(),
            id: "c".into(),
            pid: 42,
            exit_status: 137,
            ..Default::default()
        });
        same_as_reflection(TaskDelete::default());
        same_as_reflection(TaskExecAdded::default());
        same_as_reflection(TaskExecStarted::default());
        same_as_reflection(TaskPaused::default());
        same_as_reflection(TaskResumed::default());
        same_as_reflection(TaskOOM::default());
        same_as_reflection(TaskIO::default());
        same_as_reflection(TaskCheckpointed::default());
    }
}
