//! Consume with replay and long polling across every partition of a topic.
//!
//! A message id handed out by consume carries the consumer's position in
//! every partition just after that message: `"<p>-<o>"` for one-partition
//! topics, `"<p>-<o>@<n0>.<n1>…"` otherwise, where `n_i` is the next offset
//! to read in partition `i`. Resuming from the last id received therefore
//! neither misses nor re-reads a committed message, whatever the partition
//! count. An id from publish (`"<p>-<o>"`) names only its own partition;
//! the others then resume at that message's time.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::raftstream_server::Raftstream;
use serde_json::Value;
use serde_json::json;
use tonic::Request;

use super::ApiError;
use super::Shared;
use super::body_bytes;
use super::parse_json;
use super::topic_ref;
use super::topics::rfc3339;
use crate::api::grpc::message_id;
use crate::api::grpc::parse_message_id;
use crate::node::now_ms;

pub const DEFAULT_BATCH_SIZE: u64 = 50;
pub const MAX_BATCH_SIZE: u64 = 50;
pub const MAX_TIMEOUT_SECS: u64 = 60;

/// A parsed message id: the message, and the position after it if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeId {
    pub partition: u32,
    pub offset: u64,
    pub next_offsets: Option<Vec<u64>>,
}

pub fn parse_resume_id(id: &str) -> Option<ResumeId> {
    let (message, cursor) = match id.split_once('@') {
        Some((message, cursor)) => (message, Some(cursor)),
        None => (id, None),
    };
    let (partition, offset) = parse_message_id(message)?;
    let next_offsets = match cursor {
        None => None,
        Some(c) => Some(
            c.split('.')
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        ),
    };
    Some(ResumeId {
        partition,
        offset,
        next_offsets,
    })
}

pub fn resume_id(partition: u32, offset: u64, next_offsets: &[u64]) -> String {
    if next_offsets.len() <= 1 {
        return message_id(partition, offset);
    }
    let cursor: Vec<String> = next_offsets.iter().map(u64::to_string).collect();
    format!("{}@{}", message_id(partition, offset), cursor.join("."))
}

fn position(p: pb::position::Position) -> Option<pb::Position> {
    Some(pb::Position { position: Some(p) })
}

#[derive(Debug)]
struct ConsumeBody {
    after_message_id: Option<String>,
    since_time_ms: Option<i64>,
    batch_size: u64,
    timeout_secs: u64,
}

fn bounded(
    body: &serde_json::Map<String, Value>,
    field: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{field} must be an integer from {min} to {max}"
            ))),
        },
    }
}

fn parse_body(bytes: &[u8]) -> Result<ConsumeBody, ApiError> {
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(bytes)?
    };
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let after_message_id = match body.get("after_message_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_request("after_message_id must be a string")),
    };
    let since_time_ms = match body.get("since_time") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    ApiError::bad_request(format!("since_time is not an RFC 3339 time: {e}"))
                })?;
            Some(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "since_time must be an RFC 3339 string",
            ));
        }
    };
    if after_message_id.is_some() && since_time_ms.is_some() {
        return Err(ApiError::bad_request(
            "after_message_id and since_time cannot be combined",
        ));
    }
    Ok(ConsumeBody {
        after_message_id,
        since_time_ms,
        batch_size: bounded(&body, "batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE)?,
        timeout_secs: bounded(&body, "timeout_secs", 0, 0, MAX_TIMEOUT_SECS)?,
    })
}

pub async fn consume(
    State(gateway): Shared,
    Path(topic_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = parse_body(&body_bytes(body)?)?;
    let topic = gateway.topic(&topic_id).await?;
    let partitions = topic.partitions.len();
    let read = |partition: usize, start: Option<pb::Position>, wait_ms: u32| {
        let request = pb::ConsumeRequest {
            topic: topic_ref(&topic),
            partition: partition as u32,
            position: start,
            max_messages: body.batch_size as u32,
            wait_ms,
        };
        let service = gateway.service.clone();
        async move {
            service
                .consume(Request::new(request))
                .await
                .map(|r| (partition, r.into_inner()))
        }
    };

    // Where each partition starts.
    let mut starts: Vec<Option<pb::Position>> =
        vec![position(pb::position::Position::Earliest(true)); partitions];
    if let Some(ts) = body.since_time_ms {
        // A time in the future counts as now.
        starts.fill(position(pb::position::Position::SinceTimestampMs(
            ts.min(now_ms()),
        )));
    }
    if let Some(id) = &body.after_message_id {
        let invalid = || {
            ApiError::bad_request(format!(
                "after_message_id {id:?} names no message of this topic"
            ))
        };
        let resume = parse_resume_id(id).ok_or_else(invalid)?;
        let p = resume.partition as usize;
        if p >= partitions {
            return Err(invalid());
        }
        let after = position(pb::position::Position::AfterMessageId(message_id(
            resume.partition,
            resume.offset,
        )));
        // The named message must exist: reading after it checks that.
        read(p, after.clone(), 0)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::InvalidArgument => invalid(),
                _ => ApiError::from(s),
            })?;
        match resume.next_offsets {
            Some(next) if next.len() == partitions && next[p] == resume.offset + 1 => {
                for (i, offset) in next.into_iter().enumerate() {
                    starts[i] = position(pb::position::Position::Offset(offset));
                }
            }
            Some(_) => return Err(invalid()),
            None => {
                let at = position(pb::position::Position::Offset(resume.offset));
                let time = read(p, at, 0)
                    .await?
                    .1
                    .messages
                    .first()
                    .map(|m| m.timestamp_ms);
                let others = match time {
                    Some(ts) => position(pb::position::Position::SinceTimestampMs(ts)),
                    None => position(pb::position::Position::Earliest(true)),
                };
                starts.fill(others);
            }
        }
        starts[p] = after;
    }

    let mut responses: Vec<pb::ConsumeResponse> = vec![pb::ConsumeResponse::default(); partitions];
    let mut reads: FuturesUnordered<_> = (0..partitions)
        .map(|p| read(p, starts[p].clone(), 0))
        .collect();
    while let Some(result) = reads.next().await {
        let (p, response) = result?;
        responses[p] = response;
    }
    if body.timeout_secs > 0 && responses.iter().all(|r| r.messages.is_empty()) {
        // Long poll every partition; the first to commit a message answers.
        let wait_ms = (body.timeout_secs * 1000) as u32;
        let mut polls: FuturesUnordered<_> = (0..partitions)
            .map(|p| read(p, starts[p].clone(), wait_ms))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(body.timeout_secs + 5);
        while let Ok(Some(result)) = tokio::time::timeout_at(deadline, polls.next()).await {
            let (p, response) = result?;
            let found = !response.messages.is_empty();
            responses[p] = response;
            if found {
                break;
            }
        }
    }
    Ok(Json(
        json!({ "messages": merge(responses, body.batch_size as usize) }),
    ))
}

/// Merges per-partition reads in time order (ties by partition, then
/// offset, so each partition keeps its own order) and stamps every message
/// with the position after it.
fn merge(responses: Vec<pb::ConsumeResponse>, limit: usize) -> Vec<Value> {
    let mut next: Vec<u64> = responses
        .iter()
        .map(|r| r.messages.first().map_or(r.next_offset, |m| m.offset))
        .collect();
    let mut all: Vec<pb::Message> = responses.into_iter().flat_map(|r| r.messages).collect();
    all.sort_by_key(|m| (m.timestamp_ms, m.partition, m.offset));
    all.into_iter()
        .take(limit)
        .map(|m| {
            if let Some(slot) = next.get_mut(m.partition as usize) {
                *slot = m.offset + 1;
            }
            let payload = serde_json::from_slice(&m.value)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&m.value).into_owned()));
            json!({
                "message_id": resume_id(m.partition, m.offset, &next),
                "payload": payload,
                "time": rfc3339(m.timestamp_ms),
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(partition: u32, offset: u64, ts: i64) -> pb::Message {
        pb::Message {
            partition,
            offset,
            timestamp_ms: ts,
            value: b"{}".to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn resume_ids_round_trip_and_reject_garbage() {
        let id = resume_id(1, 7, &[3, 8, 0]);
        assert_eq!(id, "1-7@3.8.0");
        assert_eq!(
            parse_resume_id(&id).unwrap(),
            ResumeId {
                partition: 1,
                offset: 7,
                next_offsets: Some(vec![3, 8, 0])
            }
        );
        assert_eq!(resume_id(0, 4, &[5]), "0-4");
        assert_eq!(parse_resume_id("0-4").unwrap().next_offsets, None);
        for bad in ["", "x", "1-", "-1", "1-2@", "1-2@a.b", "1-2-3"] {
            assert!(parse_resume_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn merge_orders_by_time_and_cursors_cover_only_what_was_returned() {
        let p0 = pb::ConsumeResponse {
            messages: vec![message(0, 5, 10), message(0, 6, 30)],
            next_offset: 7,
            ..Default::default()
        };
        let p1 = pb::ConsumeResponse {
            messages: vec![message(1, 2, 20), message(1, 3, 40)],
            next_offset: 4,
            ..Default::default()
        };
        let p2 = pb::ConsumeResponse {
            messages: vec![],
            next_offset: 9,
            ..Default::default()
        };
        let merged = merge(vec![p0, p1, p2], 3);
        let ids: Vec<&str> = merged
            .iter()
            .map(|m| m["message_id"].as_str().unwrap())
            .collect();
        // Message (1, 3) was read but not returned: the last cursor still
        // points at it, so resuming re-reads nothing and misses nothing.
        assert_eq!(ids, vec!["0-5@6.2.9", "1-2@6.3.9", "0-6@7.3.9"]);
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
        let ok = parse_body(b"").unwrap();
        assert_eq!((ok.batch_size, ok.timeout_secs), (50, 0));
        let t = parse_body(br#"{"since_time": "1970-01-01T00:00:01.5+00:00"}"#).unwrap();
        assert_eq!(t.since_time_ms, Some(1500));
    }
}
