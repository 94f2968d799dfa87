//! TLS for both listeners, with optional client-certificate verification (mutual TLS).
//!
//! One crypto provider only (ring), so rustls never has two to choose from. gRPC uses tonic's
//! own TLS acceptor; HTTP uses a rustls acceptor built from the same files, and [`handshakes`]
//! completes its handshakes off the accept loop so one slow client cannot hold up others. Files are read once at start; a bad file stops the server with its name.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::ServeConfig;
use crate::connections::{Activity, Counted, Tracked};
use crate::error::Error;

/// How long a client may take to complete a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings for both listeners.
pub struct Tls {
    /// For tonic's server builder.
    pub grpc: ServerTlsConfig,
    /// For the HTTP listener.
    pub http: TlsAcceptor,
}

impl Tls {
    /// Loads the certificate, key and optional client CA named in the configuration;
    /// `None` when TLS is not configured.
    pub fn load(config: &ServeConfig) -> Result<Option<Self>, Error> {
        let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if config.tls_client_ca.is_none() => return Ok(None),
            // Never fall back to plaintext when TLS was asked for but is incomplete.
            _ => {
                return Err(Error::Startup(
                    "--tls-cert and --tls-key go together, and --tls-client-ca needs both".into(),
                ))
            }
        };
        let cert_pem = read(cert_path, "--tls-cert")?;
        let key_pem = read(key_path, "--tls-key")?;
        let client_ca_pem =
            config.tls_client_ca.as_deref().map(|p| read(p, "--tls-client-ca")).transpose()?;

        let mut grpc = ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem));
        if let Some(ca) = &client_ca_pem {
            grpc = grpc.client_ca_root(Certificate::from_pem(ca));
        }
        let http = http_acceptor(&cert_pem, &key_pem, client_ca_pem.as_deref())?;
        Ok(Some(Tls { grpc, http }))
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Startup(format!("cannot read {flag} {}: {e}", path.display())))
}

fn bad(flag: &str, e: impl std::fmt::Display) -> Error {
    Error::Startup(format!("{flag}: {e}"))
}

fn http_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<TlsAcceptor, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("--tls-cert", e))?;
    if certs.is_empty() {
        return Err(bad("--tls-cert", "holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("--tls-key", e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", e))?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                roots
                    .add(cert.map_err(|e| bad("--tls-client-ca", e))?)
                    .map_err(|e| bad("--tls-client-ca", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad("--tls-client-ca", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| bad("--tls-key", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Completes TLS handshakes on accepted connections, each in its own task so a slow client
/// holds up no one, and hands over only finished TLS connections. Failed or slow handshakes
/// are dropped and logged at debug level. Accepting itself (the cap, backoff on accept errors)
/// is `connections::accept`'s. Every task runs on `tasks`, the server's tracker.
pub fn handshakes(
    mut accepted: mpsc::Receiver<(Counted, SocketAddr)>,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> mpsc::Receiver<(TlsStream<Counted>, SocketAddr)> {
    let (tx, ready) = mpsc::channel(64);
    let handshaking = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                next = accepted.recv() => match next {
                    Some(conn) => conn,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            // A handshake still under way at shutdown is dropped, so it cannot hold up the
            // server's drain of its tracker.
            handshaking.spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let outcome = tokio::select! {
                    outcome = handshake => outcome,
                    () = shutdown.cancelled() => return,
                };
                match outcome {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ready
}

impl Tracked for TlsStream<Counted> {
    fn activity(&self) -> Arc<Activity> {
        self.get_ref().0.activity()
    }
}
