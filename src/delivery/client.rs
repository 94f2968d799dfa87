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
        Ok(Sender { rules, timeout, tls: TlsConnector::from(Arc::new(config)) })
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
        let stream = self.connect(host, port).await?;
        let mut request = hyper::Request::post(url.as_str())
            .header(hyper::header::HOST, host_header(url))
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::USER_AGENT, concat!("eventsd/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| format!("request: {e}"))?;
        if url.scheme() == "https" {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| format!("TLS: {e}"))?;
            let tls = self.tls.connect(name, stream).await.map_err(|e| format!("TLS: {e}"))?;
            exchange_on(TokioIo::new(tls), request).await
        } else {
            exchange_on(TokioIo::new(stream), request).await
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

/// One HTTP/1.1 request on a fresh connection: the answer's status. The connection is driven
/// in this future, not a task of its own, so dropping it (the attempt's deadline, a deleted
/// endpoint) closes the connection at once.
async fn exchange_on<I>(io: I, request: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP: {e}"))?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        // Read a little of the body, so a receiver that answers before reading ours is not
        // reset mid-answer; the rest is dropped with the connection.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await;
        Ok::<u16, String>(status)
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut connection = std::pin::pin!(connection);
    let mut connection_done = false;
    loop {
        tokio::select! {
            biased;
            result = &mut exchange => return result,
            _ = &mut connection, if !connection_done => connection_done = true,
        }
    }
}
