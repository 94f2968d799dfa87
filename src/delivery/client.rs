//! One outbound attempt: a POST to an endpoint, over a connection of its own.
//!
//! Owns the network side of a delivery and promises:
//! - **The SSRF guard at connect time**: the host is resolved here and every address is
//!   checked with [`target::check_address`] before connecting, so a name that turns private
//!   after the endpoint was accepted (DNS rebinding) fails the attempt with
//!   "destination refused" and no packet goes to it.
//! - **One deadline** (`--delivery-timeout`) covers resolve, connect, TLS, sending the body
//!   and the answer's head; at most [`MAX_RESPONSE_BYTES`] of the answer's body are read.
//! - Redirects are not followed: a 3xx is a failed attempt like any non-2xx.
//! - **Keep-alive**: a connection whose answer was read whole goes back to a pool keyed by
//!   scheme, host and port (at most [`MAX_IDLE_PER_HOST`] idle each, for at most
//!   [`IDLE_TIMEOUT`]), so a busy endpoint does not pay a TCP and TLS handshake per event.
//!   Only connections made under the checks above are pooled; one that timed out, failed or
//!   carried an oversized answer is closed.
//! - TLS is rustls with the system's roots plus `--delivery-ca`.
//! - Errors name what failed ("timeout", "connect: …", "HTTP 500") and never carry a secret
//!   or the URL's query.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::delivery::target::{self, TargetRules, DESTINATION_REFUSED};
use crate::error::Error;

/// Most bytes of an answer's body that are read (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024;

/// Most idle keep-alive connections kept per (scheme, host, port).
pub const MAX_IDLE_PER_HOST: usize = 64;

/// How long an idle keep-alive connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 connection: its request handle and the task driving it, which is aborted
/// when the connection is dropped (so a timed-out or deleted attempt closes its socket).
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::AbortHandle,
    idle_since: Instant,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Idle connections by (scheme, host, port).
type Pool = std::sync::Mutex<std::collections::HashMap<(String, String, u16), Vec<Connection>>>;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The answer's status; 0 without an answer.
    pub status: u16,
    /// Empty on a 2xx; otherwise why the attempt failed.
    pub error: String,
    /// From the start of the attempt to the answer's head or the failure.
    pub latency: Duration,
}

impl Outcome {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.error.is_empty()
    }
}

/// Makes attempts; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    rules: TargetRules,
    timeout: Duration,
    tls: TlsConnector,
    idle: Arc<Pool>,
}

impl Sender {
    /// A sender with the system roots plus the PEM certificates in `ca` (`--delivery-ca`).
    pub fn new(rules: TargetRules, timeout: Duration, ca: Option<&Path>) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system certificate rustls cannot parse is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = ca {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::Startup(format!("--delivery-ca {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Startup(format!(
                    "--delivery-ca {}: no PEM certificate in the file",
                    path.display()
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    Error::Startup(format!("--delivery-ca {}: {e}", path.display()))
                })?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Startup(format!("TLS client: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Sender {
            rules,
            timeout,
            tls: TlsConnector::from(Arc::new(config)),
            idle: Arc::default(),
        })
    }

    /// The rules endpoint URLs and destinations are checked against.
    pub fn rules(&self) -> TargetRules {
        self.rules
    }

    /// POSTs `body` to `url` with `headers`; never fails, the outcome says what happened.
    pub async fn post(
        &self,
        url: &url::Url,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Outcome {
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.timeout, self.exchange(url, content_type, headers, body))
                .await
                .unwrap_or_else(|_| Err("timeout".to_owned()));
        let latency = started.elapsed();
        match result {
            Ok(status) if (200..300).contains(&status) => {
                Outcome { status, error: String::new(), latency }
            }
            Ok(status) => Outcome { status, error: format!("HTTP {status}"), latency },
            Err(error) => Outcome { status: 0, error, latency },
        }
    }

    /// The exchange itself: the answer's status, or why there is none.
    async fn exchange(
        &self,
        url: &url::Url,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        let host = url.host_str().ok_or("the URL has no host")?;
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let request = || {
            let mut request = hyper::Request::post(url.as_str())
                .header(hyper::header::HOST, host_header(url))
                .header(hyper::header::CONTENT_TYPE, content_type)
                .header(hyper::header::USER_AGENT, concat!("eventsd/", env!("CARGO_PKG_VERSION")));
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            request.body(Full::new(body.clone())).map_err(|e| format!("request: {e}"))
        };
        let key = (url.scheme().to_owned(), host.to_owned(), port);
        let (mut connection, response) = match self.take_idle(&key) {
            Some(mut idle) => match idle.sender.send_request(request()?).await {
                Ok(response) => (idle, response),
                // The receiver closed the idle connection as it was taken (the keep-alive
                // race): nothing was answered, so the request goes again on a new one.
                Err(_) => {
                    let mut fresh = self.open(url.scheme(), host, port).await?;
                    let response = fresh
                        .sender
                        .send_request(request()?)
                        .await
                        .map_err(|e| format!("HTTP: {e}"))?;
                    (fresh, response)
                }
            },
            None => {
                let mut fresh = self.open(url.scheme(), host, port).await?;
                let response = fresh
                    .sender
                    .send_request(request()?)
                    .await
                    .map_err(|e| format!("HTTP: {e}"))?;
                (fresh, response)
            }
        };
        let status = response.status().as_u16();
        // Read the answer's body (up to the cap) so the connection can carry the next one.
        let whole = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await.is_ok();
        if whole {
            connection.idle_since = Instant::now();
            self.put_idle(key, connection);
        }
        Ok(status)
    }

    /// An idle connection to `key` that is still open, if any.
    fn take_idle(&self, key: &(String, String, u16)) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        let connections = idle.get_mut(key)?;
        while let Some(connection) = connections.pop() {
            if connection.idle_since.elapsed() < IDLE_TIMEOUT
                && connection.sender.is_ready()
                && !connection.sender.is_closed()
            {
                return Some(connection);
            }
        }
        None
    }

    /// Returns a connection to the pool, dropping the stale ones of its host.
    fn put_idle(&self, key: (String, String, u16), connection: Connection) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let connections = idle.entry(key).or_default();
        connections.retain(|c| c.idle_since.elapsed() < IDLE_TIMEOUT && !c.sender.is_closed());
        if connections.len() < MAX_IDLE_PER_HOST {
            connections.push(connection);
        }
    }

    /// A new connection: resolve, check, connect, TLS for https, HTTP/1.1 handshake.
    async fn open(&self, scheme: &str, host: &str, port: u16) -> Result<Connection, String> {
        let stream = self.connect(host, port).await?;
        if scheme == "https" {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| format!("TLS: {e}"))?;
            let tls = self.tls.connect(name, stream).await.map_err(|e| format!("TLS: {e}"))?;
            handshake(TokioIo::new(tls)).await
        } else {
            handshake(TokioIo::new(stream)).await
        }
    }

    /// Resolves `host` and connects to the first address the rules allow.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let bare = host.trim_matches(['[', ']']);
        let addresses: Vec<SocketAddr> = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| format!("resolve: {e}"))?
                .collect(),
        };
        let allowed: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|a| target::check_address(a.ip(), self.rules).is_ok())
            .collect();
        if allowed.is_empty() {
            return Err(DESTINATION_REFUSED.to_owned());
        }
        let mut last = String::new();
        for address in allowed {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = format!("connect: {e}"),
            }
        }
        Err(last)
    }
}

/// The `Host` header: the host, with the port when it is not the scheme's default.
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The HTTP/1.1 handshake on a connected stream; the connection is driven by a task of its
/// own, aborted when the [`Connection`] is dropped.
async fn handshake<I>(io: I) -> Result<Connection, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    })
    .abort_handle();
    Ok(Connection { sender, driver, idle_since: Instant::now() })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, ServerConfig};
    use tokio_rustls::TlsAcceptor;

    use super::*;

    const LOOPBACK: TargetRules = TargetRules { allow_private: true, allow_http: true };

    /// A CA and a `localhost` leaf it signed: (CA PEM, leaf PEM, leaf key PEM).
    fn pki() -> (String, String, String) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "delivery test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
    }

    /// Answers every connection with `status` after reading the request head; counts them.
    async fn receiver(
        tls: Option<TlsAcceptor>,
        status: u16,
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    let mut buf = vec![0u8; 16 * 1024];
                    match tls {
                        Some(acceptor) => {
                            let Ok(mut stream) = acceptor.accept(tcp).await else { return };
                            let _ = stream.read(&mut buf).await;
                            let _ = stream.write_all(answer.as_bytes()).await;
                            let _ = stream.flush().await;
                        }
                        None => {
                            let mut stream = tcp;
                            let _ = stream.read(&mut buf).await;
                            let _ = stream.write_all(answer.as_bytes()).await;
                        }
                    }
                });
            }
        });
        (port, count)
    }

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).unwrap()
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused_at_connect_time() {
        let (port, connections) = receiver(None, 200).await;
        let rules = TargetRules { allow_private: false, allow_http: true };
        let sender = Sender::new(rules, Duration::from_secs(5), None).unwrap();
        // `localhost` is what a rebinding name looks like once resolved: 127.0.0.1 / ::1.
        let outcome = sender
            .post(
                &url(&format!("http://localhost:{port}/hook")),
                "application/json",
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!((outcome.status, outcome.error.as_str()), (0, DESTINATION_REFUSED));
        assert_eq!(
            connections.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no connection was made"
        );
        // Allowed, the same receiver answers.
        let sender = Sender::new(LOOPBACK, Duration::from_secs(5), None).unwrap();
        let outcome = sender
            .post(
                &url(&format!("http://localhost:{port}/hook")),
                "application/json",
                &[],
                Bytes::new(),
            )
            .await;
        assert!(outcome.succeeded(), "{outcome:?}");
    }

    #[tokio::test]
    async fn non_2xx_answers_and_refused_connections_are_failed_attempts() {
        let (port, _) = receiver(None, 302).await;
        let sender = Sender::new(LOOPBACK, Duration::from_secs(5), None).unwrap();
        let redirect = sender
            .post(&url(&format!("http://127.0.0.1:{port}/")), "application/json", &[], Bytes::new())
            .await;
        assert_eq!(
            (redirect.status, redirect.error.as_str()),
            (302, "HTTP 302"),
            "redirects are not followed"
        );
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let refused = sender
            .post(&url(&format!("http://127.0.0.1:{port}/")), "application/json", &[], Bytes::new())
            .await;
        assert_eq!(refused.status, 0);
        assert!(refused.error.starts_with("connect:"), "{refused:?}");
    }

    #[tokio::test]
    async fn https_trusts_delivery_ca_and_refuses_an_unknown_issuer() {
        let (ca_pem, cert_pem, key_pem) = pki();
        let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let (port, _) = receiver(Some(TlsAcceptor::from(Arc::new(config))), 204).await;
        let target = url(&format!("https://localhost:{port}/hook"));
        let untrusted = Sender::new(LOOPBACK, Duration::from_secs(5), None).unwrap();
        let outcome = untrusted.post(&target, "application/json", &[], Bytes::new()).await;
        assert_eq!(outcome.status, 0);
        assert!(outcome.error.starts_with("TLS:"), "{outcome:?}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        let trusted = Sender::new(LOOPBACK, Duration::from_secs(5), Some(&ca)).unwrap();
        let outcome = trusted.post(&target, "application/json", &[], Bytes::new()).await;
        assert!(outcome.succeeded() && outcome.status == 204, "{outcome:?}");
        std::fs::write(&ca, "not a certificate").unwrap();
        let err =
            Sender::new(LOOPBACK, Duration::from_secs(5), Some(&ca)).err().expect("a bad CA file");
        assert!(err.to_string().starts_with("--delivery-ca"), "{err}");
    }

    /// A keep-alive receiver: answers 200 to every request on a connection; counts
    /// connections and requests.
    async fn keep_alive_receiver(
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: the head, then content-length bytes of body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + length {
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..head_end + length);
                        r.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, connections, requests)
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection_and_survives_a_receiver_that_closes() {
        use std::sync::atomic::Ordering;
        let sender = Sender::new(LOOPBACK, Duration::from_secs(5), None).unwrap();
        let (port, connections, requests) = keep_alive_receiver().await;
        let target = url(&format!("http://127.0.0.1:{port}/hook"));
        for _ in 0..5 {
            let outcome =
                sender.post(&target, "application/json", &[], Bytes::from_static(b"{}")).await;
            assert!(outcome.succeeded(), "{outcome:?}");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 5);
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection for five requests");
        // A receiver that closes after each answer: every attempt still succeeds.
        let (port, closing) = receiver(None, 200).await;
        let target = url(&format!("http://127.0.0.1:{port}/hook"));
        for _ in 0..5 {
            let outcome =
                sender.post(&target, "application/json", &[], Bytes::from_static(b"{}")).await;
            assert!(outcome.succeeded(), "{outcome:?}");
        }
        assert!(closing.load(Ordering::SeqCst) >= 5);
    }

    #[tokio::test]
    async fn the_deadline_covers_a_receiver_that_never_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let sender = Sender::new(LOOPBACK, Duration::from_millis(200), None).unwrap();
        let outcome = sender
            .post(&url(&format!("http://127.0.0.1:{port}/")), "application/json", &[], Bytes::new())
            .await;
        assert_eq!((outcome.status, outcome.error.as_str()), (0, "timeout"));
        held.abort();
    }
}
