//! Runs a node: binds its listeners, serves until shut down.

use raftstream_proto::http2;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tower::Layer;

use crate::api::forwarded::MarkForwardedLayer;
use crate::api::grpc::ClientService;
use crate::config::NodeConfig;
use crate::node::Node;
use crate::node::NodeError;
use crate::raft::network::MAX_RPC_BYTES;
use crate::raft::transport::TransportService;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running node and its listeners.
#[derive(Debug)]
pub struct RunningNode {
    pub node: Arc<Node>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Binds both listeners first (so an address in use fails at once),
    /// then starts the node and serves.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, ServerError> {
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.http_addr,
                source,
            })?;
        Self::start_on(config, grpc_listener, http_listener).await
    }

    pub async fn start_on(
        config: NodeConfig,
        grpc_listener: TcpListener,
        http_listener: TcpListener,
    ) -> Result<RunningNode, ServerError> {
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let node = Node::start(config).await?;

        let transport = raftstream_proto::v1::raft_transport_server::RaftTransportServer::new(
            TransportService::new(node.clone()),
        )
        .max_decoding_message_size(MAX_RPC_BYTES)
        .max_encoding_message_size(MAX_RPC_BYTES);
        let client_api =
            MarkForwardedLayer.layer(ClientService::public(node.clone()).into_server());
        let ingest_api =
            MarkForwardedLayer.layer(ClientService::public(node.clone()).into_ingest_server());
        let mut shutdown = node.shutdown_signal();
        // serve_with_incoming ignores the builder's tcp_nodelay, so the
        // accepted sockets get it here. Without it, Nagle held back the second
        // small write of a response until the peer's delayed ACK (40 ms):
        // the 40-80 ms publish latency tail in benches/RESULTS.md.
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let grpc = tokio::spawn(async move {
            let result = http2::server(tonic::transport::Server::builder())
                .tcp_nodelay(true)
                .add_service(transport)
                .add_service(client_api)
                .add_service(ingest_api)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown.changed().await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        let mut shutdown = node.shutdown_signal();
        let app = crate::gateway::router(node.clone());
        let http = tokio::spawn(async move {
            let http_listener = http_listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set on an HTTP connection");
                }
            });
            let result = axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.changed().await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(node = node.id(), %grpc_addr, %http_addr, "raftstream node serving");
        Ok(RunningNode {
            node,
            grpc_addr,
            http_addr,
            tasks: vec![grpc, http],
        })
    }

    /// Stops serving, stops every Raft group and waits for the listeners.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
