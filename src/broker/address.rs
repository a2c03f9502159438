//! One entry of `amqp.addresses`: a broker node as `host[:port]`, like Spring's
//! `spring.rabbitmq.addresses` and the Java client's `Address`. The user, password, vhost
//! and query come from `amqp.url`; an address holds no secret, so it may be logged and
//! named in errors.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// A broker node: a host name or IP address (IPv6 in brackets) and, optionally, a port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Address {
    host: String,
    port: Option<u16>,
}

/// Why an entry of `amqp.addresses` is not `host[:port]`. An entry that may hold a
/// credential (it looks like a URL) is never quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing between two commas, or an empty string.
    #[error("amqp.addresses has an empty entry (two commas in a row, or a trailing comma?)")]
    Empty,
    /// A URL, or user and password, where `host[:port]` belongs.
    #[error(
        "amqp.addresses has an entry that looks like a URL or holds credentials (not shown): an address is host[:port], \
         e.g. rabbit-1:5672; the user, password and vhost are taken from amqp.url"
    )]
    NotHostPort,
    /// The port is not a number from 1 to 65535.
    #[error("amqp.addresses entry {0:?}: the port must be a number from 1 to 65535")]
    BadPort(String),
    /// The host is empty or has characters no host name has.
    #[error("amqp.addresses entry {0:?}: expected host[:port] with a host name, an IPv4 address or an IPv6 address in brackets")]
    BadHost(String),
    /// An IPv6 address without brackets: where its port starts is ambiguous.
    #[error("amqp.addresses entry {0:?}: write an IPv6 address in brackets, e.g. [fd00::1]:5672")]
    Ipv6WithoutBrackets(String),
}

impl Address {
    /// The node at `host` (an IPv6 address without brackets) and `port`.
    pub fn new(host: &str, port: u16) -> Address {
        Address { host: host.to_owned(), port: Some(port) }
    }

    /// The host, as the TCP connection and the TLS server name check use it (IPv6
    /// without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, if the entry gave one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// This address with `port` where the entry gave none.
    pub fn or_port(&self, port: u16) -> Address {
        Address { host: self.host.clone(), port: Some(self.port.unwrap_or(port)) }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    /// Parses `host`, `host:port`, `[ipv6]` or `[ipv6]:port`, spaces around it ignored.
    fn from_str(entry: &str) -> Result<Address, AddressError> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(AddressError::Empty);
        }
        if entry.contains('@') || entry.contains("://") {
            return Err(AddressError::NotHostPort);
        }
        let (host, port) = split(entry)?;
        let port = port.map(|p| parse_port(entry, p)).transpose()?;
        Ok(Address { host: host.to_owned(), port })
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;

    fn try_from(entry: String) -> Result<Address, AddressError> {
        entry.parse()
    }
}

impl fmt::Display for Address {
    /// `host[:port]`, an IPv6 host in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// The host and the port text of an entry (checked: a host name, an IPv4 address or a
/// bracketed IPv6 address).
fn split(entry: &str) -> Result<(&str, Option<&str>), AddressError> {
    let bad_host = || AddressError::BadHost(entry.to_owned());
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad_host)?;
        ip.parse::<Ipv6Addr>().map_err(|_| bad_host())?;
        return match after {
            "" => Ok((ip, None)),
            _ => after.strip_prefix(':').map(|port| (ip, Some(port))).ok_or_else(bad_host),
        };
    }
    let (host, port) = match entry.split_once(':') {
        Some((_, port)) if port.contains(':') => return Err(AddressError::Ipv6WithoutBrackets(entry.to_owned())),
        Some((host, port)) => (host, Some(port)),
        None => (entry, None),
    };
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.is_empty() || !host.chars().all(name_char) || host.starts_with(['-', '.']) {
        return Err(bad_host());
    }
    Ok((host, port))
}

fn parse_port(entry: &str, port: &str) -> Result<u16, AddressError> {
    let number = port.parse::<u16>().ok().filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()));
    number.ok_or_else(|| AddressError::BadPort(entry.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(entry: &str) -> (String, Option<u16>, String) {
        let address: Address = entry.parse().unwrap_or_else(|e| panic!("{entry}: {e}"));
        (address.host().to_owned(), address.port(), address.to_string())
    }

    #[test]
    fn host_names_and_ip_addresses_with_or_without_a_port() {
        assert_eq!(parsed("rabbit-1:5672"), ("rabbit-1".into(), Some(5672), "rabbit-1:5672".into()));
        assert_eq!(parsed(" rabbit-2.els.svc "), ("rabbit-2.els.svc".into(), None, "rabbit-2.els.svc".into()));
        assert_eq!(parsed("10.0.0.7:5671"), ("10.0.0.7".into(), Some(5671), "10.0.0.7:5671".into()));
        assert_eq!(parsed("[fd00::1]:5672"), ("fd00::1".into(), Some(5672), "[fd00::1]:5672".into()));
        assert_eq!(parsed("[::1]"), ("::1".into(), None, "[::1]".into()));
        let address: Address = "rabbit-3".parse().unwrap();
        assert_eq!(address.or_port(5671).to_string(), "rabbit-3:5671");
        assert_eq!(parsed("rabbit-3:5673").0, "rabbit-3");
        assert_eq!("rabbit-3:5673".parse::<Address>().unwrap().or_port(5671).port(), Some(5673));
    }

    #[test]
    fn mistakes_are_named_and_credentials_never_quoted() {
        assert_eq!("".parse::<Address>(), Err(AddressError::Empty));
        assert_eq!("  ".parse::<Address>(), Err(AddressError::Empty));
        for port in ["rabbit:", "rabbit:0", "rabbit:65536", "rabbit:+5672", "rabbit:amqp", "[::1]:x"] {
            assert_eq!(port.parse::<Address>(), Err(AddressError::BadPort(port.into())), "{port}");
        }
        for host in [":5672", "rab bit:5672", "rabbit/x", "-rabbit", "[::1", "[nope]:5672", "[::1]5672"] {
            assert_eq!(host.parse::<Address>(), Err(AddressError::BadHost(host.into())), "{host}");
        }
        assert_eq!("fd00::1".parse::<Address>(), Err(AddressError::Ipv6WithoutBrackets("fd00::1".into())));
        for secret in ["amqp://els:hunter2@rabbit-1", "els:hunter2@rabbit-1:5672"] {
            let error = secret.parse::<Address>().unwrap_err();
            assert_eq!(error, AddressError::NotHostPort);
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }
}
