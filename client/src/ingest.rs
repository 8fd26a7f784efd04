//! Webhook ingestion sources, and the events their deliveries became.

use serde_json::Value;

use crate::client::Client;
use crate::client::Retry;
use crate::client::Target;
use crate::error::Result;
use crate::pb;

/// The metadata group: source changes are made by its leader.
const META: Target = Target::Group(0);

impl Client {
    /// Creates a source; the answer carries its secret, shown this once.
    pub async fn create_source(
        &self,
        request: pb::CreateSourceRequest,
    ) -> Result<pb::SourceWithSecret> {
        self.call_with(Client::ingest_grpc, META, Retry::Once, |mut g, _| {
            let r = request.clone();
            async move { g.create_source(r).await }
        })
        .await
    }

    pub async fn list_sources(&self) -> Result<Vec<pb::Source>> {
        let list = self
            .call_with(
                Client::ingest_grpc,
                META,
                Retry::Idempotent,
                |mut g, _| async move { g.list_sources(pb::ListSourcesRequest {}).await },
            )
            .await?;
        Ok(list.sources)
    }

    pub async fn source(&self, id: &str) -> Result<pb::Source> {
        self.call_with(Client::ingest_grpc, META, Retry::Idempotent, |mut g, _| {
            let r = pb::GetSourceRequest { id: id.to_string() };
            async move { g.get_source(r).await }
        })
        .await
    }

    /// Gives a source a new secret; the old one stops working at once.
    pub async fn rotate_source_secret(&self, id: &str) -> Result<pb::SourceWithSecret> {
        self.call_with(Client::ingest_grpc, META, Retry::Once, |mut g, _| {
            let r = pb::RotateSourceSecretRequest { id: id.to_string() };
            async move { g.rotate_source_secret(r).await }
        })
        .await
    }

    pub async fn delete_source(&self, id: &str) -> Result<()> {
        self.call_with(Client::ingest_grpc, META, Retry::Once, |mut g, _| {
            let r = pb::DeleteSourceRequest { id: id.to_string() };
            async move { g.delete_source(r).await }
        })
        .await
        .map(|_| ())
    }
}

/// The message header naming the source an ingested event came from (its
/// key is the source id too).
pub const HEADER_SOURCE_ID: &str = "source-id";
pub const HEADER_EVENT_ID: &str = "event-id";

/// One ingested event, as `raftstream ingest tail` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestedEvent {
    pub event_id: String,
    pub event_timestamp: String,
    pub event_type: String,
    pub action: String,
    pub target: String,
    /// The stored message: the envelope, or a flow's request.
    pub value: Value,
}

impl IngestedEvent {
    /// Reads an ingested message of `source_id`; `None` for any other
    /// message of the topic (other sources, plain publishes). A flow's
    /// request shows as `flow.request`, its method as the action and the
    /// flow as the target.
    pub fn from_message(source_id: &str, message: &pb::Message) -> Option<IngestedEvent> {
        if message.headers.get(HEADER_SOURCE_ID).map(String::as_str) != Some(source_id) {
            return None;
        }
        let value: Value = serde_json::from_slice(&message.value).ok()?;
        let text = |field: &str| value[field].as_str().unwrap_or_default().to_string();
        let event_id = message
            .headers
            .get(HEADER_EVENT_ID)
            .cloned()
            .unwrap_or_default();
        let event = if value.get("eventType").is_some() {
            IngestedEvent {
                event_id,
                event_timestamp: text("eventTimestamp"),
                event_type: text("eventType"),
                action: text("action"),
                target: text("target"),
                value,
            }
        } else {
            IngestedEvent {
                event_id,
                event_timestamp: rfc3339(message.timestamp_ms),
                event_type: "flow.request".into(),
                action: text("method"),
                target: source_id.to_string(),
                value,
            }
        };
        Some(event)
    }

    /// `<eventTimestamp>  <eventType>  <action> → <target>`.
    pub fn row(&self) -> String {
        format!(
            "{}  {}  {} → {}",
            self.event_timestamp, self.event_type, self.action, self.target
        )
    }
}

/// Milliseconds since the epoch as RFC 3339 in UTC; empty when out of
/// range.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(source: &str, value: &str) -> pb::Message {
        pb::Message {
            key: source.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            headers: [
                (HEADER_SOURCE_ID.to_string(), source.to_string()),
                (HEADER_EVENT_ID.to_string(), "e-1".to_string()),
            ]
            .into(),
            timestamp_ms: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn envelopes_and_flow_requests_render_as_rows() {
        let envelope = message(
            "src_a",
            r#"{"eventType": "api.call", "action": "job.failed", "target": "recipe:5",
                "eventTimestamp": "2024-05-01T10:00:00Z"}"#,
        );
        let event = IngestedEvent::from_message("src_a", &envelope).unwrap();
        assert_eq!(event.event_id, "e-1");
        assert_eq!(
            event.row(),
            "2024-05-01T10:00:00Z  api.call  job.failed → recipe:5"
        );
        let flow = message(
            "src_f",
            r#"{"method": "POST", "headers": {}, "query": {}, "body": null}"#,
        );
        let event = IngestedEvent::from_message("src_f", &flow).unwrap();
        assert_eq!(
            event.row(),
            "1970-01-01T00:00:01Z  flow.request  POST → src_f"
        );
        assert!(IngestedEvent::from_message("src_other", &envelope).is_none());
        let plain = pb::Message {
            value: b"{}".to_vec().into(),
            ..Default::default()
        };
        assert!(IngestedEvent::from_message("src_a", &plain).is_none());
    }
}
