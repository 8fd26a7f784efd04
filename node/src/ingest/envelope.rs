//! The message one delivery becomes.
//!
//! `workato` and `generic` deliveries become an envelope event:
//! `{tenantId, sourceType, sourceId, eventId, eventType, actor, action,
//! target, costUsd, tokensInput, tokensOutput, rawPayload, eventTimestamp,
//! payload}`, LangWatch's event shape: `rawPayload` is the body verbatim as
//! a JSON string, `costUsd` a number of US dollars, `eventId`
//! `envelope-<unix-ms>-<random8>` (see `new_event_id`). `payload`, our
//! addition, is the same body embedded as JSON, so a topic's schema and
//! consumers can look inside it without parsing a string. A `flow` delivery becomes
//! the request itself, `{method, headers, query, body}`, which is what a
//! flow's first step consumes.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::model::rfc3339;
use crate::raft::types::IngestSource;
use crate::raft::types::SourceKind;

pub const EVENT_API_CALL: &str = "api.call";
pub const EVENT_AUTH_ACTION: &str = "auth.action";
pub const EVENT_AGENT_ACTION: &str = "agent.action";

/// What a flow webhook received, less its credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowRequest {
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    tenant_id: &'a str,
    source_type: &'static str,
    source_id: &'a str,
    event_id: &'a str,
    event_type: &'static str,
    actor: String,
    action: String,
    target: String,
    cost_usd: f64,
    tokens_input: u64,
    tokens_output: u64,
    /// The body as received, as a string.
    raw_payload: &'a str,
    event_timestamp: String,
    /// The body as JSON, not re-encoded.
    payload: &'a RawValue,
}

#[derive(Debug, Serialize)]
struct FlowMessage<'a> {
    method: &'a str,
    headers: &'a BTreeMap<String, String>,
    query: &'a BTreeMap<String, String>,
    body: FlowBody<'a>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum FlowBody<'a> {
    Json(&'a RawValue),
    Text(&'a str),
    None(Option<()>),
}

/// The bytes to store for one delivery, or why the body is refused.
pub fn message_value(
    source: &IngestSource,
    event_id: &str,
    body: &[u8],
    flow: Option<&FlowRequest>,
    received_ms: i64,
) -> Result<Vec<u8>, String> {
    let encoded = match (source.kind, flow) {
        (SourceKind::Flow, Some(request)) => serde_json::to_vec(&FlowMessage {
            method: &request.method,
            headers: &request.headers,
            query: &request.query,
            body: flow_body(body)?,
        }),
        (SourceKind::Flow, None) => {
            return Err("flow sources take deliveries at /webhook/flow/{flowId}".into());
        }
        (_, Some(_)) => {
            return Err(format!(
                "source {:?} is not a flow; it takes deliveries at /api/ingest/webhook/{{sourceId}}",
                source.id
            ));
        }
        (kind, None) => {
            let raw: &RawValue = serde_json::from_slice(body)
                .map_err(|e| format!("the body is not valid JSON: {e}"))?;
            // Valid JSON is UTF-8.
            let verbatim = std::str::from_utf8(body)
                .map_err(|e| format!("the body is not valid JSON: {e}"))?;
            let payload: Value = serde_json::from_str(raw.get())
                .map_err(|e| format!("the body is not valid JSON: {e}"))?;
            let fields = match kind {
                SourceKind::Workato => normalise_workato(&payload),
                _ => Normalised::default(),
            };
            let usage = Usage::of(&payload);
            serde_json::to_vec(&Envelope {
                tenant_id: &source.tenant_id,
                source_type: kind.as_str(),
                source_id: &source.id,
                event_id,
                event_type: fields.event_type,
                actor: fields.actor,
                action: fields.action,
                target: fields.target,
                cost_usd: usage.cost_usd,
                tokens_input: usage.tokens_input,
                tokens_output: usage.tokens_output,
                raw_payload: verbatim,
                event_timestamp: rfc3339(fields.timestamp_ms.unwrap_or(received_ms)),
                payload: raw,
            })
        }
    };
    encoded.map_err(|e| format!("the event could not be encoded: {e}"))
}

/// A flow's body as JSON when it is JSON, else as text; absent when empty.
fn flow_body(body: &[u8]) -> Result<FlowBody<'_>, String> {
    if body.trim_ascii().is_empty() {
        return Ok(FlowBody::None(None));
    }
    if let Ok(raw) = serde_json::from_slice::<&RawValue>(body) {
        return Ok(FlowBody::Json(raw));
    }
    std::str::from_utf8(body)
        .map(FlowBody::Text)
        .map_err(|_| "the body is neither JSON nor UTF-8 text".to_string())
}

/// The fields the Workato normaliser finds; what it cannot find stays empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalised {
    pub event_type: &'static str,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub timestamp_ms: Option<i64>,
}

impl Default for Normalised {
    fn default() -> Self {
        Self {
            event_type: EVENT_AGENT_ACTION,
            actor: String::new(),
            action: String::new(),
            target: String::new(),
            timestamp_ms: None,
        }
    }
}

/// Maps Workato's job, recipe and connection webhook envelope (`event`,
/// `recipe_id`, `connection_id`, `job_id`, user or account fields,
/// `timestamp`, `data`) onto the event's fields.
pub fn normalise_workato(payload: &Value) -> Normalised {
    let event = text_at(payload, &["event"]).unwrap_or_default();
    let target = [("recipe", "recipe_id"), ("connection", "connection_id")]
        .iter()
        .filter_map(|(kind, field)| text_at(payload, &[field]).map(|id| format!("{kind}:{id}")))
        .collect::<Vec<_>>()
        .join(",");
    // The triggering user first, then the connection's account.
    let actor = [
        &["user", "email"][..],
        &["user", "name"],
        &["user", "id"],
        &["user_email"],
        &["user_name"],
        &["user_id"],
        &["triggered_by"],
        &["account", "email"],
        &["account", "name"],
        &["account", "id"],
        &["account_email"],
        &["account_name"],
        &["account_id"],
        &["connection_account"],
    ]
    .iter()
    .find_map(|path| text_at(payload, path))
    .unwrap_or_default();
    Normalised {
        event_type: workato_event_type(&event),
        actor,
        action: event,
        target,
        timestamp_ms: payload.get("timestamp").and_then(timestamp_ms),
    }
}

/// Recipe and job events are API calls; a connection that errs, fails,
/// disconnects or expires is an authentication event; the rest are agent
/// actions.
fn workato_event_type(event: &str) -> &'static str {
    let event = event.to_ascii_lowercase();
    let auth_failure = ["error", "fail", "disconnect", "expire", "revoke", "invalid"]
        .iter()
        .any(|word| event.contains(word));
    if event.starts_with("connection") && auth_failure {
        EVENT_AUTH_ACTION
    } else if event.starts_with("recipe") || event.starts_with("job") {
        EVENT_API_CALL
    } else {
        EVENT_AGENT_ACTION
    }
}

/// A non-empty string or a number at `path`, as text.
fn text_at(payload: &Value, path: &[&str]) -> Option<String> {
    let value = path.iter().try_fold(payload, |v, key| v.get(key))?;
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The latest instant RFC 3339 can write (9999-12-31T23:59:59Z).
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_000;

/// A payload timestamp: RFC 3339 text, or Unix seconds or milliseconds as
/// a number or numeric text. Anything else, or a time before 1970 or past
/// year 9999, is not valid.
pub fn timestamp_ms(value: &Value) -> Option<i64> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match time::OffsetDateTime::parse(
            s.trim(),
            &time::format_description::well_known::Rfc3339,
        ) {
            Ok(t) => return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok(),
            Err(_) => s.trim().parse::<f64>().ok(),
        },
        _ => None,
    }?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    // Seconds until the year 5138; anything larger is milliseconds.
    let ms = if number < 1e11 {
        number * 1000.0
    } else {
        number
    };
    (ms <= MAX_TIMESTAMP_MS as f64).then_some(ms as i64)
}

/// Model usage some senders report: top-level `cost_usd`, `tokens_input`
/// and `tokens_output` (or camelCase); zero when absent.
#[derive(Debug, Default, PartialEq)]
struct Usage {
    cost_usd: f64,
    tokens_input: u64,
    tokens_output: u64,
}

impl Usage {
    fn of(payload: &Value) -> Usage {
        let field = |snake: &str, camel: &str| payload.get(snake).or_else(|| payload.get(camel));
        Usage {
            cost_usd: field("cost_usd", "costUsd")
                .and_then(Value::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0)
                .unwrap_or(0.0),
            tokens_input: field("tokens_input", "tokensInput")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            tokens_output: field("tokens_output", "tokensOutput")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn source(kind: SourceKind) -> IngestSource {
        IngestSource {
            id: "src_1".into(),
            name: "s".into(),
            kind,
            topic_id: crate::model::TopicId(1),
            tenant_id: "acme".into(),
            secret_hash: [0; 32],
            secret_last_four: "abcd".into(),
            hmac_secret: None,
            created_at_ms: 0,
        }
    }

    fn event(kind: SourceKind, body: &str) -> Value {
        let bytes = message_value(&source(kind), "evt-1", body.as_bytes(), None, 1_000).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn recipe_job_and_connection_events_map_to_their_types() {
        let job = normalise_workato(&json!({
            "event": "job.failed", "recipe_id": 42, "job_id": "j-9",
            "user": {"email": "ana@example.com"}, "timestamp": "2024-05-01T10:00:00Z",
            "data": {"error": "timeout"}
        }));
        assert_eq!(job.event_type, EVENT_API_CALL);
        assert_eq!(job.action, "job.failed");
        assert_eq!(job.target, "recipe:42");
        assert_eq!(job.actor, "ana@example.com");
        assert_eq!(job.timestamp_ms, Some(1_714_557_600_000));

        let recipe = normalise_workato(&json!({
            "event": "recipe.started", "recipe_id": "r1", "connection_id": 7,
            "triggered_by": "scheduler"
        }));
        assert_eq!(recipe.event_type, EVENT_API_CALL);
        assert_eq!(recipe.target, "recipe:r1,connection:7");
        assert_eq!(recipe.actor, "scheduler");

        let connection = normalise_workato(&json!({
            "event": "connection.error", "connection_id": 7,
            "account": {"email": "ops@example.com"}, "timestamp": 1_714_557_600
        }));
        assert_eq!(connection.event_type, EVENT_AUTH_ACTION);
        assert_eq!(connection.target, "connection:7");
        assert_eq!(connection.actor, "ops@example.com");
        assert_eq!(connection.timestamp_ms, Some(1_714_557_600_000));

        let connected = normalise_workato(&json!({"event": "connection.connected"}));
        assert_eq!(connected.event_type, EVENT_AGENT_ACTION);
        let other = normalise_workato(&json!({"event": "agent.reply"}));
        assert_eq!(other.event_type, EVENT_AGENT_ACTION);
    }

    #[test]
    fn missing_fields_stay_empty_and_bad_timestamps_fall_back() {
        let empty = normalise_workato(&json!({}));
        assert_eq!(empty, Normalised::default());
        let odd = normalise_workato(&json!({
            "event": 5, "recipe_id": null, "user": "not an object", "timestamp": "yesterday"
        }));
        assert_eq!(odd.action, "5");
        assert_eq!(odd.target, "");
        assert_eq!(odd.actor, "");
        assert_eq!(odd.timestamp_ms, None);
        assert_eq!(timestamp_ms(&json!(-1)), None);
        assert_eq!(timestamp_ms(&json!(1e300)), None);
        assert_eq!(
            timestamp_ms(&json!("1714557600123")),
            Some(1_714_557_600_123)
        );
        assert_eq!(timestamp_ms(&json!(true)), None);
    }

    #[test]
    fn envelopes_keep_the_raw_payload_verbatim() {
        let body = r#" {"z": 1, "a": [1.50, "x"], "event": "job.completed", "timestamp": "2024-05-01T10:00:00.250Z"}
"#;
        let e = event(SourceKind::Workato, body);
        assert_eq!(e["tenantId"], "acme");
        assert_eq!(e["sourceType"], "workato");
        assert_eq!(e["sourceId"], "src_1");
        assert_eq!(e["eventId"], "evt-1");
        assert_eq!(e["eventType"], EVENT_API_CALL);
        assert_eq!(e["action"], "job.completed");
        assert_eq!(e["eventTimestamp"], "2024-05-01T10:00:00.25Z");
        assert!(e["costUsd"].is_number(), "{e}");
        assert_eq!(e["costUsd"], 0.0);
        // The body as received, white space included, as a string.
        assert_eq!(e["rawPayload"], body);
        // And embedded, with its key order and number spelling: the body is
        // not re-encoded.
        let bytes =
            message_value(&source(SourceKind::Workato), "e", body.as_bytes(), None, 0).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(r#""payload":{"z": 1, "a": [1.50, "x"]"#),
            "{text}"
        );
        let fields = [
            "tenantId",
            "sourceType",
            "sourceId",
            "eventId",
            "eventType",
            "actor",
            "action",
            "target",
            "costUsd",
            "tokensInput",
            "tokensOutput",
            "rawPayload",
            "eventTimestamp",
            "payload",
        ];
        assert_eq!(e.as_object().unwrap().len(), fields.len(), "{e}");
        // LangWatch's fields in its order, then ours. The body is inside
        // `rawPayload` (escaped) and `payload`, so each field's own key is
        // its first appearance after the previous field's.
        let mut from = 0;
        for field in fields {
            let at = text[from..]
                .find(&format!(r#""{field}":"#))
                .unwrap_or_else(|| panic!("{field} out of order in {text}"));
            from += at;
        }
    }

    #[test]
    fn generic_events_use_receive_time_and_report_usage() {
        let e = event(
            SourceKind::Generic,
            r#"{"event": "job.failed", "cost_usd": 0.25, "tokensInput": 10, "tokens_output": 3, "timestamp": 5}"#,
        );
        assert_eq!(e["eventType"], EVENT_AGENT_ACTION);
        assert_eq!(e["actor"], "");
        assert_eq!(e["action"], "");
        assert_eq!(e["target"], "");
        assert_eq!(e["eventTimestamp"], "1970-01-01T00:00:01Z");
        assert_eq!(e["costUsd"], 0.25);
        assert_eq!(e["tokensInput"], 10);
        assert_eq!(e["tokensOutput"], 3);
    }

    #[test]
    fn bodies_that_are_not_json_are_refused_except_by_flows() {
        let generic = source(SourceKind::Generic);
        assert!(message_value(&generic, "e", b"not json", None, 0).is_err());
        assert!(message_value(&generic, "e", b"", None, 0).is_err());
        let flow = source(SourceKind::Flow);
        let request = FlowRequest {
            method: "POST".into(),
            headers: [("content-type".to_string(), "text/plain".to_string())].into(),
            query: [("a".to_string(), "1".to_string())].into(),
        };
        let text = message_value(&flow, "e", b"hello", Some(&request), 0).unwrap();
        let text: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            text,
            json!({"method": "POST", "headers": {"content-type": "text/plain"},
                   "query": {"a": "1"}, "body": "hello"})
        );
        let json_body = message_value(&flow, "e", br#"{"k": [1]}"#, Some(&request), 0).unwrap();
        let json_body: Value = serde_json::from_slice(&json_body).unwrap();
        assert_eq!(json_body["body"], json!({"k": [1]}));
        let empty = message_value(&flow, "e", b"", Some(&request), 0).unwrap();
        let empty: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(empty["body"], Value::Null);
        assert!(message_value(&flow, "e", &[0xff, 0xfe], Some(&request), 0).is_err());
        assert!(message_value(&flow, "e", b"{}", None, 0).is_err());
        assert!(message_value(&generic, "e", b"{}", Some(&request), 0).is_err());
    }
}
