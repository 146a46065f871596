//! A TCP proxy that injects faults between an adapter and its broker:
//! latency per direction, a stall of the requests that carry a marker, a
//! switch that resets every connection, and an outage during which new
//! connections are refused. `tc netem` is not
//! available on the project's machines, so tests bring their own network.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes in flight per direction before the reader waits: bounded so that
/// added latency limits throughput the way a real long link's window
/// would. Counted in bytes, as a TCP window is (4 MiB, Linux's largest
/// default send buffer), not in the reads that carried them: a client
/// that writes small frames must not see a narrower link than one that
/// writes large ones.
const IN_FLIGHT_BYTES: u32 = 4 * 1024 * 1024;
/// Most bytes read (and so delayed) as one chunk.
const CHUNK: usize = 64 * 1024;

/// A running proxy on 127.0.0.1. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// Added one-way delay, microseconds: client → upstream, upstream → client.
    delay_up: AtomicU64,
    delay_down: AtomicU64,
    refusing: AtomicBool,
    /// Client → upstream chunks holding these bytes are held this long.
    stall: std::sync::Mutex<Option<(Vec<u8>, Duration)>>,
    /// Bumped to reset every open connection.
    cuts: watch::Sender<u64>,
    open: AtomicUsize,
}

impl FaultProxy {
    /// Starts a proxy to `upstream`, listening on an ephemeral port of 127.0.0.1.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            delay_up: AtomicU64::new(0),
            delay_down: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            stall: std::sync::Mutex::new(None),
            cuts: watch::channel(0).0,
            open: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            accept,
        })
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds one-way latency: `up` on client → upstream, `down` on the way back.
    /// A round trip gains `up + down`.
    pub fn set_latency(&self, up: Duration, down: Duration) {
        self.shared
            .delay_up
            .store(up.as_micros() as u64, Ordering::Relaxed);
        self.shared
            .delay_down
            .store(down.as_micros() as u64, Ordering::Relaxed);
    }

    /// Holds each client → upstream chunk that contains `marker` (an HTTP
    /// request naming its operation, say) for `delay`, and what follows it
    /// on that connection; other connections pass as before. `None` ends it.
    pub fn stall_matching(&self, stall: Option<(&[u8], Duration)>) {
        *self
            .shared
            .stall
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            stall.map(|(marker, delay)| (marker.to_vec(), delay));
    }

    /// Resets every open connection (both sides see a TCP reset).
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// While on, new connections are reset as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Cuts every connection and refuses new ones for `outage`, in the background.
    pub fn cut_for(&self, outage: Duration) {
        self.set_refusing(true);
        self.cut();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            shared.refusing.store(false, Ordering::SeqCst);
        });
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.refusing.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        tokio::spawn(connection(client, shared.clone()));
    }
}

/// Closes with a TCP reset rather than a clean FIN, as a network failure would look.
fn reset(stream: TcpStream) {
    // Linger zero makes close send RST; blocking on close cannot happen with zero.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    shared.open.fetch_add(1, Ordering::Relaxed);
    let mut cuts = shared.cuts.subscribe();
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pump(client_read, upstream_write, shared.clone(), true);
    let down = pump(upstream_read, client_write, shared.clone(), false);
    tokio::select! {
        // Both directions ended cleanly (FIN passed on each way).
        _ = async { tokio::join!(up, down) } => {}
        // A cut drops both pumps; their write halves reset the sockets.
        _ = cuts.changed() => {}
    }
    shared.open.fetch_sub(1, Ordering::Relaxed);
}

/// Copies one direction, delaying each chunk by the current latency, and
/// passes a clean end of stream on. `None` when either side failed.
async fn pump(
    mut from: OwnedReadHalf,
    to: OwnedWriteHalf,
    shared: Arc<Shared>,
    upward: bool,
) -> Option<()> {
    let window = Arc::new(Semaphore::new(IN_FLIGHT_BYTES as usize));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Bytes, OwnedSemaphorePermit)>();
    let writer = async move {
        let mut to = ResetOnDrop(Some(to));
        while let Some((due, chunk, permit)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            to.0.as_mut()?.write_all(&chunk).await.ok()?;
            drop(permit);
        }
        // Clean end of the other side: pass the FIN on.
        to.0.take()?.shutdown().await.ok()
    };
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await.ok()?;
            if n == 0 {
                return Some(());
            }
            let delay = if upward {
                &shared.delay_up
            } else {
                &shared.delay_down
            };
            let mut due = Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
            if upward {
                due += stall_of(&shared, &buf[..n]);
            }
            // n ≤ CHUNK, far below u32::MAX.
            let permit = window.clone().acquire_many_owned(n as u32).await.ok()?;
            tx.send((due, Bytes::copy_from_slice(&buf[..n]), permit))
                .ok()?;
        }
    };
    let (read, written) = tokio::join!(reader, writer);
    read.and(written)
}

/// How long `chunk` is held by [`FaultProxy::stall_matching`].
fn stall_of(shared: &Shared, chunk: &[u8]) -> Duration {
    let stall = shared
        .stall
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &*stall {
        Some((marker, delay)) if chunk.windows(marker.len()).any(|w| w == marker.as_slice()) => {
            *delay
        }
        _ => Duration::ZERO,
    }
}

/// A write half that resets its socket when dropped unclosed (on a cut).
struct ResetOnDrop(Option<OwnedWriteHalf>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(half) = self.0.take() {
            // SO_LINGER applies to the whole socket, which the read half shares.
            #[allow(deprecated)]
            let _ = half.as_ref().set_linger(Some(Duration::ZERO));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn ping(stream: &mut TcpStream) -> io::Result<Duration> {
        let start = std::time::Instant::now();
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(start.elapsed())
    }

    #[tokio::test]
    async fn forwards_and_adds_latency_per_direction() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let plain = ping(&mut s).await.unwrap();
        assert!(plain < Duration::from_millis(50), "{plain:?}");
        proxy.set_latency(Duration::from_millis(30), Duration::from_millis(60));
        let slow = ping(&mut s).await.unwrap();
        assert!(
            slow >= Duration::from_millis(90),
            "round trip {slow:?} < 90 ms"
        );
        assert!(slow < Duration::from_millis(400), "round trip {slow:?}");
        assert_eq!(proxy.open_connections(), 1);
    }

    #[tokio::test]
    async fn cut_resets_open_connections_and_refusing_blocks_new_ones() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        ping(&mut s).await.unwrap();
        proxy.cut_for(Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ping(&mut s).await.is_err(), "a cut connection still works");

        // During the outage a new connection is reset straight away.
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            ping(&mut refused).await.is_err(),
            "connected during the outage"
        );

        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut back = TcpStream::connect(proxy.addr()).await.unwrap();
        ping(&mut back).await.unwrap();
    }

    #[tokio::test]
    async fn latency_does_not_serialise_throughput() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        proxy.set_latency(Duration::from_millis(50), Duration::ZERO);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let start = std::time::Instant::now();
        // 20 writes back to back arrive about one delay later, not 20 delays.
        for _ in 0..20 {
            s.write_all(b"ping").await.unwrap();
        }
        let mut buf = vec![0u8; 80];
        s.read_exact(&mut buf).await.unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_millis(500),
            "{took:?}"
        );
    }
}
