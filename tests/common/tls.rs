//! TLS in front of the real broker and the real simulator, as a hospital's broker (5671)
//! and the provincial gateway (HTTPS) are: a private certificate authority of the test
//! ([`TestCa`], written as PEM for `amqp.ca_file` and `platform.ca_file`) signs a
//! certificate for `localhost` and `127.0.0.1`, and [`TlsRelay`] ends TLS with it on a
//! loopback port and relays the plain bytes to its target.

#![allow(dead_code, reason = "each test binary uses a different part of the shared helpers")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority made for one test, and the server certificate it signed.
pub struct TestCa {
    ca_file: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl TestCa {
    /// A new authority whose certificate is written to `dir/ca.pem`, and a server
    /// certificate for `localhost` and `127.0.0.1` signed by it.
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "els-bridge test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write ca.pem");

        let server_key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server parameters");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let server = params.signed_by(&server_key, &ca).expect("server certificate");
        TestCa { ca_file, server_chain: vec![server.der().clone()], server_key: server_key.serialize_der() }
    }

    /// The authority's certificate (PEM), for `amqp.ca_file` and `platform.ca_file`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    fn acceptor(&self) -> TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)
            .expect("the server certificate");
        TlsAcceptor::from(Arc::new(config))
    }
}

/// A loopback port that ends TLS with the [`TestCa`]'s server certificate and relays to a
/// plain target; stops when dropped.
pub struct TlsRelay {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsRelay {
    /// Relays a fresh loopback port, TLS ended with `ca`'s server certificate, to `target`
    /// (`host:port`). A client that gives up on the handshake only ends its own connection.
    pub async fn start(target: String, ca: &TestCa) -> TlsRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the TLS relay");
        let address = listener.local_addr().expect("the TLS relay's address");
        let acceptor = ca.acceptor();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, target) = (acceptor.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut server) = TcpStream::connect(&target).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        TlsRelay { address, task }
    }

    /// The relay's `localhost:port`, the name its certificate gives.
    pub fn authority(&self) -> String {
        format!("localhost:{}", self.address.port())
    }

    /// `url` (an `amqp://` URL of the broker) as the `amqps://` URL of this relay.
    pub fn amqps_url(&self, url: &str) -> String {
        let rest = url.strip_prefix("amqp://").expect("an amqp:// URL");
        let (userinfo, after) = rest.split_once('@').expect("a URL with credentials");
        let path = after.find('/').map_or("", |i| &after[i..]);
        format!("amqps://{userinfo}@{}{path}", self.authority())
    }

    /// `url` (an `http://` URL of the simulator) as the `https://` URL of this relay.
    pub fn https_url(&self, url: &str) -> String {
        let rest = url.strip_prefix("http://").expect("an http:// URL");
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("https://{}{path}", self.authority())
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
