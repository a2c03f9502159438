//! Opening a connection to the broker, the one way every command does it.
//!
//! Without `amqp.addresses` the connection goes to `amqp.url`'s host, as it always did.
//! With it, each address in turn replaces the URL's host and port (the user, password,
//! vhost and query stay the URL's; with `amqps://` the TLS server name checked is the
//! address's host), each attempt within `amqp.connect_timeout_secs`, and the first node
//! that completes the AMQP handshake is used.
//!
//! # Order
//!
//! Each process shuffles the addresses once, so a fleet given the same list spreads over
//! the nodes instead of all landing on the first. A connection opened later (after one was
//! lost) starts with the address after the one that last answered, so the node that was
//! just lost is tried last, and a process whose node went away moves to the next node of
//! its own order: the fleet of a lost node spreads over the others. Callers wait their
//! backoff between calls; one call tries every address once.
//!
//! With `amqp.shuffle_addresses = false` every connection tries the addresses as listed
//! instead: the first that answers is used, the listed first whenever it is up.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::{fmt, io};

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties, ErrorKind};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use secrecy::ExposeSecret;

use super::BrokerError;
use super::address::Address;
use crate::config::AmqpSettings;

/// An address that did not answer, and why (its error holds no secret).
#[derive(Debug)]
pub struct AddressFailure {
    /// The address, with the port that was tried.
    pub address: Address,
    /// Why connecting to it failed.
    pub error: BrokerError,
}

/// Every address of `amqp.addresses` that was tried, in the order tried, and why each failed.
#[derive(Debug)]
pub struct AddressFailures(pub Vec<AddressFailure>);

impl fmt::Display for AddressFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

/// `address: why; address: why...`
fn describe(failures: &[AddressFailure]) -> String {
    failures.iter().map(|f| format!("{}: {}", f.address, f.error)).collect::<Vec<_>>().join("; ")
}

/// Opens a connection to the broker of `settings` (the first of `amqp.addresses` that
/// answers, in this process's order, or `amqp.url`'s host), each attempt within
/// `amqp.connect_timeout_secs`; the connection name shows in the management UI.
pub async fn connect(settings: &AmqpSettings, name: &str) -> Result<Connection, BrokerError> {
    let tls = tls_config(settings)?;
    let uri = url(settings)?;
    if settings.addresses.is_empty() {
        return open(uri, settings, name, tls).await;
    }
    let targets: Vec<(Address, AMQPUri)> = settings.addresses.iter().map(|address| target(&uri, address)).collect();
    let start = NEXT.load(Ordering::Relaxed);
    let turns = if settings.shuffle_addresses { order(targets.len(), process_seed(), start) } else { (0..targets.len()).collect() };
    let mut failures = Vec::new();
    for (offset, index) in turns.into_iter().enumerate() {
        let (address, uri) = &targets[index];
        match open(uri.clone(), settings, name, tls.clone()).await {
            Ok(connection) => {
                NEXT.store((start % targets.len() + offset + 1) % targets.len(), Ordering::Relaxed);
                log_connected(address, &failures);
                return Ok(connection);
            }
            Err(error) => failures.push(AddressFailure { address: address.clone(), error }),
        }
    }
    Err(BrokerError::NoAddressAnswered(AddressFailures(failures)))
}

/// Every node a connection may go to, as listed in `amqp.addresses` (or `amqp.url`'s host
/// alone), each with the URL that reaches it: for checking the nodes one by one.
pub fn nodes(settings: &AmqpSettings) -> Result<Vec<(Address, AMQPUri)>, BrokerError> {
    let uri = url(settings)?;
    if settings.addresses.is_empty() {
        let address = Address::new(&uri.authority.host, uri.authority.port);
        return Ok(vec![(address, uri)]);
    }
    Ok(settings.addresses.iter().map(|address| target(&uri, address)).collect())
}

/// Opens a connection to the one node `uri` (see [`nodes`]), within
/// `amqp.connect_timeout_secs`.
pub async fn connect_node(settings: &AmqpSettings, uri: AMQPUri, name: &str) -> Result<Connection, BrokerError> {
    open(uri, settings, name, tls_config(settings)?).await
}

/// Where in this process's order the next connection starts (see the module doc).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The seed of this process's order of the addresses, chosen at the first connection.
fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(rand::random)
}

/// The indices of `count` addresses in the order `seed` shuffles them, beginning at
/// position `start` of that order (modulo `count`).
fn order(count: usize, seed: u64, start: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    order.rotate_left(start % count.max(1));
    order
}

/// `uri` with the host and port of `address` (the URL's port where the address has none);
/// the address is returned with the port it is tried on.
fn target(uri: &AMQPUri, address: &Address) -> (Address, AMQPUri) {
    let address = address.or_port(uri.authority.port);
    let mut uri = uri.clone();
    uri.authority.host = address.host().to_owned();
    uri.authority.port = address.port().unwrap_or(uri.authority.port);
    (address, uri)
}

/// Says which node the connection went to, and which did not answer before it.
fn log_connected(address: &Address, failures: &[AddressFailure]) {
    if failures.is_empty() {
        tracing::info!(broker_address = %address, "connected to the broker at {address}");
    } else {
        let skipped = describe(failures);
        tracing::warn!(broker_address = %address, "connected to the broker at {address}; before it, no answer from {skipped}");
    }
}

/// The TLS settings: the private CA of `amqp.ca_file`, if any.
pub fn tls_config(settings: &AmqpSettings) -> Result<OwnedTLSConfig, BrokerError> {
    let mut tls = OwnedTLSConfig::default();
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read_to_string(path).map_err(|source| BrokerError::CaFile { path: path.display().to_string(), source })?;
        tls.cert_chain = Some(pem);
    }
    Ok(tls)
}

/// Parses `amqp.url`. A URL with credentials and no host (`amqp://els:PASSWORD@/els`, for
/// use with `amqp.addresses`) gets lapin's default host, `localhost`, as a URL without
/// credentials and host (`amqp:///els`) does.
pub fn parse_url(url: &str) -> Result<AMQPUri, BrokerError> {
    let with_host = url.split_once("://").and_then(|(scheme, rest)| {
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        authority.ends_with('@').then(|| format!("{scheme}://{authority}localhost{tail}"))
    });
    // The parser's own error may quote the URL, password and all: say only what is wrong.
    with_host.as_deref().unwrap_or(url).parse().map_err(|_| BrokerError::BadUrl)
}

/// `amqp.url` parsed, with `amqp.heartbeat_secs` unless the URL asks for a heartbeat.
fn url(settings: &AmqpSettings) -> Result<AMQPUri, BrokerError> {
    let mut uri = parse_url(settings.url.expose_secret())?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(settings.heartbeat_secs);
    }
    Ok(uri)
}

/// Opens one connection to `uri` within `amqp.connect_timeout_secs`.
async fn open(uri: AMQPUri, settings: &AmqpSettings, name: &str, tls: OwnedTLSConfig) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    let secs = settings.connect_timeout_secs.max(1);
    let over_tls = uri.scheme == AMQPScheme::AMQPS;
    let connecting = Connection::connect_uri_with_config(uri, properties, tls, runtime);
    match tokio::time::timeout(Duration::from_secs(secs), connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) if over_tls && is_tls_failure(&error) => {
            let trusted_by = if settings.ca_file.is_some() { "amqp.ca_file" } else { "a system root (or set amqp.ca_file)" };
            Err(BrokerError::TlsRefused { trusted_by, source: error })
        }
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(BrokerError::ConnectTimeout { secs }),
    }
}

/// A TLS handshake that failed on this side: rustls reports a certificate it refuses (an
/// unknown issuer, another host's name, an expired one) as an I/O error of kind
/// `InvalidData`.
fn is_tls_failure(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::IOError(e) if e.kind() == io::ErrorKind::InvalidData)
}

/// How long closing a connection may take: lapin can fail to complete a close that races
/// its own close of dropped channels, and the broker cleans up when the socket goes anyway.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `connection` with `reason`, waiting at most [`CLOSE_TIMEOUT`] (a close that never
/// completes once hung `send` after its work was done).
pub async fn close(connection: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
}

/// Closes `channel` with `reason` if it is open, waiting for the broker's answer at most
/// [`CLOSE_TIMEOUT`]. A channel dropped open is closed by lapin in the background, and that
/// close can race the connection's (lapin then logs a hard error, UNEXPECTED-FRAME).
pub async fn close_channel(channel: &lapin::Channel, reason: &str) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_has_its_own_order_and_a_reconnect_starts_after_the_last_node() {
        let orders: Vec<Vec<usize>> = (0..20).map(|seed| order(3, seed, 0)).collect();
        for order in &orders {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "a permutation: every address once");
        }
        let firsts: std::collections::BTreeSet<usize> = orders.iter().map(|o| o[0]).collect();
        assert_eq!(firsts.len(), 3, "20 processes do not all start with the same node: {orders:?}");
        assert_eq!(order(3, 7, 0), order(3, 7, 0), "one order per seed");
        let first = order(3, 7, 0);
        assert_eq!(order(3, 7, 1), [first[1], first[2], first[0]]);
        assert_eq!(order(3, 7, 4), order(3, 7, 1), "the start wraps around");
        assert_eq!(order(1, 7, 5), [0]);
    }

    #[test]
    fn an_address_replaces_the_host_and_port_and_keeps_the_rest_of_the_url() {
        let uri: AMQPUri = "amqps://els:hunter2@balancer:5999/els?heartbeat=5".parse().unwrap();
        let (address, to) = target(&uri, &"rabbit-2.els.svc:5671".parse().unwrap());
        assert_eq!(address.to_string(), "rabbit-2.els.svc:5671");
        assert_eq!((to.authority.host.as_str(), to.authority.port), ("rabbit-2.els.svc", 5671), "the TLS server name is this host");
        assert_eq!(to.scheme, lapin::uri::AMQPScheme::AMQPS);
        assert_eq!((to.authority.userinfo.username.as_str(), to.authority.userinfo.password.as_str()), ("els", "hunter2"));
        assert_eq!((to.vhost.as_str(), to.query.heartbeat), ("els", Some(5)));
        let (address, to) = target(&uri, &"[fd00::2]".parse().unwrap());
        assert_eq!((address.to_string(), to.authority.host, to.authority.port), ("[fd00::2]:5999".into(), "fd00::2".into(), 5999));
    }

    #[test]
    fn a_url_may_leave_the_host_to_the_addresses() {
        for (url, vhost) in
            [("amqp://els:pw@/els", "els"), ("amqps://els:pw@", "/"), ("amqp://els:pw@?heartbeat=3", "/"), ("amqp:///x", "x")]
        {
            let uri = parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((uri.authority.host.as_str(), uri.vhost.as_str()), ("localhost", vhost), "{url}");
        }
        assert_eq!(parse_url("amqp://els:pw@/els").unwrap().authority.userinfo.password, "pw");
        assert!(matches!(parse_url("els:hunter2@rabbit"), Err(BrokerError::BadUrl)));
    }

    #[test]
    fn the_failures_name_each_address_in_turn() {
        let failures = AddressFailures(vec![
            AddressFailure { address: "rabbit-1:5672".parse().unwrap(), error: BrokerError::ConnectTimeout { secs: 3 } },
            AddressFailure { address: "rabbit-2:5672".parse().unwrap(), error: BrokerError::Nacked },
        ]);
        let text = BrokerError::NoAddressAnswered(failures).to_string();
        assert!(
            text.starts_with("none of the broker addresses of amqp.addresses answered: rabbit-1:5672: the broker did not complete"),
            "{text}"
        );
        assert!(text.contains("; rabbit-2:5672: the broker refused"), "{text}");
    }
}
