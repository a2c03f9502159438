//! RabbitMQ: connecting (to one of several node addresses, with rustls and an optional
//! private CA), the topology the worker declares, confirmed publishing, and the fleet-wide
//! token store and msgid slots.

pub mod address;
pub mod connect;
pub mod log;
pub mod msgid_slot;
pub mod outbox;
pub mod presence;
pub mod publisher;
pub mod token_store;
pub mod topology;

pub use connect::{close, close_channel, connect};
pub use msgid_slot::claim_msgid_slot;
pub use publisher::Publisher;
pub use token_store::AmqpTokenStore;
pub use topology::Topology;

/// Why the broker cannot be used right now.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// `amqp.ca_file` cannot be read.
    #[error("amqp.ca_file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    /// Connecting, declaring, publishing or consuming failed (the URL is never shown).
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// A stream the worker reads (the ledger, the tokens) is no longer read.
    #[error("the ledger or token stream is no longer read (deleted, or a stream member lost); reconnecting declares it again")]
    StreamLost,
    /// The broker ended the consumer (connection lost, or the queue was deleted).
    #[error("the broker ended the consumer (connection lost or queue deleted)")]
    ConsumerEnded,
    /// A stream log built on the connection (the ledger, the tokens) could not be opened.
    #[error(transparent)]
    Stream(Box<log::LogError>),
    /// The platform client could not be built (its CA file, its TLS settings).
    #[error(transparent)]
    Platform(#[from] crate::platform::client::ClientError),
    /// `amqp.url` does not parse (the URL is never shown: it holds the password).
    #[error(
        "amqp.url is not a valid AMQP URL; expected amqp://USER:PASSWORD@HOST:PORT/VHOST (or amqps://), with the vhost \
         percent-encoded (/ is %2f) and characters like @ : / in the password percent-encoded"
    )]
    BadUrl,
    /// A publish was not confirmed in time (a blocked connection under a memory or disk
    /// alarm, a link that stopped carrying anything).
    #[error("the broker did not confirm a publish within {secs} s (a memory or disk alarm, or a broken link)")]
    ConfirmTimeout { secs: u64 },
    /// No address of `amqp.addresses` answered; each is named with its reason.
    #[error("none of the broker addresses of amqp.addresses answered: {0}")]
    NoAddressAnswered(connect::AddressFailures),
    /// The broker's TLS certificate was refused (`amqps://`).
    #[error(
        "the TLS handshake with the broker failed ({source}): its certificate must name the host connected to (amqp.url or \
         amqp.addresses) and be signed by {trusted_by}"
    )]
    TlsRefused { trusted_by: &'static str, source: lapin::Error },
    /// Opening the connection took longer than `amqp.connect_timeout_secs`.
    #[error(
        "the broker did not complete the connection within {secs} s (amqp.connect_timeout_secs): is the address an \
         AMQP port of a running broker (not a load balancer without backends, not the management port)?"
    )]
    ConnectTimeout { secs: u64 },
    /// Every msgid slot is held by a live connection of the fleet.
    #[error(
        "all {slots} msgid slots ({first} to {last}) are held by other processes (RESOURCE-LOCKED): at most {slots} \
         worker replicas and `send` runs with [amqp] can talk to the platform per vhost and name prefix; scale the fleet \
         to {slots} or fewer (this process waits for a slot to become free)"
    )]
    NoMsgidSlot { slots: u16, first: String, last: String },
    /// The broker did not confirm a publish.
    #[error("the broker refused to take a message (negative confirm)")]
    Nacked,
}

impl From<log::LogError> for BrokerError {
    /// A log error as a broker error: the broker's own as it is, any other as `Stream`.
    fn from(error: log::LogError) -> Self {
        match error {
            log::LogError::Broker(error) => error,
            other => BrokerError::Stream(Box::new(other)),
        }
    }
}
