//! A small HTTP client for the gateway tests: bearer auth, JSON bodies,
//! and the error shape every failure must have.

#![allow(dead_code, clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

use crate::common::TestCluster;

pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Http {
    /// A client of node `node`'s gateway: HTTPS trusting the cluster's CA
    /// when the cluster is on TLS.
    pub fn new(cluster: &TestCluster, node: u64) -> Http {
        let addr = cluster.configs[&node].http_addr;
        let (client, base) = match &cluster.certs {
            None => (reqwest::Client::new(), format!("http://{addr}")),
            Some(certs) => {
                let ca =
                    reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).unwrap()).unwrap();
                let client = reqwest::Client::builder()
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(ca)
                    .build()
                    .unwrap();
                (client, format!("https://{addr}"))
            }
        };
        Http {
            client,
            base,
            token: Some(crate::common::ADMIN_TOKEN.into()),
        }
    }

    /// A client of node `node`'s gateway, through which the topic `topic`
    /// describes has been created ([`create_topic`]).
    pub async fn with_topic(cluster: &TestCluster, node: u64, topic: Value) -> Http {
        let http = Http::new(cluster, node);
        create_topic(&http, cluster, topic).await;
        http
    }

    pub fn with_token(&self, token: Option<&str>) -> Http {
        Http {
            client: self.client.clone(),
            base: self.base.clone(),
            token: token.map(String::from),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        finish(request).await
    }

    /// A request with this client's bearer token, for headers of one's own.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// A POST that must succeed with 200; answers the body.
    pub async fn post_ok(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    /// A POST that must create something (201); answers the body.
    pub async fn post_created(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer
    }

    /// Creates an ingest source as `body` describes it; answers the source,
    /// its secret included.
    pub async fn create_source(&self, body: Value) -> Value {
        self.post_created("/api/ingest/sources", body).await
    }

    pub async fn raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        finish(self.request(reqwest::Method::POST, path).body(body)).await
    }
}

/// Creates a topic through `http` (the Workato-shaped route) and waits
/// until each of its partitions has a leader; answers the created topic.
pub async fn create_topic(http: &Http, cluster: &TestCluster, body: Value) -> Value {
    let (status, topic) = http.post("/api/event_streams/topics", body).await;
    assert_eq!(status, StatusCode::OK, "{topic}");
    cluster
        .wait_partition_leaders(topic["name"].as_str().unwrap())
        .await;
    topic
}

/// Every error body is {"message", "code"}.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// [`assert_error`], with a message that names `named` (the field, value or
/// limit the caller got wrong).
pub fn assert_error_naming(
    status: StatusCode,
    body: &Value,
    expected: StatusCode,
    code: &str,
    named: &str,
) {
    assert_error(status, body, expected, code);
    assert!(body["message"].as_str().unwrap().contains(named), "{body}");
}

/// The 400 `invalid_request` for a request that got `named` (a field, a
/// parameter or a value) wrong.
pub fn assert_invalid_request(status: StatusCode, body: &Value, named: &str) {
    assert_error_naming(
        status,
        body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        named,
    );
}

/// Consumes until empty, resuming from the last message id each time.
pub async fn consume_all(http: &Http, topic: &str, batch_size: u64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({"batch_size": batch_size});
        if let Some(id) = &after {
            body["after_message_id"] = json!(id);
        }
        let (status, page) = http
            .post(&format!("/api/v1/topics/{topic}/consume"), body)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            return all;
        }
        after = Some(
            messages.last().unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        all.extend(messages);
    }
}

/// Sends a request and reads its status and JSON body (a body that is not
/// JSON comes back as a string).
///
/// A 503 `unavailable` is retried for up to 20 s, as a client would: the
/// node took nothing (its partition has no leader yet, or an election is
/// under way; forwarded calls whose outcome is unknown answer
/// `outcome_unknown` instead) and says to retry. On a loaded machine an
/// election can outlast the gateway's 3 s wait for a leader, which made
/// tests that expected the first answer to succeed flaky.
pub async fn finish(mut request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let again = request.try_clone();
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let retry = status == StatusCode::SERVICE_UNAVAILABLE
            && body["code"] == "unavailable"
            && std::time::Instant::now() < deadline;
        match again {
            Some(again) if retry => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                request = again;
            }
            _ => return (status, body),
        }
    }
}
