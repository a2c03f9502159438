//! The broker's own introduction: the AMQP protocol header answered with
//! `connection.start`, whose server properties name the product and version (lapin does
//! not keep them). Nothing is authenticated; the socket is closed right after (the broker
//! logs a connection closed during its handshake).

use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::time::Duration;

use lapin::protocol::{AMQPClass, connection};
use lapin::tcp::{HandshakeError, OwnedTLSConfig, TcpStream};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPScheme, AMQPUri};

/// AMQP 0-9-1's protocol header.
const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
/// A `connection.start` is far smaller; a larger frame is not an AMQP broker talking.
const MAX_START_FRAME: usize = 1 << 20;

/// What a broker says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `product`, e.g. `RabbitMQ`.
    pub product: String,
    /// `version`, e.g. `4.3.6`.
    pub version: String,
    /// `cluster_name`, if the broker gives one.
    pub cluster_name: Option<String>,
}

impl ServerInfo {
    /// The major version (`4` of `4.3.6`), if it can be read.
    pub fn major(&self) -> Option<u32> {
        self.version.split('.').next()?.parse().ok()
    }

    /// `(major, minor)`, if they can be read.
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut parts = self.version.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }
}

/// Connects to `uri`'s node (TLS for `amqps://`, with `tls`), sends the protocol header and
/// reads `connection.start`, each step within `timeout`.
pub async fn server_info(uri: AMQPUri, tls: OwnedTLSConfig, timeout: Duration) -> io::Result<ServerInfo> {
    tokio::task::spawn_blocking(move || read_start(&uri, &tls, timeout)).await.map_err(io::Error::other)?
}

fn read_start(uri: &AMQPUri, tls: &OwnedTLSConfig, timeout: Duration) -> io::Result<ServerInfo> {
    let host = uri.authority.host.as_str();
    let address = (host, uri.authority.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")))?;
    let socket = std::net::TcpStream::connect_timeout(&address, timeout)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    let mut stream = TcpStream::from_std(socket)?;
    if uri.scheme == AMQPScheme::AMQPS {
        stream = stream.into_tls(host, tls.as_ref()).map_err(|error| match error {
            HandshakeError::Failure(error) => error,
            HandshakeError::WouldBlock(_) => io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake did not complete"),
        })?;
    }
    stream.write_all(PROTOCOL_HEADER)?;
    let mut header = [0u8; 7];
    stream.read_exact(&mut header)?;
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if header[0] != 1 || size > MAX_START_FRAME {
        return Err(not_amqp());
    }
    let mut payload = vec![0u8; size + 1];
    stream.read_exact(&mut payload)?;
    match lapin::protocol::parse_class(&payload[..size]) {
        Ok((_, AMQPClass::Connection(connection::AMQPMethod::Start(start)))) => Ok(info(&start.server_properties)),
        _ => Err(not_amqp()),
    }
}

fn not_amqp() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the answer is not an AMQP 0-9-1 connection.start")
}

fn info(properties: &FieldTable) -> ServerInfo {
    let text = |key: &str| match properties.inner().get(key) {
        Some(AMQPValue::LongString(value)) => Some(value.to_string()),
        Some(AMQPValue::ShortString(value)) => Some(value.to_string()),
        _ => None,
    };
    ServerInfo {
        product: text("product").unwrap_or_else(|| "unknown".into()),
        version: text("version").unwrap_or_else(|| "unknown".into()),
        cluster_name: text("cluster_name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_numbers() {
        let info = ServerInfo { product: "RabbitMQ".into(), version: "4.3.6".into(), cluster_name: None };
        assert_eq!((info.major(), info.major_minor()), (Some(4), Some((4, 3))));
        let odd = ServerInfo { version: "unknown".into(), ..info };
        assert_eq!((odd.major(), odd.major_minor()), (None, None));
    }
}
