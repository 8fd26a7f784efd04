//! Push subscriptions over the HTTP gateway: management under
//! /api/subscriptions (admin scope, strict bodies, the gateway's error
//! shape), and a subscription made over HTTP delivering to a loopback
//! endpoint what the AsyncAPI document says it delivers.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use raftstream_node::model::GroupId;
use raftstream_node::model::NodeId;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

use crate::common::TestCluster;
use crate::common::eventually;
use crate::http::Http;
use crate::http::assert_error;
use crate::http::assert_error_naming;
use crate::http::assert_invalid_request;
use crate::http::create_topic;
use crate::receiver::Answer;
use crate::receiver::Receiver;

/// An endpoint on loopback where nothing listens: subscriptions that are
/// only managed, never delivered, point here.
const NOWHERE: &str = "http://127.0.0.1:9/hook";

fn path(id: &str) -> String {
    format!("/api/subscriptions/{id}")
}

async fn create(http: &Http, body: Value) -> Value {
    http.post_created("/api/subscriptions", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_are_created_listed_changed_and_deleted_over_http() {
    let cluster = TestCluster::start(1).await;
    let http = Http::with_topic(&cluster, 1, json!({"name": "orders", "partitions": 2})).await;

    let created = create(
        &http,
        json!({"name": "billing", "topic": "orders", "endpoint": NOWHERE}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sub_"), "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["secret_last_four"], &secret[secret.len() - 4..]);
    assert_eq!(created["topic"], "orders");
    assert_eq!(created["dead_letter_topic"], "orders.dead-letter");
    assert_eq!(created["paused"], false);
    assert_eq!(created["generation"], 0);
    assert_eq!(
        created["settings"],
        json!({"batch_size": 1, "max_attempts": 5, "initial_backoff_ms": 500,
            "max_backoff_ms": 60000, "timeout_ms": 10000, "max_in_flight": 4})
    );
    assert_eq!(created["positions"].as_array().unwrap().len(), 2);

    // The secret is shown once: neither a read nor a list carries it.
    let (status, shown) = http.get(&path(&id)).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["name"], "billing");
    assert!(shown.get("secret").is_none(), "{shown}");
    assert!(!shown.to_string().contains(&secret));
    let (status, listed) = http.get("/api/subscriptions").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert!(!listed.to_string().contains(&secret));

    // Given fields change, the others stay; null removes the filter.
    let (status, updated) = http
        .send(
            Method::PUT,
            &path(&id),
            Some(json!({"name": "billing v2", "settings": {"batch_size": 20},
                "filter": {"pointer": "/type", "equals": "paid"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "billing v2");
    assert_eq!(updated["endpoint"], NOWHERE);
    assert_eq!(updated["settings"]["batch_size"], 20);
    assert_eq!(updated["settings"]["max_attempts"], 5);
    assert_eq!(
        updated["filter"],
        json!({"pointer": "/type", "equals": "paid"})
    );
    let (status, unfiltered) = http
        .send(Method::PUT, &path(&id), Some(json!({"filter": null})))
        .await;
    assert_eq!(status, StatusCode::OK, "{unfiltered}");
    assert!(unfiltered["filter"].is_null(), "{unfiltered}");
    assert_eq!(unfiltered["name"], "billing v2");

    let (status, paused) = http.post(&format!("{}/pause", path(&id)), json!({})).await;
    assert_eq!((status, &paused["paused"]), (StatusCode::OK, &json!(true)));
    let (status, resumed) = http
        .send(Method::POST, &format!("{}/resume", path(&id)), None)
        .await;
    assert_eq!(
        (status, &resumed["paused"]),
        (StatusCode::OK, &json!(false))
    );
    // Every form of `from` replays, each one a new generation.
    for (generation, from) in [
        json!("earliest"),
        json!("latest"),
        json!({"offset": 3}),
        json!({"time": 1_700_000_000_000_i64}),
        json!({"time": "2026-01-02T03:04:05Z"}),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, replayed) = http
            .post(&format!("{}/replay", path(&id)), json!({"from": from}))
            .await;
        assert_eq!(status, StatusCode::OK, "{from}: {replayed}");
        assert_eq!(replayed["generation"], generation as u64 + 1, "{from}");
    }

    let (status, deleted) = http.delete(&path(&id)).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted, json!({"result": "success"}));
    let (status, body) = http.get(&path(&id)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, listed) = http.get("/api/subscriptions").await;
    assert_eq!(listed["data"], json!([]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_unknown_ids_and_missing_rights_are_refused() {
    let cluster = TestCluster::start(1).await;
    let http = Http::with_topic(&cluster, 1, json!({"name": "events"})).await;
    let valid = json!({"name": "n", "topic": "events", "endpoint": NOWHERE});
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };

    // Unknown ids: 404 on every route that names one.
    let unknown = path("sub_nope");
    for (method, route, body) in [
        (Method::GET, unknown.clone(), None),
        (Method::PUT, unknown.clone(), Some(json!({"name": "x"}))),
        (Method::DELETE, unknown.clone(), None),
        (Method::POST, format!("{unknown}/pause"), None),
        (Method::POST, format!("{unknown}/resume"), None),
        (
            Method::POST,
            format!("{unknown}/replay"),
            Some(json!({"from": "earliest"})),
        ),
    ] {
        let (status, answer) = http.send(method.clone(), &route, body).await;
        assert_error(status, &answer, StatusCode::NOT_FOUND, "not_found");
        assert!(
            answer["message"].as_str().unwrap().contains("sub_nope"),
            "{method} {route}: {answer}"
        );
    }
    // A topic that does not exist.
    let (status, body) = http
        .post("/api/subscriptions", with("topic", json!("nope")))
        .await;
    assert_error_naming(status, &body, StatusCode::NOT_FOUND, "not_found", "nope");

    // Bodies are strict: a bad URL, an unknown or missing field, a zero
    // setting, a malformed start.
    let mut missing_topic = valid.clone();
    missing_topic.as_object_mut().unwrap().remove("topic");
    for (body, named) in [
        (with("endpoint", json!("ftp://example.test/")), "endpoint"),
        (with("endpoint", json!("not a url")), "endpoint"),
        (with("endpont", json!(NOWHERE)), "endpont"),
        (missing_topic, "topic"),
        (with("settings", json!({"batch_size": 0})), "batch_size"),
        (with("settings", json!({"retries": 3})), "retries"),
        (
            with("settings", json!({"max_attempts": 1000})),
            "max_attempts",
        ),
        (with("secret", json!("short")), "secret"),
        (with("start", json!("oldest")), "oldest"),
        (with("start", json!({"time": "yesterday"})), "yesterday"),
        (
            with("filter", json!({"pointer": "type", "equals": 1})),
            "pointer",
        ),
    ] {
        let (status, answer) = http.post("/api/subscriptions", body.clone()).await;
        assert_invalid_request(status, &answer, named);
    }
    let (_, listed) = http.get("/api/subscriptions").await;
    assert_eq!(listed["data"], json!([]), "nothing refused was created");

    let created = create(&http, valid.clone()).await;
    let id = created["id"].as_str().unwrap();
    for (route, body, named) in [
        (path(id), json!({"endpoint": "mailto:x@y"}), "endpoint"),
        (path(id), json!({"paused": true}), "paused"),
        (format!("{}/replay", path(id)), json!({}), "from"),
        (
            format!("{}/replay", path(id)),
            json!({"from": "earliest", "to": "latest"}),
            "to",
        ),
    ] {
        let method = if route.ends_with("/replay") {
            Method::POST
        } else {
            Method::PUT
        };
        let (status, answer) = http.send(method, &route, Some(body)).await;
        assert_invalid_request(status, &answer, named);
    }
    let (_, unchanged) = http.get(&path(id)).await;
    assert_eq!(unchanged["endpoint"], NOWHERE);
    assert_eq!(unchanged["generation"], 0);

    // Admin scope, with a token not limited to some topics.
    let (status, body) = http.with_token(None).get("/api/subscriptions").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = http
        .with_token(Some("rst_not-a-token"))
        .post("/api/subscriptions", valid.clone())
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    for token in [
        json!({"name": "writer", "scopes": ["publish", "consume"]}),
        json!({"name": "events admin", "scopes": ["admin"], "topics": ["events"]}),
    ] {
        let made = http.post_created("/api/tokens", token).await;
        let other = http.with_token(made["token"].as_str());
        let (status, body) = other.post("/api/subscriptions", valid.clone()).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
        let (status, body) = other.delete(&path(id)).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    let (status, _) = http.get(&path(id)).await;
    assert_eq!(status, StatusCode::OK, "still there");
    cluster.shutdown().await;
}

/// `doc` with `$ref` to the schema named `name` in its components, so
/// the schema's own references resolve inside the document.
fn validator_of(doc: &Value, name: &str) -> jsonschema::Validator {
    let mut root = doc.clone();
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    jsonschema::validator_for(&root).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_made_over_http_delivers_signed_messages_as_documented() {
    let cluster = TestCluster::start(3).await;
    let http = Http::new(&cluster, 2);
    create_topic(
        &http,
        &cluster,
        json!({"name": "payments", "partitions": 2}),
    )
    .await;
    let secret = Arc::new(Mutex::new(String::new()));
    let receiver = Receiver::start(secret.clone(), |_, _| Answer::Ok).await;
    let created = create(
        &http,
        json!({"name": "ledger", "topic": "payments", "endpoint": receiver.url,
            "secret": "0123456789abcdef-ledger", "start": "earliest",
            "settings": {"batch_size": 3, "initial_backoff_ms": 20}}),
    )
    .await;
    assert_eq!(created["secret"], "0123456789abcdef-ledger");
    *secret.lock().unwrap() = "0123456789abcdef-ledger".into();
    let id = created["id"].as_str().unwrap().to_string();

    // Through another node than the one that took the subscription.
    let publisher = Http::new(&cluster, 3);
    let mut published = Vec::new();
    for n in 0..8 {
        publisher
            .post_ok("/api/v1/topics/payments/publish", json!({"n": n}))
            .await;
        published.push(json!({"n": n}));
    }
    eventually(
        "every message delivered",
        Duration::from_secs(30),
        || async {
            let mut delivered = receiver.accepted_payloads();
            delivered.dedup();
            published
                .iter()
                .all(|p| delivered.contains(p))
                .then_some(())
        },
    )
    .await;

    let (status, asyncapi) = publisher.get("/asyncapi.yaml").await;
    assert_eq!(status, StatusCode::OK);
    let documented = validator_of(&asyncapi, "PushDelivery");
    let received = receiver.received();
    for delivery in &received {
        assert!(delivery.signature_ok, "{:?}", delivery.body);
        assert_eq!(delivery.subscription, id);
        assert_eq!(delivery.attempt, 1, "the endpoint never failed");
        assert!(delivery.offsets.len() <= 3, "batch_size is 3");
        assert!(
            documented.is_valid(&delivery.body),
            "not as documented: {}",
            delivery.body
        );
        assert_eq!(delivery.body["topic"], "payments");
        assert_eq!(delivery.body["subscription_id"], id.as_str());
        // In offset order within each delivery.
        assert!(delivery.offsets.windows(2).all(|w| w[0] < w[1]));
    }
    let headers = &asyncapi["components"]["messages"]["pushDelivery"]["headers"];
    for header in [
        "X-Raftstream-Signature",
        "X-Raftstream-Timestamp",
        "X-Raftstream-Subscription",
        "X-Raftstream-Attempt",
    ] {
        assert!(headers["properties"][header].is_object(), "{header}");
    }

    // The positions reach the end of each partition.
    eventually("the positions at the end", Duration::from_secs(20), || {
        let (http, id) = (&http, id.clone());
        async move {
            let (_, shown) = http.get(&path(&id)).await;
            let positions = shown["positions"].as_array()?.clone();
            positions
                .iter()
                .all(|p| p["high_watermark"] == 0 || p["next_offset"] == p["high_watermark"])
                .then_some(())
        }
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_lists_and_shows_a_subscription_it_has_not_applied_yet() {
    let cluster = TestCluster::start(3).await;
    let leader = eventually("a metadata leader", Duration::from_secs(20), || async {
        let meta = cluster.nodes[&1].node.group(GroupId::META)?;
        meta.leader().map(|(leader, _)| leader.0)
    })
    .await;
    let follower = cluster
        .running_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let to_leader = Http::with_topic(&cluster, leader, json!({"name": "orders"})).await;
    // The follower hears of every metadata change two seconds late.
    cluster
        .links
        .delay(NodeId(leader), NodeId(follower), Duration::from_secs(2));
    let created = create(
        &to_leader,
        json!({"name": "audit", "topic": "orders", "endpoint": NOWHERE}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let applied_on_follower = cluster.nodes[&follower]
        .node
        .with_metadata(|m| m.subscriptions.contains_key(&id))
        .unwrap();
    assert!(
        !applied_on_follower,
        "the delay did not hold the follower back"
    );

    // The follower answers as the metadata leader does, not from its own
    // state, which lacks the subscription.
    let on_follower = Http::new(&cluster, follower);
    let (status, listed) = on_follower.get("/api/subscriptions").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["data"][0]["id"], id.as_str());
    let (status, shown) = on_follower.get(&path(&id)).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["name"], "audit");
    cluster.links.heal();
    cluster.shutdown().await;
}
