//! Fidelity of the HTTP gateway to the Workato Event Streams API: payloads
//! stored and returned byte for byte, one message id format from publish
//! to consume, strict consume requests, Content-Type on publish, the batch
//! body limit, and the bearer scheme matched without regard to case.

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::http;

use crate::common::TestCluster;
use http::Http;
use http::assert_error;
use http::assert_error_naming;
use http::assert_invalid_request;
use http::consume_all;
use http::create_topic;
use http::finish;
use raftstream_node::config::Limits;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

/// A payload serde_json would change if it re-encoded it: keys out of
/// order, a decimal's trailing zero, an integer past u64, an escape and
/// spaces.
const EXACT: &str = r#"{"z":1,"a":[1.50,12345678901234567890123],"e":"\u00e9", "s" : 1e2}"#;

/// POSTs `body` with this Content-Type (none when `None`).
async fn post_bytes(
    http: &Http,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = http.request(Method::POST, path).body(body.to_string());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    finish(request).await
}

/// A consume's answer as the text the gateway sent, unparsed.
async fn consume_text(http: &Http, topic: &str) -> String {
    let response = http
        .request(Method::POST, &format!("/api/v1/topics/{topic}/consume"))
        .json(&json!({"batch_size": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_payloads_are_stored_and_consumed_byte_for_byte() {
    let cluster = TestCluster::start(1).await;
    let http = Http::with_topic(&cluster, 1, json!({"name": "exact"})).await;
    let schema = json!({"type": "object", "properties": {"a": {"type": "array"}}});
    create_topic(
        &http,
        &cluster,
        json!({"name": "exact-typed", "schema": schema}),
    )
    .await;

    for topic in ["exact", "exact-typed"] {
        let (status, ack) = post_bytes(
            &http,
            &format!("/api/v1/topics/{topic}/publish"),
            Some("application/json"),
            EXACT,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{ack}");
        let batch = format!(r#"{{"payloads": [ {EXACT} ,{{"b":[0.10, -0.0]}}]}}"#);
        let (status, acks) = post_bytes(
            &http,
            &format!("/api/v1/batch/topics/{topic}/publish"),
            Some("application/json"),
            &batch,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{acks}");
        assert_eq!(acks["is_partial_error"], false, "{acks}");

        // The consume answer embeds the stored bytes as the payload.
        let text = consume_text(&http, topic).await;
        let embedded = format!(r#""payload":{EXACT},"#);
        assert_eq!(text.matches(&embedded).count(), 2, "{text}");
        assert!(text.contains(r#""payload":{"b":[0.10, -0.0]},"#), "{text}");

        // gRPC returns the same bytes.
        let mut client = cluster.client(1).await;
        let read = common::read_all(&mut client, topic, 0, 3).await;
        let values: Vec<&[u8]> = read.iter().map(|m| m.value.as_ref()).collect();
        assert_eq!(
            values,
            vec![
                EXACT.as_bytes(),
                EXACT.as_bytes(),
                br#"{"b":[0.10, -0.0]}"#.as_slice()
            ]
        );
    }
    cluster.shutdown().await;
}

/// The message ids of a batch publish's answer, in item order.
fn batch_ids(acks: &Value) -> Vec<String> {
    (0..acks["message_ids"].as_object().unwrap().len())
        .map(|i| {
            acks["message_ids"][i.to_string()]["message_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_id_a_publish_returns_is_the_id_a_consumer_sees_and_resumes_after() {
    let cluster = TestCluster::start(1).await;
    let http = Http::with_topic(&cluster, 1, json!({"name": "ids"})).await;

    let mut published = Vec::new();
    let ack = http
        .post_ok("/api/v1/topics/ids/publish", json!({"i": 0}))
        .await;
    published.push(ack["message_id"].as_str().unwrap().to_string());
    let acks = http
        .post_ok(
            "/api/v1/batch/topics/ids/publish",
            json!({"payloads": [{"i": 1}, {"i": 2}, {"i": 3}]}),
        )
        .await;
    published.extend(batch_ids(&acks));

    let consumed = consume_all(&http, "ids", 50).await;
    assert_eq!(ids(&consumed), published);
    // after_message_id takes a publish's id: what follows is the rest.
    for (i, id) in published.iter().enumerate() {
        let page = http
            .post_ok(
                "/api/v1/topics/ids/consume",
                json!({"after_message_id": id}),
            )
            .await;
        assert_eq!(
            ids(page["messages"].as_array().unwrap()),
            published[i + 1..],
            "after {id}"
        );
    }

    // With several partitions a consumed id adds the consumer's position
    // in every partition after the message it names by its publish id.
    create_topic(&http, &cluster, json!({"name": "ids3", "partitions": 3})).await;
    let payloads: Vec<Value> = (0..12).map(|i| json!({"i": i})).collect();
    let acks = http
        .post_ok(
            "/api/v1/batch/topics/ids3/publish",
            json!({"payloads": payloads}),
        )
        .await;
    let mut published = batch_ids(&acks);
    let consumed = consume_all(&http, "ids3", 5).await;
    let mut named: Vec<String> = ids(&consumed)
        .iter()
        .map(|id| id.split('@').next().unwrap().to_string())
        .collect();
    published.sort();
    named.sort();
    assert_eq!(named, published);
    for id in &published {
        let (status, page) = http
            .post(
                "/api/v1/topics/ids3/consume",
                json!({"after_message_id": id}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "after {id}: {page}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_refuses_unknown_fields_and_publish_refuses_bodies_not_declared_json() {
    let cluster = TestCluster::start(1).await;
    let http = Http::with_topic(&cluster, 1, json!({"name": "strict"})).await;
    let ack = http
        .post_ok("/api/v1/topics/strict/publish", json!({"i": 0}))
        .await;
    let first = ack["message_id"].as_str().unwrap().to_string();

    // A misspelt field would replay from the start if it were ignored.
    let (status, body) = http
        .post(
            "/api/v1/topics/strict/consume",
            json!({"after_mesage_id": first}),
        )
        .await;
    assert_invalid_request(status, &body, "after_mesage_id");
    let (status, body) = http
        .post(
            &format!("/api/v1/topics/strict/consume?after_message_id={first}"),
            json!({}),
        )
        .await;
    assert_invalid_request(status, &body, "after_message_id");

    for path in [
        "/api/v1/topics/strict/publish",
        "/api/v1/batch/topics/strict/publish",
    ] {
        let body = if path.contains("batch") {
            r#"{"payloads":[{"i":1}]}"#
        } else {
            r#"{"i":1}"#
        };
        for refused in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            let (status, answer) = post_bytes(&http, path, Some(refused), body).await;
            assert_error(
                status,
                &answer,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            );
        }
        for accepted in [
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/vnd.workato+json"),
            None,
        ] {
            let (status, answer) = post_bytes(&http, path, accepted, body).await;
            assert_eq!(status, StatusCode::OK, "{accepted:?}: {answer}");
        }
    }
    // 1 + 2 × 4 accepted publishes; nothing refused was stored.
    assert_eq!(consume_all(&http, "strict", 50).await.len(), 9);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_publish_takes_bodies_past_one_mib_up_to_its_own_limit() {
    let limits = Limits {
        // Each piece the gateway publishes holds at most one of the
        // payloads below: the batch is stored in several pieces.
        max_batch_bytes: 1024 * 1024,
        max_http_batch_bytes: 4 * 1024 * 1024,
        ..TestCluster::limits()
    };
    let cluster = TestCluster::start_with_limits(1, limits).await;
    let http = Http::with_topic(&cluster, 1, json!({"name": "big"})).await;

    // Three payloads of 700 KB: a 2.1 MB body, and three pieces.
    let filler = "x".repeat(700 * 1000);
    let payloads: Vec<Value> = (0..3).map(|i| json!({"i": i, "f": filler})).collect();
    let acks = http
        .post_ok(
            "/api/v1/batch/topics/big/publish",
            json!({"payloads": payloads}),
        )
        .await;
    assert_eq!(acks["is_partial_error"], false, "{acks}");
    let consumed = consume_all(&http, "big", 50).await;
    let order: Vec<i64> = consumed
        .iter()
        .map(|m| m["payload"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![0, 1, 2]);

    // Over the batch limit: a 413 that names it; a single publish keeps
    // the 1 MiB limit.
    let over_batch_limit: Vec<Value> = (0..7).map(|i| json!({"i": i, "f": filler})).collect();
    for (path, body, limit) in [
        (
            "/api/v1/batch/topics/big/publish",
            json!({ "payloads": over_batch_limit }),
            "4194304",
        ),
        (
            "/api/v1/topics/big/publish",
            json!({ "f": "x".repeat(1024 * 1024) }),
            "1048576",
        ),
    ] {
        let (status, body) = http.post(path, body).await;
        assert_error_naming(
            status,
            &body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            limit,
        );
    }
    // 101 payloads are one too many, however small.
    let too_many: Vec<Value> = (0..101).map(|i| json!({"i": i})).collect();
    let (status, body) = http
        .post(
            "/api/v1/batch/topics/big/publish",
            json!({"payloads": too_many}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(consume_all(&http, "big", 50).await.len(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_bearer_scheme_is_matched_without_regard_to_case() {
    let cluster = TestCluster::start(1).await;
    let admin = Http::new(&cluster, 1);
    let source = admin
        .create_source(json!({"name": "cased", "source_type": "generic", "topic": "cased"}))
        .await;
    cluster.wait_partition_leaders("cased").await;
    let source_id = source["id"].as_str().unwrap();
    let secret = source["secret"].as_str().unwrap();

    let anonymous = admin.with_token(None);
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let (status, body) = finish(
            anonymous
                .request(Method::POST, "/api/v1/topics/cased/publish")
                .header("authorization", format!("{scheme} {}", common::ADMIN_TOKEN))
                .json(&json!({"scheme": scheme})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body}");
        let (status, body) = finish(
            anonymous
                .request(Method::POST, &format!("/api/ingest/webhook/{source_id}"))
                .header("authorization", format!("{scheme} {secret}"))
                .json(&json!({"delivered_with": scheme})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{scheme}: {body}");
    }
    for malformed in [
        format!("Basic {}", common::ADMIN_TOKEN),
        format!("Bearer{}", common::ADMIN_TOKEN),
        "Bearer ".to_string(),
    ] {
        let (status, body) = finish(
            anonymous
                .request(Method::POST, "/api/v1/topics/cased/publish")
                .header("authorization", malformed.clone())
                .json(&json!({})),
        )
        .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(consume_all(&admin, "cased", 50).await.len(), 8);
    cluster.shutdown().await;
}
