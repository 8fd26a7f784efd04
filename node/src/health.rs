//! The standard gRPC services load balancers and tools expect on the public
//! gRPC listener: health checking (`grpc.health.v1.Health`, what
//! `grpc_health_probe` and Kubernetes' gRPC probes call) and server
//! reflection (v1 and v1alpha, what `grpcurl` and Postman use to list and
//! call the API without the .proto files). Neither needs a token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::node::Node;

/// How often the reported health is brought up to date with the node's
/// readiness. Readiness is two reads from memory; a probe sees a change
/// within this long.
const HEALTH_REFRESH: Duration = Duration::from_millis(250);

/// The services the health service reports: the server as a whole ("")
/// and each API service by its full name.
const REPORTED_SERVICES: [&str; 3] = [
    "",
    raftstream_proto::v1::raftstream_server::SERVICE_NAME,
    raftstream_proto::v1::ingest_server::SERVICE_NAME,
];

/// The health service, and the task that keeps it reporting the node's
/// readiness (the same as `/readyz`: SERVING once the node knows a
/// metadata leader and while its storage has not failed) until `stop`
/// turns true. The first status is reported before this returns, so the
/// service never answers with the library's default (SERVING).
pub async fn health_service(
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
) -> (
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tokio::task::JoinHandle<()>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let status_of = |node: &Node| match node.readiness() {
        Ok(_) => ServingStatus::Serving,
        Err(_) => ServingStatus::NotServing,
    };
    let mut reported = status_of(&node);
    report(&reporter, reported).await;
    let task = tokio::spawn(async move {
        let mut refresh = tokio::time::interval(HEALTH_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let status = status_of(&node);
            if reported != status {
                report(&reporter, status).await;
                reported = status;
            }
            tokio::select! {
                _ = refresh.tick() => {}
                _ = stop.changed() => {
                    // Draining: tell balancers to stop sending here first.
                    report(&reporter, ServingStatus::NotServing).await;
                    return;
                }
            }
        }
    });
    (service, task)
}

async fn report(reporter: &HealthReporter, status: ServingStatus) {
    for service in REPORTED_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Server reflection for the public services only: the Raft transport and
/// the peer listener's services are not listed.
pub fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(raftstream_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for service in REPORTED_SERVICES.into_iter().skip(1) {
            builder = builder.with_service_name(service);
        }
        builder
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
