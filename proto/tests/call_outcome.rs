//! `call_outcome` against the errors tonic really builds: a refused
//! connection, and a request left unanswered until the HTTP/2 keep-alive
//! gave up. Both are UNAVAILABLE; only the first certainly did not run.

use std::net::SocketAddr;
use std::time::Duration;

use raftstream_proto::call_outcome::{cut_off, never_sent, unanswered};
use raftstream_proto::v1::ClusterStatusRequest;
use raftstream_proto::v1::raftstream_client::RaftstreamClient;
use tonic::transport::Endpoint;

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a loopback address is a valid URI")
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_millis(200))
        .keep_alive_timeout(Duration::from_millis(200))
        // Far beyond the keep-alive: the call must end on the keep-alive.
        .timeout(Duration::from_secs(30))
}

/// A listener on a free loopback port, and its address.
async fn loopback_listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback has free ports");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    (listener, addr)
}

/// The status of a ClusterStatus call to `addr` that must fail.
async fn failed_call(addr: SocketAddr, why_it_fails: &str) -> tonic::Status {
    RaftstreamClient::new(endpoint(addr).connect_lazy())
        .cluster_status(ClusterStatusRequest::default())
        .await
        .expect_err(why_it_fails)
}

#[tokio::test]
async fn a_refused_connection_was_never_sent() {
    let (listener, addr) = loopback_listener().await;
    drop(listener);
    let status = failed_call(addr, "nothing listens there").await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(unanswered(&status), "{status:?}");
    assert!(never_sent(&status), "{status:?}");
    assert!(!cut_off(&status), "{status:?}");
}

#[tokio::test]
async fn a_call_to_a_node_that_stopped_answering_is_cut_off() {
    // A server that accepts, reads everything and never answers, like a
    // paused process whose kernel still takes the bytes.
    let (listener, addr) = loopback_listener().await;
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            held.push(tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut socket, &mut sink).await;
            }));
        }
    });
    let status = failed_call(addr, "the server never answers").await;
    silent.abort();
    // The same code as a refused connection, yet the request left.
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(unanswered(&status), "{status:?}");
    assert!(!never_sent(&status), "{status:?}");
    assert!(cut_off(&status), "{status:?}");
}

#[test]
fn a_status_the_server_sent_was_answered() {
    let status = tonic::Status::unavailable("no leader yet");
    assert!(!unanswered(&status));
    assert!(!never_sent(&status));
    assert!(!cut_off(&status));
}
