//! A push subscription's endpoint on loopback: an HTTP server that records
//! each delivery, checks its signature and answers as the test tells it
//! (take it, fail, or hang past the delivery's timeout). Node tests only:
//! it runs on axum, which the client crate's tests do not have.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::StatusCode;

/// What the receiver does with one request, by the order it arrived in.
#[derive(Clone, Copy)]
pub enum Answer {
    Ok,
    Fail,
    /// Answers only after the delivery's timeout has passed.
    Hang,
}

/// One request the receiver took.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: u32,
    pub offsets: Vec<u64>,
    pub payloads: Vec<serde_json::Value>,
    /// Answered 2xx.
    pub accepted: bool,
    pub signature_ok: bool,
    /// The whole body, as JSON.
    pub body: serde_json::Value,
    /// `X-Raftstream-Subscription` and `X-Raftstream-Attempt`.
    pub subscription: String,
    pub attempt: u32,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts an HTTP endpoint on loopback; `answer` decides each
    /// request's fate from its arrival number (from 0) and its body. The
    /// signature is checked against `secret` as it is when the request
    /// arrives (a test learns the secret from the creation's answer).
    pub async fn start(
        secret: Arc<Mutex<String>>,
        answer: impl Fn(usize, &serde_json::Value) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let answer = Arc::new(answer);
        let handler = move |headers: HeaderMap, body: axum::body::Bytes| {
            let (log, answer, secret) = (log.clone(), answer.clone(), secret.clone());
            async move {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let header = |name: &str| headers[name].to_str().unwrap().to_string();
                let timestamp: i64 = header("x-raftstream-timestamp").parse().unwrap();
                let expected = format!(
                    "v1={}",
                    raftstream_node::ingest::signature::sign(
                        secret.lock().unwrap().as_bytes(),
                        timestamp,
                        &body
                    )
                );
                let signature_ok = header("x-raftstream-signature") == expected;
                let messages = json["messages"].as_array().unwrap();
                let arrival = log.lock().unwrap().len();
                let fate = answer(arrival, &json);
                let mut entry = Received {
                    partition: json["partition"].as_u64().unwrap() as u32,
                    offsets: messages
                        .iter()
                        .map(|m| m["offset"].as_u64().unwrap())
                        .collect(),
                    payloads: messages.iter().map(|m| m["payload"].clone()).collect(),
                    accepted: false,
                    signature_ok,
                    subscription: header("x-raftstream-subscription"),
                    attempt: header("x-raftstream-attempt").parse().unwrap(),
                    body: json.clone(),
                };
                match fate {
                    Answer::Ok => {
                        entry.accepted = true;
                        log.lock().unwrap().push(entry);
                        StatusCode::NO_CONTENT
                    }
                    Answer::Fail => {
                        log.lock().unwrap().push(entry);
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    Answer::Hang => {
                        log.lock().unwrap().push(entry);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        StatusCode::OK
                    }
                }
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The offsets the receiver accepted in `partition`, in arrival order.
    pub fn accepted_offsets(&self, partition: u32) -> Vec<u64> {
        self.received()
            .iter()
            .filter(|r| r.accepted && r.partition == partition)
            .flat_map(|r| r.offsets.clone())
            .collect()
    }

    pub fn accepted_payloads(&self) -> Vec<serde_json::Value> {
        self.received()
            .iter()
            .filter(|r| r.accepted)
            .flat_map(|r| r.payloads.clone())
            .collect()
    }
}
