//! A TCP relay on loopback between a client and the broker that can go silent the way a
//! dead NAT entry, a failed-over firewall or a pulled cable does: [`Relay::freeze`] makes
//! every connection open at that moment stop carrying data in both directions without
//! closing it (what arrives is read and dropped); connections made afterwards are relayed
//! as usual. [`Relay::throttle`] makes it a slow link instead.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running relay; stops when dropped.
pub struct Relay {
    address: SocketAddr,
    /// Connections accepted while this was lower than their number are frozen.
    frozen_below: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    /// Bytes a second each direction of each connection carries at most (0: no limit).
    rate: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relays a fresh loopback port to `target` (`host:port`).
    pub async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let address = listener.local_addr().expect("the relay's address");
        let frozen_below = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let rate = Arc::new(AtomicU64::new(0));
        let (frozen, count, limit) = (Arc::clone(&frozen_below), Arc::clone(&accepted), Arc::clone(&rate));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = count.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(server) = TcpStream::connect(&target).await else { continue };
                let link = Link { number, frozen_below: Arc::clone(&frozen), rate: Arc::clone(&limit) };
                tokio::spawn(relay(client, server, link));
            }
        });
        Relay { address, frozen_below, accepted, rate, task }
    }

    /// The relay's `host:port`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `url` (an AMQP URL) pointed at the relay instead of the broker.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (userinfo, after) = rest.split_once('@').map_or(("", rest), |(u, a)| (u, a));
        let path = after.find('/').map_or("", |i| &after[i..]);
        let at = if userinfo.is_empty() { String::new() } else { format!("{userinfo}@") };
        format!("{scheme}://{at}{}{path}", self.address)
    }

    /// Every connection open now stops carrying data (and stays open).
    pub fn freeze(&self) {
        self.frozen_below.store(self.accepted.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    }

    /// Every connection carries at most `bytes_per_second` in each direction from now on.
    pub fn throttle(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::SeqCst);
    }

    /// How many connections the relay has accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a relayed connection's pipes consult.
#[derive(Clone)]
struct Link {
    number: u64,
    frozen_below: Arc<AtomicU64>,
    rate: Arc<AtomicU64>,
}

async fn relay(client: TcpStream, server: TcpStream, link: Link) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(pipe(client_read, server_write, link.clone()));
    let down = tokio::spawn(pipe(server_read, client_write, link));
    let _ = tokio::join!(up, down);
}

/// Copies until either side closes; once frozen, reads and drops; when throttled, pauses
/// after each chunk as long as the rate asks.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, link: Link) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if link.number < link.frozen_below.load(Ordering::SeqCst) {
            continue; // silent: dropped, and the connection stays open
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
        let rate = link.rate.load(Ordering::SeqCst);
        if rate > 0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(read as f64 / rate as f64)).await;
        }
    }
}
