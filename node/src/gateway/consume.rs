//! Consume with replay and long polling across every partition of a topic.
//!
//! A message id handed out by consume carries the consumer's position in
//! every partition just after that message (`model::MessageId`): the plain
//! `"<p>-<o>"` a publish returns for one-partition topics,
//! `"<p>-<o>@<n0>.<n1>…"` otherwise. Resuming from the last id received
//! therefore neither misses nor re-reads a committed message, whatever the
//! partition count. A plain id (from publish) on a topic of several
//! partitions names only its own partition; the others then resume at that
//! message's time.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use raftstream_proto::ErrorCode;
use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::ApiError;
use super::ErrorBody;
use super::Gateway;
use super::Shared;
use super::auth::AdmittedToken;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::error::NoSuchTopic;
use super::extract::ApiPath;
use super::extract::ApiQuery;
use super::extract::OptionalJsonBody;
use super::extract::TopicPath;
use crate::api::read::ReadBatch;
use crate::api::read::ReadMessage;
use crate::api::read::StartAt;
use crate::api::service::Caller;
use crate::api::service::Consume;
use crate::api::service::Hops;
use crate::model::MessageId;
use crate::model::Offset;
use crate::model::rfc3339;
use crate::raft::types::Scope;
use crate::raft::types::Topic;

pub const DEFAULT_BATCH_SIZE: u64 = 50;
pub const MAX_BATCH_SIZE: u64 = 50;
pub const MAX_TIMEOUT_SECS: u64 = 60;

/// Where to start and how to wait. With no position, reading starts at the
/// oldest retained message.
/// A misspelt field is refused, never ignored: ignoring `after_mesage_id`
/// would replay the topic from its start.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumeRequest {
    /// Resume after this message id (one this API returned, or one from
    /// publish). It must name a message of the topic; it cannot be combined
    /// with `since_time`.
    #[schema(pattern = r"^[0-9]+-[0-9]+(@[0-9]+(\.[0-9]+)*)?$")]
    pub after_message_id: Option<String>,
    /// Start at the first message at or after this RFC 3339 time; a time in
    /// the future counts as now.
    #[schema(format = DateTime)]
    pub since_time: Option<String>,
    /// The most messages to return, 1 to 50 (default 50).
    #[schema(minimum = 1, maximum = 50, default = 50)]
    pub batch_size: Option<u64>,
    /// Long poll: when no message is available, wait up to this many
    /// seconds (0 to 60, default 0) and return as soon as one is committed.
    #[schema(minimum = 0, maximum = 60, default = 0)]
    pub timeout_secs: Option<u64>,
}

/// A consumed message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsumedMessage {
    /// The message's id; it carries the consumer's position in every
    /// partition, so resuming after it neither misses nor repeats a message.
    pub message_id: String,
    /// The published JSON object, byte for byte as it was sent (a message
    /// published over gRPC whose value is not JSON comes back as a string).
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    /// When the message was stored (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
}

/// The answer to a consume: messages in publish order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsumeResponse {
    pub messages: Vec<ConsumedMessage>,
}

/// A checked consume request.
#[derive(Debug)]
pub(super) struct ConsumeBody {
    after_message_id: Option<String>,
    since_time_ms: Option<i64>,
    batch_size: u64,
    timeout_secs: u64,
}

fn bounded(
    value: Option<u64>,
    field: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!(
            "{field} must be an integer from {min} to {max}"
        ))),
    }
}

impl ConsumeRequest {
    /// The request checked, with the query string it came with (which
    /// must be empty: see [`no_query_parameters`]).
    pub(super) fn checked(self, query: &[(String, String)]) -> Result<ConsumeBody, ApiError> {
        no_query_parameters(query)?;
        self.check()
    }

    fn check(self) -> Result<ConsumeBody, ApiError> {
        let since_time_ms = match &self.since_time {
            None => None,
            Some(s) => {
                let t =
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            ApiError::bad_request(format!(
                                "since_time is not an RFC 3339 time: {e}"
                            ))
                        })?;
                Some(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
            }
        };
        if self.after_message_id.is_some() && since_time_ms.is_some() {
            return Err(ApiError::bad_request(
                "after_message_id and since_time cannot be combined",
            ));
        }
        Ok(ConsumeBody {
            after_message_id: self.after_message_id,
            since_time_ms,
            batch_size: bounded(
                self.batch_size,
                "batch_size",
                DEFAULT_BATCH_SIZE,
                1,
                MAX_BATCH_SIZE,
            )?,
            timeout_secs: bounded(self.timeout_secs, "timeout_secs", 0, 0, MAX_TIMEOUT_SECS)?,
        })
    }
}

/// Consume takes its options in the body only. A parameter in the query
/// string (`?after_message_id=…`) is refused, never ignored: ignoring it
/// would replay the topic from its start.
fn no_query_parameters(query: &[(String, String)]) -> Result<(), ApiError> {
    match query.first() {
        None => Ok(()),
        Some((name, _)) => Err(ApiError::bad_request(format!(
            "unknown query parameter `{name}`: consume takes after_message_id, since_time, \
             batch_size and timeout_secs in its JSON body"
        ))),
    }
}

/// Reads committed messages across every partition of a topic, with replay
/// by message id or time and long polling.
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic_id}/consume",
    tag = "consume",
    operation_id = "consume",
    params(TopicPath),
    request_body(content = Option<ConsumeRequest>, content_type = "application/json",
        description = "Optional: an empty body, `null` and `{}` all read from the oldest \
            retained message."),
    responses(
        (status = 200, description = "Up to `batch_size` messages in publish order; empty when \
            none arrived before the timeout.", body = ConsumeResponse),
        (status = 400, description = "`invalid_request`: malformed JSON, an unknown field or \
            query parameter, a field of the wrong type or out of range, `after_message_id` with `since_time`, or an \
            `after_message_id` naming no message of the topic.", body = ErrorBody),
        NoSuchTopic,
        BodyErrors,
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn consume(
    State(gateway): Shared,
    ApiPath(TopicPath { topic_id }): ApiPath<TopicPath>,
    Extension(admitted): Extension<AdmittedToken>,
    ApiQuery(query): ApiQuery<Vec<(String, String)>>,
    OptionalJsonBody(body): OptionalJsonBody<ConsumeRequest>,
) -> Result<Json<ConsumeResponse>, ApiError> {
    let body = body.checked(&query)?;
    let topic = gateway.topic(&topic_id).await?;
    consume_topic(&gateway, &admitted, &topic, body, None)
        .await
        .map(Json)
}

/// Which messages a consume returns; the others are read past.
pub(super) type Keep = dyn Fn(&ReadMessage) -> bool + Send + Sync;

/// Consumes `topic` for a caller admitted with consume scope: the route
/// above, and the platform event views, which `keep` only the events of
/// one flow or workspace. Messages `keep` refuses are read past: a reply
/// holds only kept messages, and its ids resume after everything read.
pub(super) async fn consume_topic(
    gateway: &Gateway,
    admitted: &AdmittedToken,
    topic: &Topic,
    body: ConsumeBody,
    keep: Option<&Keep>,
) -> Result<ConsumeResponse, ApiError> {
    let partitions = topic.partitions.len();
    // The response holds at most about max_read_bytes: each partition
    // reads its share (at least one message, so every read progresses).
    let max_read_bytes = gateway.node.config.limits.max_read_bytes;
    let share = u32::try_from(max_read_bytes / partitions.max(1))
        .unwrap_or(u32::MAX)
        .max(1);
    let read = |partition: usize, start: StartAt, wait_ms: u32| {
        let (core, batch_size) = (&gateway.core, body.batch_size as u32);
        async move {
            let mut start = start;
            loop {
                let call = Consume {
                    partition: partition as u32,
                    start,
                    max_messages: batch_size,
                    wait_ms,
                    max_bytes: share,
                };
                let mut batch = core
                    .consume_from(&Caller::Node, topic, call, Hops::default())
                    .await?
                    .batch;
                let Some(keep) = keep else {
                    return Ok::<_, crate::api::service::ServiceError>((partition, batch));
                };
                let read_some = !batch.messages.is_empty();
                batch.messages.retain(|m| keep(m));
                // Nothing kept of what was read: read on past it.
                if !batch.messages.is_empty() || !read_some {
                    return Ok((partition, batch));
                }
                start = StartAt::Offset(batch.next_offset);
            }
        }
    };

    // Where each partition starts.
    let mut starts: Vec<StartAt> = vec![StartAt::Earliest; partitions];
    if let Some(ts) = body.since_time_ms {
        // A time in the future counts as now.
        starts.fill(StartAt::Timestamp(ts.min(gateway.node.time.now_ms())));
    }
    if let Some(id) = &body.after_message_id {
        let invalid = || {
            ApiError::bad_request(format!(
                "after_message_id {id:?} names no message of this topic"
            ))
        };
        let resume = MessageId::parse(id).ok_or_else(invalid)?;
        let p = resume.partition as usize;
        if p >= partitions {
            return Err(invalid());
        }
        let after = StartAt::After(resume.offset);
        // The named message must exist: reading after it checks that.
        read(p, after.clone(), 0).await.map_err(|e| match e.code {
            ErrorCode::InvalidRequest => invalid(),
            _ => ApiError::from(e),
        })?;
        match resume.next_offsets {
            Some(next)
                if next.len() == partitions
                    && resume.offset.0.checked_add(1) == Some(next[p].0) =>
            {
                for (i, offset) in next.into_iter().enumerate() {
                    starts[i] = StartAt::Offset(offset);
                }
            }
            Some(_) => return Err(invalid()),
            None => {
                let time = read(p, StartAt::Offset(resume.offset), 0)
                    .await?
                    .1
                    .messages
                    .first()
                    .map(|m| m.timestamp_ms);
                let others = match time {
                    Some(ts) => StartAt::Timestamp(ts),
                    None => StartAt::Earliest,
                };
                starts.fill(others);
            }
        }
        starts[p] = after;
    }

    let mut responses: Vec<ReadBatch> = vec![ReadBatch::default(); partitions];
    let mut reads: FuturesUnordered<_> = (0..partitions)
        .map(|p| read(p, starts[p].clone(), 0))
        .collect();
    while let Some(result) = reads.next().await {
        let (p, response) = result?;
        responses[p] = response;
    }
    if body.timeout_secs > 0 && responses.iter().all(|r| r.messages.is_empty()) {
        // One slot for the whole poll, however many partitions it waits on.
        let _slot = gateway
            .node
            .read_slots
            .long_poll()
            .map_err(|full| ApiError::new(ErrorCode::TooManyLongPolls, full.to_string()))?;
        // Long poll every partition; the first to commit a message answers.
        let wait_ms = (body.timeout_secs * 1000) as u32;
        // A token revoked while the poll waits ends it at once.
        let access_lost = Box::pin(admitted.access_lost(gateway, Scope::Consume, topic.id));
        let mut polls = (0..partitions)
            .map(|p| read(p, starts[p].clone(), wait_ms))
            .collect::<FuturesUnordered<_>>()
            .take_until(access_lost);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(body.timeout_secs + 5);
        while let Ok(Some(result)) = tokio::time::timeout_at(deadline, polls.next()).await {
            let (p, response) = result?;
            let found = !response.messages.is_empty();
            responses[p] = response;
            if found {
                break;
            }
        }
        // What the poll woke with is answered only if the token still
        // allows it (and this is the answer when revocation ended it).
        admitted.still_allowed(gateway, Scope::Consume, topic.id)?;
    }
    Ok(ConsumeResponse {
        messages: merge(responses, body.batch_size as usize, max_read_bytes),
    })
}

/// Merges per-partition reads in time order (ties by partition, then
/// offset, so each partition keeps its own order) and stamps every message
/// with the position after it.
/// Returns at most `limit` messages and, past the first, at most
/// `max_bytes` of values: the cursors name exactly what was returned, so
/// what is cut off is read by the next call.
fn merge(responses: Vec<ReadBatch>, limit: usize, max_bytes: usize) -> Vec<ConsumedMessage> {
    let mut next: Vec<Offset> = responses
        .iter()
        .map(|r| r.messages.first().map_or(r.next_offset, |m| m.offset))
        .collect();
    let mut all: Vec<(u32, ReadMessage)> = responses
        .into_iter()
        .enumerate()
        .flat_map(|(p, r)| r.messages.into_iter().map(move |m| (p as u32, m)))
        .collect();
    all.sort_by_key(|(p, m)| (m.timestamp_ms, *p, m.offset));
    let mut bytes = 0usize;
    let within_budget = all
        .iter()
        .take_while(|(_, m)| {
            let first = bytes == 0;
            bytes = bytes.saturating_add(m.value.len().max(1));
            first || bytes <= max_bytes
        })
        .count();
    all.into_iter()
        .take(limit.min(within_budget))
        .map(|(partition, m)| {
            if let Some(slot) = next.get_mut(partition as usize) {
                *slot = m.offset.plus(1);
            }
            let payload = payload_json(&m.value);
            ConsumedMessage {
                message_id: MessageId::with_position(partition, m.offset, &next).to_string(),
                payload,
                time: rfc3339(m.timestamp_ms),
            }
        })
        .collect()
}

/// A stored value as the JSON a consumer receives: the stored bytes
/// themselves when they are JSON (every payload published over HTTP is),
/// else the bytes as a JSON string.
fn payload_json(value: &[u8]) -> Box<RawValue> {
    serde_json::from_slice::<Box<RawValue>>(value).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(value);
        // A string always serializes; the fallback (`null`) is never used.
        serde_json::value::to_raw_value(&text).unwrap_or_default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(offset: u64, ts: i64) -> ReadMessage {
        ReadMessage {
            offset: Offset(offset),
            timestamp_ms: ts,
            key: Bytes::new(),
            value: Bytes::from_static(b"{}"),
            headers: Vec::new(),
        }
    }

    #[test]
    fn merge_orders_by_time_and_cursors_cover_only_what_was_returned() {
        let p0 = ReadBatch {
            messages: vec![message(5, 10), message(6, 30)],
            next_offset: Offset(7),
            ..ReadBatch::default()
        };
        let p1 = ReadBatch {
            messages: vec![message(2, 20), message(3, 40)],
            next_offset: Offset(4),
            ..ReadBatch::default()
        };
        let p2 = ReadBatch {
            messages: vec![],
            next_offset: Offset(9),
            ..ReadBatch::default()
        };
        let merged = merge(vec![p0.clone(), p1.clone(), p2.clone()], 3, usize::MAX);
        let ids: Vec<&str> = merged.iter().map(|m| m.message_id.as_str()).collect();
        // Message (1, 3) was read but not returned: the last cursor still
        // points at it, so resuming re-reads nothing and misses nothing.
        assert_eq!(ids, vec!["0-5@6.2.9", "1-2@6.3.9", "0-6@7.3.9"]);

        // A byte budget cuts the same way: two 2-byte values fit in 4 bytes.
        let merged = merge(vec![p0.clone(), p1.clone(), p2.clone()], 50, 4);
        let ids: Vec<&str> = merged.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(ids, vec!["0-5@6.2.9", "1-2@6.3.9"]);
        // The first message is returned whatever its size.
        assert_eq!(merge(vec![p0, p1, p2], 50, 0).len(), 1);
    }

    fn parse_body(bytes: &[u8]) -> Result<ConsumeBody, ApiError> {
        let bytes = if bytes.is_empty() { &b"{}"[..] } else { bytes };
        super::super::extract::parse_json::<ConsumeRequest>(bytes)?.check()
    }

    #[test]
    fn stored_json_is_the_payload_verbatim_and_other_bytes_a_string() {
        let exact = r#"{"z":1,"a":[1.50,12345678901234567890123]}"#;
        assert_eq!(payload_json(exact.as_bytes()).get(), exact);
        assert_eq!(payload_json(b"not json").get(), r#""not json""#);
        assert_eq!(payload_json(&[0xff, b'a']).get(), "\"\u{fffd}a\"");
    }

    #[test]
    fn query_parameters_are_refused_by_name() {
        assert!(no_query_parameters(&[]).is_ok());
        let refused =
            no_query_parameters(&[("after_message_id".into(), "0-1".into())]).unwrap_err();
        assert!(
            refused.message.contains("`after_message_id`"),
            "{refused:?}"
        );
    }

    #[test]
    fn bad_bodies_are_refused() {
        for bad in [
            r#"{"batch_size": 0}"#,
            r#"{"batch_size": 51}"#,
            r#"{"timeout_secs": 61}"#,
            r#"{"timeout_secs": "1"}"#,
            r#"{"since_time": "yesterday"}"#,
            r#"{"after_message_id": "0-1", "since_time": "2026-01-01T00:00:00Z"}"#,
            r#"[1]"#,
            r#"{"#,
        ] {
            assert!(parse_body(bad.as_bytes()).is_err(), "{bad}");
        }
        // A misspelt field is refused by name, never ignored.
        let misspelt = parse_body(br#"{"after_mesage_id": "0-1"}"#).unwrap_err();
        assert!(misspelt.message.contains("after_mesage_id"), "{misspelt:?}");
        let ok = parse_body(b"").unwrap();
        assert_eq!((ok.batch_size, ok.timeout_secs), (50, 0));
        let t = parse_body(br#"{"since_time": "1970-01-01T00:00:01.5+00:00"}"#).unwrap();
        assert_eq!(t.since_time_ms, Some(1500));
    }
}
