//! `call_outcome` against the errors tonic really builds: a refused
//! connection, and a request left unanswered until the HTTP/2 keep-alive
//! gave up. Both are UNAVAILABLE; only the first certainly did not run.

use std::time::Duration;

use raftstream_proto::call_outcome::{cut_off, never_sent, unanswered};
use raftstream_proto::v1::ClusterStatusRequest;
use raftstream_proto::v1::raftstream_client::RaftstreamClient;
use tonic::transport::Endpoint;

fn endpoint(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a loopback address is a valid URI")
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_millis(200))
        .keep_alive_timeout(Duration::from_millis(200))
        // Far beyond the keep-alive: the call must end on the keep-alive.
        .timeout(Duration::from_secs(30))
}

async fn loopback_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback has free ports")
}

#[tokio::test]
async fn a_refused_connection_was_never_sent() {
    let listener = loopback_listener().await;
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    drop(listener);
    let mut client = RaftstreamClient::new(endpoint(addr).connect_lazy());
    let status = client
        .cluster_status(ClusterStatusRequest::default())
        .await
        .expect_err("nothing listens there");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(unanswered(&status), "{status:?}");
    assert!(never_sent(&status), "{status:?}");
    assert!(!cut_off(&status), "{status:?}");
}

#[tokio::test]
async fn a_call_to_a_node_that_stopped_answering_is_cut_off() {
    // A server that accepts, reads everything and never answers, like a
    // paused process whose kernel still takes the bytes.
    let listener = loopback_listener().await;
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
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
    let mut client = RaftstreamClient::new(endpoint(addr).connect_lazy());
    let status = client
        .cluster_status(ClusterStatusRequest::default())
        .await
        .expect_err("the server never answers");
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
