//! Runs a node: binds its listeners, serves until shut down.

use raftstream_proto::http2;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::ServerTlsConfig;
use tower::Layer;

use crate::api::authenticate_first::AuthenticateFirstLayer;
use crate::api::forwarded::MarkForwardedLayer;
use crate::api::grpc::ClientService;
use crate::api::request_id::RequestIdLayer;
use crate::config::MAX_RPC_BYTES;
use crate::config::NodeConfig;
use crate::health;
use crate::link_faults::LinkFaultLayer;
use crate::node::Node;
use crate::node::NodeError;
use crate::raft::transport::TransportService;
use crate::time::Clock;
use crate::time::SystemClock;
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The compiled-in protobuf descriptors did not load: a build fault.
    #[error("gRPC server reflection: {0}")]
    Reflection(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Concurrent calls one peer connection may carry.
const PEER_STREAMS_PER_CONNECTION: u32 = 8192;

/// A running node and its listeners.
#[derive(Debug)]
pub struct RunningNode {
    pub node: Arc<Node>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// Closes the listeners. Separate from the node's own shutdown: a node
    /// whose storage failed stops its groups but keeps answering, 503 on
    /// `/readyz`, until its owner stops it.
    stop_listeners: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The three listeners of a node, bound.
#[derive(Debug)]
pub struct Listeners {
    /// Public gRPC: the client API and webhook ingestion.
    pub grpc: TcpListener,
    /// Public HTTP: the gateway.
    pub http: TcpListener,
    /// Other nodes only: Raft transport, node heartbeats, forwarded calls.
    pub peer: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses, so an address in use fails at once.
    pub async fn bind(config: &NodeConfig) -> Result<Listeners, ServerError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })
        };
        Ok(Listeners {
            grpc: bind(config.grpc_addr).await?,
            http: bind(config.http_addr).await?,
            peer: bind(config.peer_addr).await?,
        })
    }
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> Result<SocketAddr, ServerError> {
    listener.local_addr().map_err(|source| ServerError::Bind {
        addr: configured,
        source,
    })
}

impl RunningNode {
    /// Binds every listener first, then starts the node and serves.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, ServerError> {
        let listeners = Listeners::bind(&config).await?;
        Self::start_on(config, listeners).await
    }

    pub async fn start_on(
        config: NodeConfig,
        listeners: Listeners,
    ) -> Result<RunningNode, ServerError> {
        Self::start_on_with_clock(config, listeners, Arc::new(SystemClock)).await
    }

    /// `start_on` with the clock the node reads the time from: a test can
    /// pass a `ManualClock`.
    pub async fn start_on_with_clock(
        mut config: NodeConfig,
        listeners: Listeners,
        time: Arc<dyn Clock>,
    ) -> Result<RunningNode, ServerError> {
        // A port 0 in the configuration is the port the listener got; the
        // node reports its public address to clients.
        config.grpc_addr = local_addr(&listeners.grpc, config.grpc_addr)?;
        config.http_addr = local_addr(&listeners.http, config.http_addr)?;
        config.peer_addr = local_addr(&listeners.peer, config.peer_addr)?;
        let (grpc_addr, http_addr, peer_addr) =
            (config.grpc_addr, config.http_addr, config.peer_addr);
        // TLS files are read before anything starts, so a bad path or
        // key fails the start with its name, not the first connection.
        let peer_tls = config.peer_tls.as_ref().map(tls::peer_server).transpose()?;
        let public_grpc_tls = config
            .client_tls
            .as_ref()
            .map(tls::public_grpc)
            .transpose()?;
        let public_http_tls = config
            .client_tls
            .as_ref()
            .map(tls::public_http)
            .transpose()?;
        let node = Node::start(config, time).await?;
        // Partition moves and the balancer (`api/service/cluster.rs`).
        tokio::spawn(Arc::new(crate::api::grpc::service(node.clone())).placement_loop());
        // Push subscriptions' deliveries from the partitions this node leads.
        tokio::spawn(crate::push::run(Arc::new(crate::api::grpc::service(
            node.clone(),
        ))));
        // Platform events: this node's queue published to the system topics.
        tokio::spawn(Arc::new(crate::api::grpc::service(node.clone())).run_platform_events());
        let stop_listeners = watch::Sender::new(false);

        let client_api = AuthenticateFirstLayer::new(node.clone())
            .layer(ClientService::public(node.clone()).into_server());
        let (health, health_task) =
            health::health_service(node.clone(), stop_listeners.subscribe()).await;
        let (reflection_v1, reflection_v1alpha) =
            health::reflection_services().map_err(|e| ServerError::Reflection(e.to_string()))?;
        let request_ids = RequestIdLayer::new(node.id());
        let mark_forwarded = MarkForwardedLayer::default();
        let public_services =
            tonic::service::Routes::new(request_ids.layer(mark_forwarded.layer(client_api)))
                .add_service(request_ids.layer(
                    mark_forwarded.layer(ClientService::public(node.clone()).into_ingest_server()),
                ))
                .add_service(
                    request_ids
                        .layer(mark_forwarded.layer(
                            ClientService::public(node.clone()).into_subscriptions_server(),
                        )),
                )
                .add_service(health)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha);
        let transport = raftstream_proto::v1::raft_transport_server::RaftTransportServer::new(
            TransportService::new(node.clone()),
        )
        .max_decoding_message_size(MAX_RPC_BYTES)
        .max_encoding_message_size(MAX_RPC_BYTES);
        let transport = tonic::service::interceptor::InterceptorLayer::new(refuse_other_clusters(
            node.pool.cluster().clone(),
        ))
        .layer(transport);
        let link_faults = LinkFaultLayer::new(node.id(), node.config.link_faults.clone());
        let peer_services = tonic::service::Routes::new(link_faults.layer(transport))
            .add_service(
                link_faults
                    .layer(request_ids.layer(ClientService::peer(node.clone()).into_server())),
            )
            .add_service(
                link_faults.layer(
                    request_ids.layer(ClientService::peer(node.clone()).into_ingest_server()),
                ),
            )
            .add_service(link_faults.layer(
                request_ids.layer(ClientService::peer(node.clone()).into_subscriptions_server()),
            ));
        let limits = &node.config.limits;
        let public_server = http2::server(tonic::transport::Server::builder())
            .max_concurrent_streams(limits.max_streams_per_connection)
            .timeout(Duration::from_millis(limits.request_timeout_ms));
        // Peers carry every group's replication on one connection, and
        // cancel many calls at once when many groups elect: their calls
        // wait for a stream instead of failing, so the cap is generous.
        let peer_server = http2::server(tonic::transport::Server::builder())
            .max_concurrent_streams(PEER_STREAMS_PER_CONNECTION);
        let grpc = serve_grpc(
            stop_listeners.subscribe(),
            "public gRPC",
            public_server,
            listeners.grpc,
            public_grpc_tls,
            public_services,
        )?;
        let peer = serve_grpc(
            stop_listeners.subscribe(),
            "peer",
            peer_server,
            listeners.peer,
            peer_tls,
            peer_services,
        )?;
        let http = serve_http(
            &node,
            stop_listeners.subscribe(),
            listeners.http,
            public_http_tls,
        )?;
        tracing::info!(
            node = node.id().0,
            %grpc_addr,
            %http_addr,
            %peer_addr,
            peer_tls = node.config.peer_tls.is_some(),
            client_tls = node.config.client_tls.is_some(),
            "raftstream node serving"
        );
        Ok(RunningNode {
            node,
            grpc_addr,
            http_addr,
            peer_addr,
            stop_listeners,
            tasks: vec![grpc, peer, http, health_task],
        })
    }

    /// Hands off the leadership of the groups this node leads while it
    /// still serves (requests that reach it meanwhile are forwarded to the
    /// new leaders), then stops serving, stops every Raft group and waits
    /// for the listeners.
    pub async fn shutdown(self) {
        if self.node.failure().is_none() {
            let _ = self
                .node
                .hand_off_leadership(crate::node::LEADERSHIP_HANDOFF_TIMEOUT)
                .await;
        }
        self.stop_listeners.send_replace(true);
        self.node.shutdown().await;
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Serves `services` on `listener` until `shutdown` turns true.
fn serve_grpc(
    mut shutdown: watch::Receiver<bool>,
    name: &'static str,
    server: tonic::transport::Server,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    services: tonic::service::Routes,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let mut server = server.tcp_nodelay(true);
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .map_err(|e| ServerError::Tls(crate::tls::TlsError::Config(e.to_string())))?;
    }
    // serve_with_incoming ignores the builder's tcp_nodelay, so the
    // accepted sockets get it here. Without it, Nagle held back the second
    // small write of a response until the peer's delayed ACK (40 ms):
    // the 40-80 ms publish latency tail in benches/RESULTS.md.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(tokio::spawn(async move {
        let result = server
            .add_routes(services)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, listener = name, "gRPC server failed");
        }
    }))
}

/// Serves the HTTP gateway on `listener`, over TLS when `tls` is given,
/// until the node shuts down.
fn serve_http(
    node: &Arc<Node>,
    mut shutdown: watch::Receiver<bool>,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let app = crate::gateway::router(node.clone());
    let Some(tls) = tls else {
        return Ok(tokio::spawn(async move {
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set on an HTTP connection");
                }
            });
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.changed().await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
    };
    let addr = local_addr(&listener, SocketAddr::from(([0, 0, 0, 0], 0)))?;
    let std_listener = listener
        .into_std()
        .map_err(|source| ServerError::Bind { addr, source })?;
    let server = axum_server::from_tcp_rustls(
        std_listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .map_err(|source| ServerError::Bind { addr, source })?;
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        let _ = shutdown.changed().await;
        stopping.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    Ok(tokio::spawn(async move {
        let result = server.handle(handle).serve(app.into_make_service()).await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTPS server failed");
        }
    }))
}

/// Refuses Raft transport calls from a node of another cluster (a stale
/// `--peers` entry, two clusters sharing hosts): both know their cluster
/// id and they differ. A node that does not know its cluster yet passes.
fn refuse_other_clusters(
    ours: crate::raft::network::ClusterStamp,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request| {
        let theirs = request
            .metadata()
            .get(crate::identity::CLUSTER_ID_HEADER)
            .and_then(|value| value.to_str().ok());
        if crate::identity::same_cluster(ours.get(), theirs) {
            Ok(request)
        } else {
            Err(tonic::Status::permission_denied(format!(
                "this node belongs to cluster {}, the caller to cluster {}: check --peers",
                ours.get().unwrap_or_default(),
                theirs.unwrap_or_default()
            )))
        }
    }
}
