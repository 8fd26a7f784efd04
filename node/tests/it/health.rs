//! The standard gRPC services on the public listener: health checking for
//! load balancers and probes, and server reflection for grpcurl. Neither
//! asks for a token.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::common;
use crate::common::TestCluster;

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn status_of(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let answer = health
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ready_node_reports_serving_for_the_server_and_each_api_service() {
    let cluster = TestCluster::start(1).await;
    let mut health = HealthClient::new(channel(cluster.addr(1)).await);
    for service in ["", "raftstream.v1.Raftstream", "raftstream.v1.Ingest"] {
        common::eventually("SERVING", Duration::from_secs(10), || {
            let mut health = health.clone();
            async move {
                (status_of(&mut health, service).await.ok()? == ServingStatus::Serving)
                    .then_some(())
            }
        })
        .await;
    }
    let unknown = status_of(&mut health, "raftstream.v1.RaftTransport")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// One node of three started alone has no metadata leader: it is alive
/// but not ready, and says so, as `/readyz` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_metadata_leader_reports_not_serving() {
    let dir = tempfile::tempdir().unwrap();
    let listeners = common::loopback_listeners().await;
    let grpc_addr = listeners.grpc.local_addr().unwrap();
    let http_addr = listeners.http.local_addr().unwrap();
    let mut config = common::node_config(1, &listeners, dir.path());
    // Two peers that never answer: no quorum, so no leader. Their ports
    // stay bound so that no other test's node can take them.
    let mut silent_peers = Vec::new();
    for id in [2, 3] {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.peers.insert(
            raftstream_node::model::NodeId(id),
            silent.local_addr().unwrap().to_string(),
        );
        silent_peers.push(silent);
    }
    let node = raftstream_node::server::RunningNode::start_on(config, listeners)
        .await
        .unwrap();
    let mut health = HealthClient::new(channel(grpc_addr).await);
    assert_eq!(
        status_of(&mut health, "").await.unwrap(),
        ServingStatus::NotServing
    );
    let readyz = reqwest::get(format!("http://{http_addr}/readyz"))
        .await
        .unwrap();
    assert_eq!(readyz.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reflection_lists_the_public_services_only() {
    let cluster = TestCluster::start(1).await;
    let mut reflection = ServerReflectionClient::new(channel(cluster.addr(1)).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "raftstream.v1.Ingest",
            "raftstream.v1.Raftstream",
        ]
    );
}
