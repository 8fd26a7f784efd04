//! Platform event channels: what the cluster did, published to the
//! `platform.*` topics and read through the ordinary consume route and the
//! per-flow and per-workspace views.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

use crate::common::TestCluster;
use crate::common::at_offset;
use crate::common::consume_now;
use crate::common::eventually;
use crate::common::eventually_read;
use crate::http::Http;
use crate::http::assert_error;
use crate::http::create_topic;
use crate::http::finish;
use crate::receiver::Answer;
use crate::receiver::Receiver;

/// Every event a consume route (`path`) returns, from the start, paging
/// with `after_message_id`; `None` while the channel's topic is missing.
async fn events(http: &Http, path: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({"batch_size": 50});
        if let Some(id) = &after {
            body["after_message_id"] = json!(id);
        }
        let (status, page) = http.post(path, body).await;
        if status == StatusCode::NOT_FOUND {
            return all;
        }
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        let messages = page["messages"].as_array().unwrap().clone();
        let Some(last) = messages.last() else {
            return all;
        };
        after = Some(last["message_id"].as_str().unwrap().to_string());
        all.extend(messages.into_iter().map(|m| m["payload"].clone()));
    }
}

/// Waits for the first event of type `kind` in the channel `topic` whose
/// detail `field` is `value`.
async fn first_event(http: &Http, topic: &str, kind: &str, field: &str, value: &str) -> Value {
    let path = format!("/api/v1/topics/{topic}/consume");
    eventually(
        &format!("{kind} with {field} {value} in {topic}"),
        Duration::from_secs(30),
        || async {
            events(http, &path)
                .await
                .into_iter()
                .find(|e| e["type"] == kind && e["details"][field] == value)
        },
    )
    .await
}

/// Reads the channel at `path` (see [`events`]) until what it holds
/// satisfies `done` (`what` names that, should it never happen).
async fn events_when(
    http: &Http,
    path: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    eventually(what, Duration::from_secs(30), || async {
        let seen = events(http, path).await;
        done(&seen).then_some(seen)
    })
    .await
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activity_is_published_and_read_by_workspace_and_platform_topics_are_reserved() {
    let cluster = TestCluster::start_with_platform_events(3).await;
    let http = Http::with_topic(&cluster, 2, json!({"name": "orders"})).await;

    let created = first_event(
        &http,
        "platform.activity",
        "topic.created",
        "name",
        "orders",
    )
    .await;
    for field in ["id", "time", "node_id", "cluster_id", "flow_id", "details"] {
        assert!(created.get(field).is_some(), "{field} missing: {created}");
    }
    // The channel is a topic like any other: gRPC reads the same event.
    let grpc = cluster.client(1).await;
    eventually_read(
        &grpc,
        "the same event over gRPC",
        Duration::from_secs(30),
        consume_now("platform.activity", 0, at_offset(0), 1000),
        |read| {
            read.messages
                .iter()
                .any(|m| serde_json::from_slice::<Value>(&m.value).ok().as_ref() == Some(&created))
                .then_some(())
        },
    )
    .await;
    let workspace = created["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(created["cluster_id"], workspace.as_str());

    let mine = events(
        &http,
        &format!("/api/v1/workspace/{workspace}/activity/consume"),
    )
    .await;
    assert!(mine.contains(&created), "{mine:?}");
    let other = events(&http, "/api/v1/workspace/elsewhere/activity/consume").await;
    assert!(other.is_empty(), "{other:?}");

    // The channels are the cluster's: read-only to users.
    for (path, body) in [
        (
            "/api/v1/topics/platform.activity/publish",
            json!({"forged": true}),
        ),
        (
            "/api/event_streams/topics",
            json!({"name": "platform.mine"}),
        ),
    ] {
        let (status, body) = http.post(path, body).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    let forged = events(&http, "/api/v1/topics/platform.activity/consume").await;
    assert!(forged.iter().all(|e| e.get("forged").is_none()));

    // A payload the topic's schema refuses is an error event, whichever
    // route refused it (the HTTP gateway checks schemas itself).
    let schema = json!({"type": "object", "required": ["id"]});
    create_topic(&http, &cluster, json!({"name": "typed", "schema": schema})).await;
    let (status, body) = http
        .post("/api/v1/topics/typed/publish", json!({"no_id": 1}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "schema_mismatch");
    let rejected = first_event(
        &http,
        "platform.errors",
        "schema.rejected",
        "topic",
        "typed",
    )
    .await;
    assert_eq!(rejected["details"]["rejected"], 1, "{rejected}");
    assert!(
        rejected["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("id"),
        "{rejected}"
    );

    // Each partition's first leader reports the leadership it took.
    let leader = first_event(
        &http,
        "platform.activity",
        "leader.changed",
        "topic",
        "orders",
    )
    .await;
    assert_eq!(leader["details"]["partition"], 0, "{leader}");
    assert!(
        (1..=3).contains(&leader["details"]["leader"].as_u64().unwrap()),
        "{leader}"
    );

    // A webhook delivery with the wrong secret is an error event of the
    // source's flow.
    let source = http
        .create_source(json!({"name": "billing", "source_type": "generic", "topic": "orders"}))
        .await;
    let source_id = source["id"].as_str().unwrap();
    let forged = http
        .with_token(Some("not-the-source-secret"))
        .request(Method::POST, &format!("/api/ingest/webhook/{source_id}"))
        .header("content-type", "application/json")
        .body("{}");
    let (status, body) = finish(forged).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let refused = first_event(
        &http,
        "platform.errors",
        "webhook.rejected",
        "source_id",
        source_id,
    )
    .await;
    assert_eq!(refused["flow_id"], source_id, "{refused}");
    first_event(
        &http,
        "platform.activity",
        "source.created",
        "source_id",
        source_id,
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flow_view_shows_its_own_delivery_attempts_and_errors() {
    let cluster = TestCluster::start_with_platform_events(1).await;
    let http = Http::with_topic(&cluster, 1, json!({"name": "payments"})).await;
    let secret = Arc::new(Mutex::new("0123456789abcdef-flow".to_string()));
    // The first request fails; every later one is taken.
    let receiver = Receiver::start(
        secret,
        |n, _| if n == 0 { Answer::Fail } else { Answer::Ok },
    )
    .await;
    let created = http
        .post_created(
            "/api/subscriptions",
            json!({"name": "ledger", "topic": "payments", "endpoint": receiver.url,
                "secret": "0123456789abcdef-flow", "start": "earliest",
                "settings": {"initial_backoff_ms": 20}}),
        )
        .await;
    let flow = created["id"].as_str().unwrap().to_string();
    http.post_ok("/api/v1/topics/payments/publish", json!({"amount": 5}))
        .await;

    let executions_path = format!("/api/v1/flow/{flow}/execution/consume");
    let executions = events_when(
        &http,
        &executions_path,
        "a failed attempt 1 and a successful attempt 2",
        |seen| {
            let attempted = |kind, attempt: u64| {
                of_type(seen, kind)
                    .iter()
                    .any(|e| e["details"]["attempt"] == attempt)
            };
            attempted("delivery.failed", 1) && attempted("delivery.succeeded", 2)
        },
    )
    .await;
    assert!(executions.iter().all(|e| e["flow_id"] == flow.as_str()));
    for succeeded in of_type(&executions, "delivery.succeeded") {
        assert!(succeeded["details"]["latency_ms"].is_u64(), "{succeeded}");
    }

    // Each channel is its own topic and publish: the errors channel may
    // lag the executions channel, so it is read until its event shows.
    let errors_path = format!("/api/v1/flow/{flow}/error/consume");
    let errors = events_when(
        &http,
        &errors_path,
        "the failed attempt on the errors channel",
        |seen| !of_type(seen, "delivery.failed").is_empty(),
    )
    .await;
    let failure = of_type(&errors, "delivery.failed");
    assert_eq!(failure.len(), 1, "{errors:?}");
    assert!(
        failure[0]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{}",
        failure[0]
    );
    let other = events(&http, "/api/v1/flow/sub_other/execution/consume").await;
    assert!(other.is_empty(), "{other:?}");
    cluster.shutdown().await;
}
