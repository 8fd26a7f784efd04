//! Connection, discovery, routing and retries.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use backoff::backoff::Backoff;
use parking_lot::Mutex;
use parking_lot::RwLock;
use raftstream_proto::FORWARDED_HEADER;
use raftstream_proto::call_outcome;
use raftstream_proto::http2;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::ingest_client::IngestClient;
use raftstream_proto::v1::raftstream_client::RaftstreamClient;
use raftstream_proto::v1::subscriptions_client::SubscriptionsClient;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tonic::Request;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;

use crate::error::Error;
use crate::error::Result;

/// Messages may be as large as the server's batch limit.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// The shortest time between two background lookups of unknown group
/// leaders (see `Client::learn_leaders_soon`).
const LEADER_LOOKUP_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Nodes to start from (`host:port`); the rest are discovered.
    pub seeds: Vec<String>,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// TLS (rustls); plain HTTP/2 when absent.
    pub tls: Option<ClientTlsConfig>,
    /// The deadline of one attempt of one call.
    pub request_timeout: Duration,
    /// How long a call keeps retrying UNAVAILABLE and leader changes.
    pub retry_for: Duration,
    /// Publish requests this client keeps in flight to one node, over all
    /// its producers and partitions (Kafka's
    /// `max.in.flight.requests.per.connection`, counted per node because
    /// each request here carries one partition). Batches beyond it wait in
    /// the producer and grow, instead of becoming thousands of tiny
    /// concurrent requests when a topic has many partitions.
    pub max_publishes_in_flight_per_node: usize,
}

impl ClientConfig {
    pub fn new(seeds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            seeds: seeds.into_iter().map(Into::into).collect(),
            token: None,
            tls: None,
            request_timeout: Duration::from_secs(15),
            retry_for: Duration::from_secs(20),
            max_publishes_in_flight_per_node: 64,
        }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn with_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// TLS from PEM files: nodes must present a certificate `ca` signed, and
/// `identity` (certificate, key) is shown to nodes that ask clients for one.
pub fn tls_from_files(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<ClientTlsConfig> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::TlsFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        ));
    }
    Ok(tls)
}

/// Adds the bearer token to every call.
#[derive(Clone, Debug)]
pub struct Auth(Option<AsciiMetadataValue>);

impl Auth {
    pub fn new(header: Option<AsciiMetadataValue>) -> Self {
        Auth(header)
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// `message` as a request that carries `timeout` (as `grpc-timeout`), so
/// that the server, too, gives up on an attempt the client stops waiting for.
pub(crate) fn timed<M>(message: M, timeout: Duration) -> Request<M> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

pub type Grpc = RaftstreamClient<InterceptedService<Channel, Auth>>;
pub type IngestGrpc = IngestClient<InterceptedService<Channel, Auth>>;
pub type SubscriptionsGrpc = SubscriptionsClient<InterceptedService<Channel, Auth>>;

/// Where a call should go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The leader of this group, when known.
    Group(u64),
    /// Any node.
    Any,
}

/// Whether an attempt first takes one of its node's publish slots
/// (`ClientConfig::max_publishes_in_flight_per_node`).
#[derive(Debug)]
enum Slot {
    /// Take a slot; the first attempt may bring one taken beforehand.
    Publish(Option<PublishSlot>),
    Free,
}

/// One of a node's publish slots, held by a request in flight to it.
#[derive(Debug)]
pub(crate) struct PublishSlot {
    addr: String,
    _permit: OwnedSemaphorePermit,
}

/// Whether a call may be repeated after its outcome became unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, and writes the server deduplicates.
    Idempotent,
    /// Retried only when it surely did not run (UNAVAILABLE).
    Once,
}

/// What one failed attempt of a call tells about the call.
#[derive(Debug, PartialEq, Eq)]
struct Attempt {
    /// The connection broke or went silent after the request left (the
    /// node went away, or stopped answering until the keep-alive gave up).
    cut_off: bool,
    /// The request may have run on the server.
    may_have_run: bool,
    /// Sending it again cannot make it run twice, or it is idempotent.
    retryable: bool,
    /// The node gave no answer: the next attempt goes elsewhere.
    node_unreachable: bool,
}

impl Attempt {
    fn judge(status: &tonic::Status, retry: Retry) -> Attempt {
        let cut_off = call_outcome::cut_off(status);
        let may_have_run = cut_off
            || matches!(
                status.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown
            );
        // UNAVAILABLE that the server sent, or a connection never made,
        // says the request did not run.
        let surely_did_not_run = status.code() == tonic::Code::Unavailable && !cut_off;
        Attempt {
            cut_off,
            may_have_run,
            retryable: surely_did_not_run || (may_have_run && retry == Retry::Idempotent),
            node_unreachable: call_outcome::unanswered(status),
        }
    }
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    auth: Auth,
    channels: RwLock<HashMap<String, Channel>>,
    nodes: RwLock<Vec<String>>,
    /// Group id → gRPC address of its leader.
    leaders: RwLock<HashMap<u64, String>>,
    next_node: AtomicUsize,
    /// This client's offset commits carry (`commit_writer`, next
    /// `commit_seq`), so that a late attempt of a commit it retried cannot
    /// overwrite a later commit (see `Client::commit_offset`).
    commit_writer: u64,
    commit_seq: AtomicU64,
    /// Node address → its publish slots.
    publish_slots: RwLock<HashMap<String, Arc<Semaphore>>>,
    /// Held while learning the cluster, with when the last refresh ended:
    /// many calls failing at once (a leader change under load) then share
    /// one cluster status request instead of sending one each.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    /// When the last background lookup of unknown leaders started.
    last_leader_lookup: Mutex<Option<Instant>>,
}

/// A connection to a Raftstream cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects through the first reachable seed and learns the cluster.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let auth = match &config.token {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                Error::Unauthenticated("the token has characters a header cannot carry".into())
            })?),
            None => None,
        };
        let client = Client::unconnected(config, Auth(auth));
        let seeds = client.inner.config.seeds.clone();
        client.refresh_from_first_of(&seeds).await?;
        Ok(client)
    }

    /// Learns the cluster from the first of `addrs` that answers. When none
    /// does, a node's refusal of the token is the error, not "no node
    /// reachable": the nodes are there, and retrying cannot help until the
    /// token changes.
    async fn refresh_from_first_of(&self, addrs: &[String]) -> Result<()> {
        let mut refused = None;
        for addr in addrs {
            match self.refresh_from(addr).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_auth_failure() => refused = Some(e),
                Err(_) => {}
            }
        }
        Err(refused.unwrap_or_else(|| Error::NoNodeReachable {
            seeds: addrs.to_vec(),
        }))
    }

    /// A client that has not yet learnt the cluster.
    fn unconnected(config: ClientConfig, auth: Auth) -> Client {
        Client {
            inner: Arc::new(Inner {
                nodes: RwLock::new(config.seeds.clone()),
                config,
                auth,
                channels: RwLock::new(HashMap::new()),
                leaders: RwLock::new(HashMap::new()),
                next_node: AtomicUsize::new(0),
                // Non-zero: 0 means an unordered commit.
                commit_writer: rand::random::<u64>().max(1),
                commit_seq: AtomicU64::new(1),
                publish_slots: RwLock::new(HashMap::new()),
                refreshing: tokio::sync::Mutex::new(None),
                last_leader_lookup: Mutex::new(None),
            }),
        }
    }

    /// This client's writer id and the next sequence for an offset commit.
    pub(crate) fn next_commit_order(&self) -> (u64, u64) {
        let seq = self.inner.commit_seq.fetch_add(1, Ordering::Relaxed);
        (self.inner.commit_writer, seq)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        if let Some(channel) = self.inner.channels.read().get(addr) {
            return Ok(channel.clone());
        }
        let scheme = if self.inner.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let invalid = |e: &dyn std::fmt::Display| Error::InvalidAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        let mut endpoint = http2::endpoint(
            Endpoint::from_shared(format!("{scheme}://{addr}"))
                .map_err(|e| invalid(&e))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true),
        );
        if let Some(tls) = &self.inner.config.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| invalid(&e))?;
        }
        let channel = endpoint.connect_lazy();
        self.inner
            .channels
            .write()
            .insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A raw gRPC client for one node, with the token attached.
    pub fn grpc(&self, addr: &str) -> Result<Grpc> {
        Ok(
            RaftstreamClient::with_interceptor(self.channel(addr)?, self.inner.auth.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }

    /// A raw client of one node's webhook ingestion service.
    pub fn ingest_grpc(&self, addr: &str) -> Result<IngestGrpc> {
        Ok(
            IngestClient::with_interceptor(self.channel(addr)?, self.inner.auth.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }

    /// A raw client of one node's push subscriptions service.
    pub fn subscriptions_grpc(&self, addr: &str) -> Result<SubscriptionsGrpc> {
        Ok(
            SubscriptionsClient::with_interceptor(self.channel(addr)?, self.inner.auth.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }

    /// Re-learns the nodes and the group leaders. A call that finds a
    /// refresh under way waits for it and uses its answer.
    pub async fn refresh(&self) -> Result<()> {
        let asked = Instant::now();
        let mut last_refresh = self.inner.refreshing.lock().await;
        if last_refresh.is_some_and(|ended| ended >= asked) {
            return Ok(());
        }
        let result = self.refresh_any().await;
        if result.is_ok() {
            *last_refresh = Some(Instant::now());
        }
        result
    }

    async fn refresh_any(&self) -> Result<()> {
        let nodes = self.inner.nodes.read().clone();
        self.refresh_from_first_of(&nodes).await
    }

    async fn refresh_from(&self, addr: &str) -> Result<()> {
        let mut grpc = self.grpc(addr)?;
        let request = timed(pb::ClusterStatusRequest {}, Duration::from_secs(3));
        let status = tokio::time::timeout(Duration::from_secs(3), grpc.cluster_status(request))
            .await
            .map_err(|_| Error::NoNodeReachable {
                seeds: vec![addr.to_string()],
            })?
            .map_err(Error::from_status)?
            .into_inner();
        let by_id: HashMap<u64, String> = status
            .nodes
            .iter()
            .map(|n| (n.id, n.grpc_addr.clone()))
            .collect();
        if !by_id.is_empty() {
            let mut nodes: Vec<String> = status
                .nodes
                .iter()
                .filter(|n| n.reachable)
                .map(|n| n.grpc_addr.clone())
                .collect();
            if nodes.is_empty() {
                nodes = by_id.values().cloned().collect();
            }
            *self.inner.nodes.write() = nodes;
        }
        let leaders = status
            .groups
            .iter()
            .filter_map(|g| Some((g.group_id, by_id.get(&g.leader?)?.clone())))
            .collect();
        *self.inner.leaders.write() = leaders;
        Ok(())
    }

    /// The gRPC address this client sends calls for Raft group `group_id`
    /// to, if it knows the group's leader (see `ClusterStatus` for group ids).
    pub fn known_leader(&self, group_id: u64) -> Option<String> {
        self.inner.leaders.read().get(&group_id).cloned()
    }

    /// The node to send a call for `target` to: the group's leader when
    /// known, else the next node in turn. `unreachable` (a node the last
    /// attempt could not connect to) is passed over while another node is
    /// known: after a crash the survivors still name the dead leader until
    /// they elect a new one, and a survivor holds the call for that election.
    fn pick(&self, target: Target, unreachable: Option<&str>) -> String {
        if let Target::Group(group) = target {
            let leader = self.inner.leaders.read().get(&group).cloned();
            match leader {
                Some(addr) if Some(addr.as_str()) != unreachable => return addr,
                Some(_) => {}
                None => self.learn_leaders_soon(),
            }
        }
        let nodes = self.inner.nodes.read();
        let reachable: Vec<&String> = nodes
            .iter()
            .filter(|addr| Some(addr.as_str()) != unreachable)
            .collect();
        let candidates = if reachable.is_empty() {
            nodes.iter().collect()
        } else {
            reachable
        };
        let i = self.inner.next_node.fetch_add(1, Ordering::Relaxed);
        candidates
            .get(i % candidates.len().max(1))
            .map(|addr| addr.to_string())
            .unwrap_or_default()
    }

    /// A call for a group whose leader this client does not know (a topic
    /// created after the client last learnt the cluster) goes to any node,
    /// which forwards it; so does a call to a leader that has since handed
    /// leadership on and stayed up, and the node says so in the response
    /// (`FORWARDED_HEADER`). Correct, but one hop longer for every call. So
    /// either starts learning the leaders in the background, at most once
    /// per `LEADER_LOOKUP_INTERVAL`, and later calls go straight to the
    /// leader.
    fn learn_leaders_soon(&self) {
        let now = Instant::now();
        {
            let mut last = self.inner.last_leader_lookup.lock();
            if last.is_some_and(|started| now.duration_since(started) < LEADER_LOOKUP_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.clone();
            runtime.spawn(async move {
                // A failed lookup changes nothing: calls keep going to any
                // node, and the next one for an unknown leader tries again.
                let _ = client.refresh().await;
            });
        }
    }

    /// Runs a call on the right node, retrying with bounded exponential
    /// backoff while the cluster is unavailable or leaders move.
    pub(crate) async fn call<T, F, Fut>(&self, target: Target, retry: Retry, f: F) -> Result<T>
    where
        F: Fn(Grpc, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(Client::grpc, target, retry, f).await
    }

    /// [`Client::call`] for a publish: each attempt first takes a slot of
    /// the node it goes to, except that the first may use `taken`, from
    /// [`Client::publish_slot`], if it goes to the same node.
    pub(crate) async fn call_publish<T, F, Fut>(
        &self,
        target: Target,
        taken: Option<PublishSlot>,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Grpc, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_in_slot(
            Client::grpc,
            target,
            Retry::Idempotent,
            Slot::Publish(taken),
            f,
        )
        .await
    }

    /// Waits for a publish slot of the node a call for `target` would go
    /// to now. A producer takes it before it closes a batch, so that the
    /// batch keeps growing while the node is busy.
    pub(crate) async fn publish_slot(&self, target: Target) -> Option<PublishSlot> {
        self.take_publish_slot(self.pick(target, None)).await
    }

    async fn take_publish_slot(&self, addr: String) -> Option<PublishSlot> {
        let slots = self.inner.publish_slots.read().get(&addr).cloned();
        let slots = slots.unwrap_or_else(|| {
            let limit = self.inner.config.max_publishes_in_flight_per_node.max(1);
            self.inner
                .publish_slots
                .write()
                .entry(addr.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone()
        });
        // The semaphore is never closed, so this fails only in theory; the
        // call then goes without a slot rather than not at all.
        let permit = slots.acquire_owned().await.ok()?;
        Some(PublishSlot {
            addr,
            _permit: permit,
        })
    }

    /// [`Client::call`] for any of the node's services: `connect` makes
    /// that service's client for a node address.
    pub(crate) async fn call_with<C, T, F, Fut>(
        &self,
        connect: fn(&Client, &str) -> Result<C>,
        target: Target,
        retry: Retry,
        f: F,
    ) -> Result<T>
    where
        F: Fn(C, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_in_slot(connect, target, retry, Slot::Free, f)
            .await
    }

    async fn call_in_slot<C, T, F, Fut>(
        &self,
        connect: fn(&Client, &str) -> Result<C>,
        target: Target,
        retry: Retry,
        mut slot: Slot,
        f: F,
    ) -> Result<T>
    where
        F: Fn(C, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut backoff = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(50))
            .with_max_interval(Duration::from_secs(1))
            .with_max_elapsed_time(Some(self.inner.config.retry_for))
            .build();
        let timeout = self.inner.config.request_timeout;
        // Once an attempt may have run, the call's outcome stays unknown
        // whatever later attempts answer, unless one succeeds.
        let mut may_have_run = false;
        let mut unreachable: Option<String> = None;
        loop {
            let addr = self.pick(target, unreachable.as_deref());
            // The wait for a slot is not part of the attempt's deadline:
            // nothing has been sent yet.
            let taken_slot = match &mut slot {
                Slot::Publish(taken) => match taken.take() {
                    Some(taken) if taken.addr == addr => Some(taken),
                    // A slot of another node is released before this one
                    // is waited for: holding one while waiting could
                    // deadlock two calls that moved in opposite directions.
                    other => {
                        drop(other);
                        self.take_publish_slot(addr.clone()).await
                    }
                },
                Slot::Free => None,
            };
            let outcome = match connect(self, &addr) {
                Ok(grpc) => match tokio::time::timeout(timeout, f(grpc, timeout)).await {
                    Ok(result) => result.map(|response| {
                        // A node forwarded the call: the leader this client
                        // sent it to has moved while staying up.
                        if matches!(target, Target::Group(_))
                            && response.metadata().contains_key(FORWARDED_HEADER)
                        {
                            self.learn_leaders_soon();
                        }
                        response.into_inner()
                    }),
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                        "no answer from {addr} within {timeout:?}"
                    ))),
                },
                Err(e) => return Err(e),
            };
            drop(taken_slot);
            let status = match outcome {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            let Attempt {
                cut_off,
                may_have_run: unknown,
                retryable,
                node_unreachable,
            } = Attempt::judge(&status, retry);
            may_have_run |= unknown;
            unreachable = node_unreachable.then(|| addr.clone());
            if !retryable {
                if cut_off {
                    return Err(Error::OutcomeUnknown(format!(
                        "the connection to {addr} broke: {}",
                        status.message()
                    )));
                }
                return Err(Error::from_status(status));
            }
            // Leaders may have moved: learn again before the next attempt.
            let _ = self.refresh().await;
            match backoff.next_backoff() {
                Some(wait) => tokio::time::sleep(wait).await,
                None => {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    return Err(if may_have_run {
                        Error::OutcomeUnknown(format!(
                            "an attempt may have run; the last answered: {}",
                            status.message()
                        ))
                    } else {
                        Error::Unavailable {
                            message: status.message().to_string(),
                            elapsed_ms,
                        }
                    });
                }
            }
        }
    }

    // ---- Admin ----

    pub async fn create_topic(&self, request: pb::CreateTopicRequest) -> Result<pb::Topic> {
        self.call(Target::Group(0), Retry::Once, |mut g, t| {
            let r = timed(request.clone(), t);
            async move { g.create_topic(r).await }
        })
        .await
    }

    pub async fn list_topics(&self) -> Result<Vec<pb::Topic>> {
        let list = self
            .call(Target::Group(0), Retry::Idempotent, |mut g, _| async move {
                g.list_topics(pb::ListTopicsRequest { name: None }).await
            })
            .await?;
        Ok(list.topics)
    }

    pub async fn topic(&self, topic: &str) -> Result<pb::Topic> {
        self.call(Target::Group(0), Retry::Idempotent, |mut g, _| {
            let r = topic_ref(topic);
            async move { g.get_topic(r).await }
        })
        .await
    }

    pub async fn update_topic(&self, request: pb::UpdateTopicRequest) -> Result<pb::Topic> {
        self.call(Target::Group(0), Retry::Once, |mut g, _| {
            let r = request.clone();
            async move { g.update_topic(r).await }
        })
        .await
    }

    pub async fn purge_topic(&self, topic: &str, partition: Option<u32>) -> Result<()> {
        self.call(Target::Any, Retry::Idempotent, |mut g, _| {
            let r = pb::PurgeTopicRequest {
                topic: Some(topic_ref(topic)),
                partition,
            };
            async move { g.purge_topic(r).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.call(Target::Group(0), Retry::Once, |mut g, _| {
            let r = topic_ref(topic);
            async move { g.delete_topic(r).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse> {
        self.call(Target::Any, Retry::Idempotent, |mut g, _| async move {
            g.cluster_status(pb::ClusterStatusRequest {}).await
        })
        .await
    }

    /// Adds node `id`, started empty with `--join`, whose peer listener
    /// the other nodes reach at `peer_addr` (host:port). Answers once it
    /// is a voter; the balancer then moves replicas onto it. Adding a
    /// voter again only asks the balancer again, so retries are safe.
    pub async fn add_node(&self, id: u64, peer_addr: &str) -> Result<()> {
        let request = pb::AddNodeRequest {
            node_id: id,
            peer_addr: peer_addr.to_string(),
        };
        self.call(Target::Group(0), Retry::Idempotent, |mut g, t| {
            let r = timed(request.clone(), t);
            async move { g.add_node(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Removes node `id`: its replicas move away, then it leaves the
    /// cluster. While they are still moving the node answers UNAVAILABLE,
    /// which this call retries (as long as `retry_for`) and then returns
    /// as [`Error::Unavailable`]: call again to carry on where it was.
    pub async fn remove_node(&self, id: u64) -> Result<()> {
        self.call(Target::Group(0), Retry::Idempotent, |mut g, t| {
            let r = timed(pb::RemoveNodeRequest { node_id: id }, t);
            async move { g.remove_node(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Starts moving a partition of `topic` (a name or an id) to the nodes
    /// `to`, the first its preferred leader. Answers once the move is
    /// recorded; [`Client::cluster_status`] shows it under way until done.
    /// The same move again is accepted, so retries are safe.
    pub async fn move_partition(&self, topic: &str, partition: u32, to: Vec<u64>) -> Result<()> {
        let request = pb::MovePartitionRequest {
            topic: Some(topic_ref(topic)),
            partition,
            replicas: to,
        };
        self.call(Target::Group(0), Retry::Idempotent, |mut g, t| {
            let r = timed(request.clone(), t);
            async move { g.move_partition(r).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn create_token(
        &self,
        name: &str,
        scopes: &[&str],
        topics: &[&str],
    ) -> Result<pb::CreateTokenResponse> {
        let request = pb::CreateTokenRequest {
            name: name.to_string(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
        };
        self.call(Target::Group(0), Retry::Once, |mut g, _| {
            let r = request.clone();
            async move { g.create_token(r).await }
        })
        .await
    }

    pub async fn list_tokens(&self) -> Result<Vec<pb::TokenInfo>> {
        let list = self
            .call(Target::Group(0), Retry::Idempotent, |mut g, _| async move {
                g.list_tokens(pb::ListTokensRequest {}).await
            })
            .await?;
        Ok(list.tokens)
    }

    pub async fn delete_token(&self, id: u64) -> Result<()> {
        self.call(Target::Group(0), Retry::Once, |mut g, _| async move {
            g.delete_token(pb::DeleteTokenRequest { id }).await
        })
        .await
        .map(|_| ())
    }
}

/// Digits name a topic by id, anything else by name.
pub fn topic_ref(topic: &str) -> pb::TopicRef {
    let reference = match topic.parse::<u64>() {
        Ok(id) => pb::topic_ref::Topic::Id(id),
        Err(_) => pb::topic_ref::Topic::Name(topic.to_string()),
    };
    pb::TopicRef {
        topic: Some(reference),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// Runs `call_with` against answers scripted per attempt (the last
    /// repeats), without a network: "connecting" always succeeds.
    async fn scripted(retry: Retry, answers: &[tonic::Code]) -> Result<()> {
        let mut config = ClientConfig::new(["127.0.0.1:1"]);
        config.retry_for = Duration::from_millis(300);
        let client = Client::unconnected(config, Auth(None));
        let attempt = AtomicU32::new(0);
        let connect: fn(&Client, &str) -> Result<()> = |_, _| Ok(());
        client
            .call_with(connect, Target::Any, retry, |(), _| {
                let i = attempt.fetch_add(1, Ordering::Relaxed) as usize;
                let code = answers[i.min(answers.len() - 1)];
                async move { Err::<tonic::Response<()>, _>(tonic::Status::new(code, "scripted")) }
            })
            .await
    }

    #[tokio::test]
    async fn a_call_that_may_have_run_never_ends_as_unavailable() {
        use tonic::Code::*;
        let only_unavailable = scripted(Retry::Idempotent, &[Unavailable]).await;
        assert!(
            matches!(only_unavailable, Err(Error::Unavailable { .. })),
            "{only_unavailable:?}"
        );
        let timed_out_first = scripted(Retry::Idempotent, &[DeadlineExceeded, Unavailable]).await;
        assert!(
            matches!(timed_out_first, Err(Error::OutcomeUnknown(_))),
            "{timed_out_first:?}"
        );
        // Not retried at all: the timeout itself is the answer.
        let once = scripted(Retry::Once, &[DeadlineExceeded]).await;
        assert!(!matches!(once, Err(Error::Unavailable { .. })), "{once:?}");
    }

    #[test]
    fn a_publish_whose_node_went_silent_is_not_sent_again() {
        // hyper's keep-alive timeout: UNAVAILABLE with a transport source,
        // after the request had left.
        let mut went_silent = tonic::Status::unavailable("http2 error");
        went_silent.set_source(Arc::new(std::io::Error::other("keep-alive timed out")));
        let publish = Attempt::judge(&went_silent, Retry::Once);
        assert!(publish.cut_off && publish.may_have_run, "{publish:?}");
        assert!(!publish.retryable, "{publish:?}");
        assert!(publish.node_unreachable, "{publish:?}");
        assert!(Attempt::judge(&went_silent, Retry::Idempotent).retryable);

        // A connection never made: the publish surely did not run.
        let refused = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        let publish = Attempt::judge(&refused, Retry::Once);
        assert!(!publish.may_have_run && publish.retryable, "{publish:?}");
        assert!(publish.node_unreachable, "{publish:?}");

        // UNAVAILABLE the server sent: it did not run; the node answered.
        let sent = Attempt::judge(&tonic::Status::unavailable("no leader"), Retry::Once);
        assert!(!sent.may_have_run && sent.retryable && !sent.node_unreachable);
    }
}
