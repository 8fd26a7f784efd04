//! Webhook ingestion over real HTTP against a 3-node cluster: sources and
//! their secrets, signatures and their timestamps, idempotent redelivery,
//! the Workato normaliser, flow webhooks, and source status across a
//! restart.

#![allow(clippy::unwrap_used)]

use crate::http;

use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use crate::common::TestCluster;
use crate::common::eventually;
use hmac::Mac;
use http::Http;
use http::assert_error;
use http::consume_all;
use http::finish;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

/// Delivers `body` to a source's receiver with these extra headers.
async fn deliver(
    http: &Http,
    source_id: &str,
    secret: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, Value) {
    let mut request = http
        .with_token(secret)
        .request(Method::POST, &format!("/api/ingest/webhook/{source_id}"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    finish(request).await
}

/// The hex HMAC-SHA256 of `"{timestamp}.{body}"`, written here rather
/// than taken from the node so that a mistake there cannot hide in both.
fn sign(secret: &str, timestamp_s: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp_s}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn now_s() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since_epoch.as_secs()).unwrap()
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

/// LangWatch's event id, `envelope-<unix-ms>-<random8>`, made a moment
/// ago.
fn assert_langwatch_event_id(event_id: &str) {
    let parts: Vec<&str> = event_id.split('-').collect();
    let [prefix, ms, random] = parts[..] else {
        panic!("{event_id}");
    };
    assert_eq!(prefix, "envelope", "{event_id}");
    let ms: i64 = ms.parse().unwrap_or_else(|_| panic!("{event_id}"));
    assert!((ms / 1000 - now_s()).abs() < 300, "{event_id}");
    assert!(
        random.len() == 8 && random.chars().all(|c| c.is_ascii_hexdigit()),
        "{event_id}"
    );
}

/// The payloads stored in a topic, oldest first.
async fn events(http: &Http, topic: &str) -> Vec<Value> {
    consume_all(http, topic, 50)
        .await
        .into_iter()
        .map(|m| m["payload"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_are_authenticated_signed_deduplicated_and_durable() {
    let cluster = TestCluster::start(3).await;
    let admin = Http::new(&cluster, 2);
    let source = admin
        .create_source(json!({"name": "billing", "source_type": "generic", "topic": "hooks"}))
        .await;
    let id = text(&source, "id").to_string();
    let secret = text(&source, "secret").to_string();
    assert!(
        secret.starts_with("rsi_") && secret.len() >= 4 + 43,
        "{secret}"
    );
    assert_eq!(
        text(&source, "secret_last_four"),
        &secret[secret.len() - 4..]
    );
    assert_eq!(text(&source, "status"), "awaiting_first_event");
    assert_eq!(text(&source, "topic"), "hooks");
    assert!(
        text(&source, "webhook_url").ends_with(&format!("/api/ingest/webhook/{id}")),
        "{source}"
    );
    cluster.wait_partition_leaders("hooks").await;

    // The secret is shown once: get and list show its last four only.
    let (status, shown) = admin.get(&format!("/api/ingest/sources/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(shown.get("secret").is_none(), "{shown}");
    assert_eq!(shown["secret_last_four"], source["secret_last_four"]);

    // Through another node than the one that created it.
    let receiver = Http::new(&cluster, 3);
    let body = br#"{"order": 17, "total": 12.50}"#;
    let (status, missing) = deliver(&receiver, &id, None, &[], body).await;
    assert_error(status, &missing, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, wrong) = deliver(&receiver, &id, Some("rsi_wrong"), &[], body).await;
    assert_error(status, &wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, unknown) = deliver(&receiver, "src_nope", Some(&secret), &[], body).await;
    assert_error(status, &unknown, StatusCode::NOT_FOUND, "not_found");
    let (status, not_json) = deliver(&receiver, &id, Some(&secret), &[], b"{oops").await;
    assert_error(
        status,
        &not_json,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let oversize = vec![b' '; 1024 * 1024 + 1];
    let (status, too_big) = deliver(&receiver, &id, Some(&secret), &[], &oversize).await;
    assert_error(
        status,
        &too_big,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(
        events(&admin, "hooks").await.is_empty(),
        "refused deliveries store nothing"
    );

    let (status, accepted) = deliver(&receiver, &id, Some(&secret), &[], body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["accepted"], true);
    assert_eq!(accepted["bytes"], body.len());
    let event_id = text(&accepted, "eventId").to_string();
    assert_langwatch_event_id(&event_id);

    // Acknowledged means committed: every node reads it at once.
    for node in [1, 2, 3] {
        let stored = events(&Http::new(&cluster, node), "hooks").await;
        assert_eq!(stored.len(), 1, "node {node}");
        let event = &stored[0];
        assert_eq!(event["eventId"], event_id.as_str());
        assert_eq!(event["sourceId"], id.as_str());
        assert_eq!(event["sourceType"], "generic");
        assert_eq!(event["tenantId"], "default");
        assert_eq!(event["eventType"], "agent.action");
        // LangWatch's `rawPayload` is the body as received, as a string;
        // `payload` is the same body as JSON.
        assert_eq!(event["rawPayload"], std::str::from_utf8(body).unwrap());
        assert_eq!(event["payload"], json!({"order": 17, "total": 12.5}));
        assert!(event["costUsd"].is_number(), "{event}");
    }
    let (_, shown) = admin.get(&format!("/api/ingest/sources/{id}")).await;
    assert_eq!(shown["status"], "active", "{shown}");
    assert_eq!(shown["event_count"], 1);
    assert!(shown["last_event_at"].is_string(), "{shown}");

    // A redelivery with the same Idempotency-Key stores nothing new.
    let keyed = [("idempotency-key", "delivery-42")];
    let (_, first) = deliver(&receiver, &id, Some(&secret), &keyed, br#"{"n": 1}"#).await;
    let (status, again) = deliver(
        &Http::new(&cluster, 1),
        &id,
        Some(&secret),
        &keyed,
        br#"{"n": 1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(first["eventId"], again["eventId"]);
    assert_ne!(first["eventId"], event_id.as_str());
    assert_eq!(events(&admin, "hooks").await.len(), 2);
    let (status, bad_key) = deliver(
        &receiver,
        &id,
        Some(&secret),
        &[("idempotency-key", &"k".repeat(300))],
        b"{}",
    )
    .await;
    assert_error(status, &bad_key, StatusCode::BAD_REQUEST, "invalid_request");

    // Signatures: a source with an HMAC secret takes only signed bodies,
    // signed with the time they were sent.
    let hmac_secret = "whsec-0123456789abcdef";
    let signed = admin
        .create_source(
            json!({"name": "workato prod", "source_type": "workato", "topic": "hooks",
               "hmac_secret": hmac_secret}),
        )
        .await;
    let (signed_id, signed_secret) = (text(&signed, "id"), text(&signed, "secret"));
    assert_eq!(signed["hmac"], true);
    let body = br#"{"event": "job.completed", "recipe_id": 5}"#;
    let timestamp_s = now_s();
    let timestamp = timestamp_s.to_string();
    let good = sign(hmac_secret, timestamp_s, body);
    let prefixed = format!("sha256={good}");
    let stripe_form = format!("t={timestamp},v1={good}");
    let other_time = sign(hmac_secret, timestamp_s - 1, body);
    let tampered = br#"{"event": "job.completed", "recipe_id": 6}"#;
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u8], StatusCode);
    let cases: [Case; 8] = [
        (
            &[
                ("x-workato-signature", &good),
                ("x-workato-timestamp", &timestamp),
            ],
            body,
            StatusCode::ACCEPTED,
        ),
        (
            &[
                ("x-workato-signature", &prefixed),
                ("x-workato-timestamp", &timestamp),
            ],
            body,
            StatusCode::ACCEPTED,
        ),
        (
            &[("x-workato-signature", &stripe_form)],
            body,
            StatusCode::ACCEPTED,
        ),
        (&[], body, StatusCode::UNAUTHORIZED),
        (
            &[("x-workato-signature", &good)],
            body,
            StatusCode::UNAUTHORIZED,
        ),
        (
            &[
                (
                    "x-workato-signature",
                    &sign("another secret", timestamp_s, body),
                ),
                ("x-workato-timestamp", &timestamp),
            ],
            body,
            StatusCode::UNAUTHORIZED,
        ),
        (
            &[
                ("x-workato-signature", &other_time),
                ("x-workato-timestamp", &timestamp),
            ],
            body,
            StatusCode::UNAUTHORIZED,
        ),
        (
            &[("x-workato-signature", &stripe_form)],
            tampered,
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (headers, body, expected) in cases {
        let (status, answer) =
            deliver(&receiver, signed_id, Some(signed_secret), headers, body).await;
        assert_eq!(status, expected, "{headers:?}: {answer}");
    }
    assert_eq!(events(&admin, "hooks").await.len(), 5);

    // Rotation: the old secret stops working at once, the new one works.
    let (status, rotated) = admin
        .post(
            &format!("/api/ingest/sources/{id}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = text(&rotated, "secret");
    assert_ne!(new_secret, secret);
    assert_eq!(
        text(&rotated, "secret_last_four"),
        &new_secret[new_secret.len() - 4..]
    );
    assert_eq!(rotated["status"], "active");
    for node in [1, 2, 3] {
        let http = Http::new(&cluster, node);
        let (status, old) = deliver(&http, &id, Some(&secret), &[], b"{}").await;
        assert_error(status, &old, StatusCode::UNAUTHORIZED, "unauthorized");
        let (status, new) = deliver(&http, &id, Some(new_secret), &[], b"{}").await;
        assert_eq!(status, StatusCode::ACCEPTED, "node {node}: {new}");
    }

    let (status, list) = admin.get("/api/ingest/sources").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| text(s, "id"))
        .collect();
    assert!(
        listed.contains(&id.as_str()) && listed.contains(&signed_id),
        "{list}"
    );
    assert!(
        list.to_string().find("rsi_").is_none(),
        "no secret is listed"
    );

    // Admin routes need an admin token.
    let publisher = admin.with_token(Some(&secret));
    let (status, denied) = publisher.get("/api/ingest/sources").await;
    assert_error(status, &denied, StatusCode::UNAUTHORIZED, "unauthorized");

    let (status, _) = admin.delete(&format!("/api/ingest/sources/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, gone) = admin.get(&format!("/api/ingest/sources/{id}")).await;
    assert_error(status, &gone, StatusCode::NOT_FOUND, "not_found");
    let (status, gone) = deliver(&receiver, &id, Some(new_secret), &[], b"{}").await;
    assert_error(status, &gone, StatusCode::NOT_FOUND, "not_found");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_deliveries_and_short_hmac_secrets_are_refused() {
    let cluster = TestCluster::start(3).await;
    let admin = Http::new(&cluster, 1);

    // A secret short enough to brute-force from one delivery is refused,
    // and neither the source nor the topic it named is created.
    let (status, refused) = admin
        .post(
            "/api/ingest/sources",
            json!({"name": "weak", "source_type": "generic", "topic": "weak-hooks",
                   "hmac_secret": "0123456789abcde"}),
        )
        .await;
    assert_error(status, &refused, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        text(&refused, "message").contains("at least 16 bytes"),
        "{refused}"
    );
    let (status, list) = admin.get("/api/ingest/sources").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["data"], json!([]), "{list}");
    let (status, topic) = admin.get("/api/event_streams/topics/weak-hooks").await;
    assert_error(status, &topic, StatusCode::NOT_FOUND, "not_found");

    let hmac_secret = "0123456789abcdef";
    let source = admin
        .create_source(
            json!({"name": "replays", "source_type": "generic", "topic": "replay-hooks",
               "hmac_secret": hmac_secret}),
        )
        .await;
    let (id, secret) = (text(&source, "id"), text(&source, "secret"));
    cluster.wait_partition_leaders("replay-hooks").await;

    // Deliveries captured ten minutes ago, or signed by a clock ten
    // minutes fast, are authentic but outside the tolerance.
    let body = br#"{"transfer": 991, "amount": 5000}"#;
    for skew_s in [-600, 600] {
        let timestamp_s = now_s() + skew_s;
        let signature = sign(hmac_secret, timestamp_s, body);
        let timestamp = timestamp_s.to_string();
        let stripe_form = format!("t={timestamp},v1={signature}");
        let header_forms: [&[(&str, &str)]; 2] = [
            &[
                ("x-workato-signature", &signature),
                ("x-workato-timestamp", &timestamp),
            ],
            &[("x-workato-signature", &stripe_form)],
        ];
        for node in [1, 2, 3] {
            for headers in header_forms {
                let http = Http::new(&cluster, node);
                let (status, replay) = deliver(&http, id, Some(secret), headers, body).await;
                assert_error(status, &replay, StatusCode::UNAUTHORIZED, "unauthorized");
                assert_eq!(
                    text(&replay, "message"),
                    "X-Workato-Timestamp is outside the 300 s tolerance; \
                     the delivery may be a replay",
                    "node {node}, skew {skew_s} s"
                );
            }
        }
    }
    assert!(
        events(&admin, "replay-hooks").await.is_empty(),
        "replays store nothing"
    );

    // The same delivery signed now is taken through every node, so the
    // timestamp survives being forwarded to the partition's leader.
    for node in [1, 2, 3] {
        let timestamp_s = now_s();
        let signature = sign(hmac_secret, timestamp_s, body);
        let headers = [
            ("x-workato-signature", signature.as_str()),
            ("x-workato-timestamp", &timestamp_s.to_string()),
        ];
        let (status, accepted) =
            deliver(&Http::new(&cluster, node), id, Some(secret), &headers, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "node {node}: {accepted}");
    }
    assert_eq!(events(&admin, "replay-hooks").await.len(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workato_payloads_are_normalised_and_flows_publish_requests() {
    let cluster = TestCluster::start(3).await;
    let admin = Http::new(&cluster, 1);
    let source = admin
        .create_source(
            json!({"name": "recipes", "source_type": "workato", "topic": "workato-events",
               "tenant_id": "acme"}),
        )
        .await;
    let (id, secret) = (text(&source, "id"), text(&source, "secret"));
    cluster.wait_partition_leaders("workato-events").await;
    let deliveries = [
        json!({"event": "recipe.started", "recipe_id": 12, "user": {"email": "ana@example.com"},
               "timestamp": "2024-03-01T09:30:00Z", "data": {"trigger": "new_row"}}),
        json!({"event": "job.failed", "recipe_id": "12", "job_id": "j-77",
               "user_email": "bo@example.com", "timestamp": 1_709_285_400}),
        json!({"event": "connection.error", "connection_id": 9,
               "account": {"email": "svc@example.com"}, "data": {"error": "401"}}),
        json!({"data": {"note": "no event, no ids, no time"}}),
    ];
    for delivery in &deliveries {
        let body = serde_json::to_vec(delivery).unwrap();
        let (status, answer) = deliver(&Http::new(&cluster, 2), id, Some(secret), &[], &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    let stored = events(&admin, "workato-events").await;
    assert_eq!(stored.len(), 4);
    let fields = |e: &Value| {
        [
            "eventType",
            "action",
            "target",
            "actor",
            "eventTimestamp",
            "tenantId",
        ]
        .map(|f| e[f].as_str().unwrap().to_string())
    };
    assert_eq!(
        fields(&stored[0]),
        [
            "api.call",
            "recipe.started",
            "recipe:12",
            "ana@example.com",
            "2024-03-01T09:30:00Z",
            "acme"
        ]
    );
    assert_eq!(
        fields(&stored[1]),
        [
            "api.call",
            "job.failed",
            "recipe:12",
            "bo@example.com",
            "2024-03-01T09:30:00Z",
            "acme"
        ]
    );
    let connection = fields(&stored[2]);
    assert_eq!(
        connection[..4],
        [
            "auth.action",
            "connection.error",
            "connection:9",
            "svc@example.com"
        ]
    );
    // No timestamp in the payload: the time it was received, which is now.
    assert!(
        connection[4].starts_with("20") && connection[4].as_str() > "2025",
        "{connection:?}"
    );
    let empty = fields(&stored[3]);
    assert_eq!(empty[..4], ["agent.action", "", "", ""]);
    for (event, delivery) in stored.iter().zip(&deliveries) {
        assert_eq!(event["rawPayload"], delivery.to_string());
        assert_eq!(&event["payload"], delivery);
        assert_eq!(event["sourceType"], "workato");
        assert_langwatch_event_id(text(event, "eventId"));
    }

    // A flow publishes the request itself, less its credentials.
    let flow = admin
        .create_source(json!({"name": "orders flow", "source_type": "flow", "topic": "flow-in"}))
        .await;
    let (flow_id, flow_secret) = (text(&flow, "id"), text(&flow, "secret"));
    assert!(text(&flow, "webhook_url").ends_with(&format!("/webhook/flow/{flow_id}")));
    cluster.wait_partition_leaders("flow-in").await;
    let receiver = Http::new(&cluster, 3).with_token(Some(flow_secret));
    let (status, posted) = finish(
        receiver
            .request(
                Method::POST,
                &format!("/webhook/flow/{flow_id}?step=1&src=crm"),
            )
            .header("content-type", "application/json")
            .header("x-request-id", "r-1")
            .header("x-hub-signature", "sha1=abc")
            .body(r#"{"order": 5}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
    let (status, got) =
        finish(receiver.request(Method::GET, &format!("/webhook/flow/{flow_id}?ping=yes"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    let (status, unauthorized) = finish(
        Http::new(&cluster, 3)
            .with_token(Some("rsi_wrong"))
            .request(Method::GET, &format!("/webhook/flow/{flow_id}")),
    )
    .await;
    assert_error(
        status,
        &unauthorized,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // A non-flow source is not a flow, and a flow takes no plain deliveries.
    let (status, not_flow) = finish(
        Http::new(&cluster, 3)
            .with_token(Some(secret))
            .request(Method::GET, &format!("/webhook/flow/{id}")),
    )
    .await;
    assert_error(
        status,
        &not_flow,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let (status, plain) = deliver(
        &Http::new(&cluster, 3),
        flow_id,
        Some(flow_secret),
        &[],
        b"{}",
    )
    .await;
    assert_error(status, &plain, StatusCode::BAD_REQUEST, "invalid_request");

    let requests = events(&admin, "flow-in").await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["method"], "POST");
    assert_eq!(requests[0]["body"], json!({"order": 5}));
    assert_eq!(requests[0]["query"], json!({"step": "1", "src": "crm"}));
    assert_eq!(requests[0]["headers"]["x-request-id"], "r-1");
    let headers = requests[0]["headers"].as_object().unwrap();
    assert!(!headers.contains_key("authorization"), "{headers:?}");
    assert!(!headers.contains_key("x-hub-signature"), "{headers:?}");
    assert_eq!(requests[1]["method"], "GET");
    assert_eq!(requests[1]["body"], Value::Null);
    assert_eq!(requests[1]["query"], json!({"ping": "yes"}));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_status_and_idempotency_survive_a_full_restart() {
    let mut cluster = TestCluster::start(3).await;
    let admin = Http::new(&cluster, 1);
    let source = admin
        .create_source(
            json!({"name": "restart", "source_type": "generic", "topic": "durable-hooks"}),
        )
        .await;
    let id = text(&source, "id").to_string();
    let secret = text(&source, "secret").to_string();
    cluster.wait_partition_leaders("durable-hooks").await;
    let keyed = [("idempotency-key", "once")];
    let (status, first) = deliver(&admin, &id, Some(&secret), &keyed, br#"{"a": 1}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");

    for node in [1, 2, 3] {
        cluster.stop(node).await;
    }
    for node in [1, 2, 3] {
        cluster.restart(node).await;
    }
    cluster.wait_ready().await;
    cluster.wait_partition_leaders("durable-hooks").await;

    let admin = Http::new(&cluster, 2);
    let shown = eventually(
        "source counters after restart",
        Duration::from_secs(20),
        || async {
            let (status, shown) = admin.get(&format!("/api/ingest/sources/{id}")).await;
            (status == StatusCode::OK && shown["status"] != "unknown").then_some(shown)
        },
    )
    .await;
    assert_eq!(shown["status"], "active", "{shown}");
    assert_eq!(shown["event_count"], 1);
    let (status, again) = deliver(&admin, &id, Some(&secret), &keyed, br#"{"a": 1}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["eventId"], first["eventId"]);
    assert_eq!(events(&admin, "durable-hooks").await.len(), 1);
    cluster.shutdown().await;
}
