//! Peer proxies: the latency nemesis's way to slow links down, since the
//! kernel this runs on has no netem. In runs whose nemesis includes
//! `latency`, every node's `--peers` names node j as `127.0.0.1:<50100 + j>`
//! (the same list for every node, so every replica writes the same first
//! membership entry). In each node's namespace the harness listens on those
//! ports and forwards to node j's real peer listener; connections leave from
//! the node's own namespace and address, so the nftables partitions and
//! packet loss still apply to them. Clients never use these addresses: nodes
//! hand clients their public gRPC addresses (`ClusterStatus`).
//!
//! Each namespace gets one thread (moved into it before it opens a socket)
//! running a single-threaded tokio runtime; stopping the proxies stops the
//! threads, which closes every socket they opened.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::peer_listen_addr;
use crate::net::Net;

/// Node j's proxy listens on this port plus j.
const PORT_BASE: u16 = 50100;
/// The most bytes one read takes off a socket; each is delayed as a unit.
const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Chunks held per direction of a connection; when full, the proxy stops
/// reading and TCP pushes back on the sender.
const QUEUE_CHUNKS_MAX: usize = 256;
/// Connections one listener forwards at once (a node opens a few per peer).
const CONNECTIONS_MAX: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The address every node (and client) uses for node `node`.
pub fn peer_addr(node: u64) -> String {
    format!("127.0.0.1:{}", u64::from(PORT_BASE) + node)
}

/// A delay drawn uniformly from `base_ms - jitter_ms ..= base_ms + jitter_ms`
/// for each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkDelay {
    pub base_ms: u64,
    pub jitter_ms: u64,
}

impl LinkDelay {
    fn range_ms(self) -> std::ops::RangeInclusive<u64> {
        self.base_ms.saturating_sub(self.jitter_ms)..=self.base_ms + self.jitter_ms
    }

    fn sample(self, rng: &mut impl Rng) -> Duration {
        Duration::from_millis(rng.random_range(self.range_ms()))
    }
}

/// Connections opened by node `from` towards node `to`.
type Link = (u64, u64);

/// The delays in force, per link; a link not named is not delayed.
#[derive(Debug, Default)]
struct Delays {
    links: Mutex<HashMap<Link, LinkDelay>>,
}

impl Delays {
    fn sample(&self, link: Link) -> Duration {
        let delay = self.links.lock().get(&link).copied();
        delay.map_or(Duration::ZERO, |d| d.sample(&mut rand::rng()))
    }
}

/// When each chunk of one direction of a connection may leave: when it
/// arrived plus its own delay, but never before the chunk read before it,
/// so that jitter delays bytes without reordering them. A chunk thus leaves
/// within its own delay bounds, since the one before it did too and arrived
/// no later.
#[derive(Debug, Default)]
struct DueTimes {
    last: Option<Instant>,
}

impl DueTimes {
    fn next(&mut self, arrived: Instant, delay: Duration) -> Instant {
        let own = arrived + delay;
        let due = self.last.map_or(own, |last| own.max(last));
        self.last = Some(due);
        due
    }
}

/// Copies `from` to `to` until `from` ends (then shuts `to` down), holding
/// each chunk until it is due. `delay` is asked once per chunk, so a fault
/// that starts or heals applies to open connections at once.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    delay: impl Fn() -> Duration,
) -> std::io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS_MAX);
    let reading = async move {
        let mut due_times = DueTimes::default();
        loop {
            let mut chunk = vec![0; CHUNK_BYTES_MAX];
            let n = from.read(&mut chunk).await?;
            if n == 0 {
                // Dropping the queue lets the writer drain it and finish.
                return std::io::Result::Ok(());
            }
            chunk.truncate(n);
            let due = due_times.next(Instant::now(), delay());
            if queue.send((due, chunk)).await.is_err() {
                return Ok(());
            }
        }
    };
    let writing = async move {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reading, writing).map(|_| ())
}

/// One listener: forwards what arrives on `port` to `upstream`, delayed as
/// `link` is (never, for clients' listeners).
#[derive(Debug, Clone, Copy)]
struct Route {
    port: u16,
    upstream: SocketAddr,
    link: Option<Link>,
}

async fn forward(inbound: TcpStream, route: Route, delays: Arc<Delays>) {
    // A node that is down or cut off: the caller sees its connection closed
    // where it would have seen a refused or timed-out connect.
    let Ok(Ok(outbound)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(route.upstream)).await
    else {
        return;
    };
    // Nagle's algorithm would add delays of its own.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let delay = || {
        route
            .link
            .map_or(Duration::ZERO, |link| delays.sample(link))
    };
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    // Either direction failing closes both, as a reset would.
    let _ = tokio::try_join!(
        pipe(inbound_read, outbound_write, &delay),
        pipe(outbound_read, inbound_write, &delay)
    );
}

async fn accept_loop(listener: TcpListener, route: Route, delays: Arc<Delays>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((inbound, _)) => {
                let delays = delays.clone();
                tokio::spawn(async move {
                    forward(inbound, route, delays).await;
                    drop(slot);
                });
            }
            // Out of file descriptors or the like: back off, do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Moves the calling thread into `ns` and binds every route's listener there.
fn bind_in(
    ns: &str,
    routes: Vec<Route>,
) -> anyhow::Result<(tokio::runtime::Runtime, Vec<(TcpListener, Route)>)> {
    crate::net::enter(ns)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listeners = runtime.block_on(async {
        let mut listeners = Vec::new();
        for route in routes {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, route.port))
                .await
                .with_context(|| format!("binding proxy port {} in {ns}", route.port))?;
            listeners.push((listener, route));
        }
        anyhow::Ok(listeners)
    })?;
    Ok((runtime, listeners))
}

/// Every node's proxy listener for connections opened by node `from`.
fn routes(nodes: u64, from: u64) -> anyhow::Result<Vec<Route>> {
    (1..=nodes)
        .map(|to| {
            Ok(Route {
                port: PORT_BASE + u16::try_from(to)?,
                upstream: peer_listen_addr(to).parse()?,
                // A node's connections to itself are never delayed.
                link: (from != to).then_some((from, to)),
            })
        })
        .collect()
}

#[derive(Debug)]
pub struct PeerProxies {
    delays: Arc<Delays>,
    stop: watch::Sender<bool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl PeerProxies {
    /// Starts the proxies in every node's namespace; returns once every
    /// listener is bound.
    pub fn start(net: &Net, nodes: u64) -> anyhow::Result<PeerProxies> {
        let proxies = PeerProxies {
            delays: Arc::default(),
            stop: watch::channel(false).0,
            threads: Mutex::new(Vec::new()),
        };
        // On an error, dropping `proxies` stops the threads already started.
        for node in 1..=nodes {
            proxies.spawn_in(net.node_ns(node), routes(nodes, node)?)?;
        }
        Ok(proxies)
    }

    fn spawn_in(&self, ns: String, routes: Vec<Route>) -> anyhow::Result<()> {
        let (ready, bound) = std::sync::mpsc::sync_channel(1);
        let delays = self.delays.clone();
        let mut stop = self.stop.subscribe();
        let thread = std::thread::Builder::new()
            .name(format!("proxy {ns}"))
            .spawn(move || match bind_in(&ns, routes) {
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
                Ok((runtime, listeners)) => {
                    let _ = ready.send(Ok(()));
                    runtime.block_on(async move {
                        for (listener, route) in listeners {
                            tokio::spawn(accept_loop(listener, route, delays.clone()));
                        }
                        // Also ends when the sender is dropped.
                        let _ = stop.wait_for(|stop| *stop).await;
                    });
                    // Dropping the runtime drops every task and so closes
                    // every listener and connection.
                }
            })
            .context("starting a proxy thread")?;
        self.threads.lock().push(thread);
        bound
            .recv()
            .context("a proxy thread ended before binding")?
    }

    /// Delays both nodes' connections to each other, both ways, for every
    /// pair.
    pub fn delay(&self, pairs: &[(u64, u64)], delay: LinkDelay) {
        let mut links = self.delays.links.lock();
        for (a, b) in pairs {
            links.insert((*a, *b), delay);
            links.insert((*b, *a), delay);
        }
    }

    pub fn heal(&self) {
        self.delays.links.lock().clear();
    }

    /// Stops every proxy thread and waits for it. Safe to call twice.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for PeerProxies {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn due_times_keep_order_and_each_chunk_within_its_delay_bounds() {
        let delay = LinkDelay {
            base_ms: 100,
            jitter_ms: 60,
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mut due_times = DueTimes::default();
        let start = Instant::now();
        let mut arrived = start;
        let mut previous = start;
        let mut clamped = 0;
        for _ in 0..10_000 {
            arrived += Duration::from_millis(rng.random_range(0..30));
            let own = delay.sample(&mut rng);
            let due = due_times.next(arrived, own);
            assert!(due >= previous, "a chunk would overtake the one before it");
            assert!(due >= arrived + Duration::from_millis(40));
            assert!(due <= arrived + Duration::from_millis(160));
            if due > arrived + own {
                clamped += 1;
            }
            previous = due;
        }
        // The jitter exceeds the gaps between chunks, so order was at stake.
        assert!(clamped > 0);
    }

    #[test]
    fn sampled_delays_stay_within_base_plus_or_minus_jitter_and_vary() {
        let delay = LinkDelay {
            base_ms: 50,
            jitter_ms: 20,
        };
        let mut rng = StdRng::seed_from_u64(2);
        let samples: Vec<u64> = (0..1000)
            .map(|_| delay.sample(&mut rng).as_millis() as u64)
            .collect();
        assert!(samples.iter().all(|ms| (30..=70).contains(ms)));
        assert_eq!(samples.iter().min(), Some(&30));
        assert_eq!(samples.iter().max(), Some(&70));
    }

    #[test]
    fn only_the_named_pairs_are_delayed_and_both_ways() {
        let delays = Delays::default();
        let proxies = PeerProxies {
            delays: Arc::new(delays),
            stop: watch::channel(false).0,
            threads: Mutex::new(Vec::new()),
        };
        let fixed = LinkDelay {
            base_ms: 80,
            jitter_ms: 0,
        };
        proxies.delay(&[(1, 2)], fixed);
        assert_eq!(proxies.delays.sample((1, 2)), Duration::from_millis(80));
        assert_eq!(proxies.delays.sample((2, 1)), Duration::from_millis(80));
        assert_eq!(proxies.delays.sample((1, 3)), Duration::ZERO);
        proxies.heal();
        assert_eq!(proxies.delays.sample((1, 2)), Duration::ZERO);
    }

    #[test]
    fn a_node_is_not_delayed_to_itself_and_reaches_peer_listeners() {
        let node2: Vec<Option<Link>> = routes(3, 2).unwrap().iter().map(|r| r.link).collect();
        assert_eq!(node2, vec![Some((2, 1)), None, Some((2, 3))]);
        assert_eq!(
            routes(3, 2).unwrap()[0].upstream,
            peer_listen_addr(1).parse().unwrap()
        );
        assert_eq!(peer_addr(2), format!("127.0.0.1:{}", PORT_BASE + 2));
    }

    /// Writes `chunks` into a pipe delayed by `delay`; returns what came
    /// out and how long after the first write the first byte did.
    async fn through_pipe(chunks: &[Vec<u8>], delay: LinkDelay) -> (Vec<u8>, Duration) {
        let (mut sender, pipe_in) = tokio::io::duplex(1024);
        let (pipe_out, mut receiver) = tokio::io::duplex(1024);
        let piping = tokio::spawn(pipe(pipe_in, pipe_out, move || {
            delay.sample(&mut rand::rng())
        }));
        let sent_at = Instant::now();
        let written = chunks.to_vec();
        let writing = tokio::spawn(async move {
            for chunk in written {
                sender.write_all(&chunk).await.unwrap();
            }
            // Dropping the sender ends the pipe's input.
        });
        let mut first = [0u8; 1];
        receiver.read_exact(&mut first).await.unwrap();
        let first_after = sent_at.elapsed();
        let mut received = first.to_vec();
        receiver.read_to_end(&mut received).await.unwrap();
        writing.await.unwrap();
        piping.await.unwrap().unwrap();
        (received, first_after)
    }

    #[tokio::test]
    async fn a_delayed_pipe_delivers_every_byte_in_order_no_sooner_than_the_delay() {
        let chunks: Vec<Vec<u8>> = (0..200u32)
            .map(|i| i.to_be_bytes().repeat(1 + (i as usize % 50)))
            .collect();
        let delay = LinkDelay {
            base_ms: 20,
            jitter_ms: 15,
        };
        let (received, first_after) = through_pipe(&chunks, delay).await;
        assert_eq!(received, chunks.concat());
        assert!(first_after >= Duration::from_millis(5), "{first_after:?}");
    }

    #[tokio::test]
    async fn an_undelayed_pipe_delivers_every_byte_in_order() {
        let chunks: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let none = LinkDelay {
            base_ms: 0,
            jitter_ms: 0,
        };
        let (received, _) = through_pipe(&chunks, none).await;
        assert_eq!(received, chunks.concat());
    }
}
