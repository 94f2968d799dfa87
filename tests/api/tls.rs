//! TLS and mutual TLS on both listeners, with certificates made inside each test (rcgen): a
//! CA, a server certificate for `localhost` and 127.0.0.1, a client certificate for client
//! authentication, and a second CA with a client certificate of its own that the server must
//! not trust. gRPC clients use tonic's `ClientTlsConfig`; HTTPS is a raw HTTP/1.1
//! `GET /healthz` over a ring-based rustls client, so no second crypto provider is linked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use eventsd::proto::{Event, GetEventRequest};
use eventsd::{Listeners, ServeConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{spawn_app_with, TestApp};
use crate::support::{event, Client, HANG_GUARD};

// ---- Certificates ----

/// A certificate and its private key, as PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A certificate authority that can sign leaves.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for these names (DNS names or IP addresses) and this use.
    fn leaf(&self, common_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pem {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// Everything a TLS test needs, with the server's files written to a temporary folder.
struct Pki {
    ca: Ca,
    client: Pem,
    /// A client certificate signed by a CA the server does not know.
    stranger: Pem,
    /// A CA the server's certificate does not chain to.
    other_ca: Ca,
    server_cert: PathBuf,
    server_key: PathBuf,
    ca_file: PathBuf,
    _dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("eventsd test CA");
        let server =
            ca.leaf("localhost", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        let client = ca.leaf("publisher", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let other_ca = Ca::new("some other CA");
        let stranger = other_ca.leaf("stranger", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        let server_cert = write("server.crt", &server.cert);
        let server_key = write("server.key", &server.key);
        let ca_file = write("ca.crt", &ca.pem);
        Pki { ca, client, stranger, other_ca, server_cert, server_key, ca_file, _dir: dir }
    }

    /// Serve TLS with the server certificate.
    fn tls(&self, config: &mut ServeConfig) {
        config.tls_cert = Some(self.server_cert.clone());
        config.tls_key = Some(self.server_key.clone());
    }

    /// Serve TLS and require client certificates signed by the CA.
    fn mutual_tls(&self, config: &mut ServeConfig) {
        self.tls(config);
        config.tls_client_ca = Some(self.ca_file.clone());
    }
}

// ---- Clients ----

/// A gRPC client over TLS that trusts `ca` and presents `identity`, if any.
async fn tls_client(addr: SocketAddr, ca: &str, identity: Option<&Pem>) -> Result<Client, String> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some(pem) = identity {
        tls = tls.identity(Identity::from_pem(&pem.cert, &pem.key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?;
    let channel = tokio::time::timeout(HANG_GUARD, endpoint.connect())
        .await
        .expect("hang guard: TLS connect")
        .map_err(|e| format!("connect: {e:?}"))?;
    Ok(Client::new(channel))
}

/// Connects over TLS and publishes one event. A refused handshake may surface at connect or
/// at the first call (with TLS 1.3 the server judges the client's certificate after the
/// client considers the handshake done), so both count as failure.
async fn tls_publish(addr: SocketAddr, ca: &str, identity: Option<&Pem>) -> Result<Event, String> {
    let mut client = tls_client(addr, ca, identity).await?;
    let call = client.publish_event(event("tls.publish"));
    tokio::time::timeout(HANG_GUARD, call)
        .await
        .expect("hang guard: publish over TLS")
        .map(|r| r.into_inner())
        .map_err(|s| format!("publish: {s:?}"))
}

/// A publish over plaintext gRPC.
async fn plaintext_publish(addr: SocketAddr) -> Result<Event, String> {
    let attempt = async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        Client::new(channel)
            .publish_event(event("plaintext.publish"))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("publish: {s:?}"))
    };
    tokio::time::timeout(HANG_GUARD, attempt).await.expect("hang guard: plaintext publish")
}

/// `GET /healthz` over HTTPS (raw HTTP/1.1 on a ring-based rustls client); the response's
/// status line, or why there was none.
async fn https_healthz(http: &str, ca: &str, identity: Option<&Pem>) -> Result<String, String> {
    let addr = http.strip_prefix("http://").unwrap_or(http).to_string();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("a CA PEM")).expect("add the CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("client key");
            builder.with_client_auth_cert(certs, key).expect("client identity")
        }
        None => builder.with_no_client_auth(),
    };
    let exchange = async {
        let tcp = TcpStream::connect(&addr).await.map_err(|e| format!("TCP: {e}"))?;
        let name = ServerName::try_from("localhost").expect("a DNS name");
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        match text.lines().next() {
            Some(status) if !status.is_empty() => Ok(status.to_string()),
            _ => Err("no response".to_string()),
        }
    };
    tokio::time::timeout(HANG_GUARD, exchange).await.expect("hang guard: HTTPS")
}

/// `GET /healthz` in plaintext; the status, or why there was none.
async fn plaintext_healthz(app: &TestApp) -> Result<u16, String> {
    let request = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
        .get(format!("{}/healthz", app.http))
        .send();
    match tokio::time::timeout(HANG_GUARD, request).await.expect("hang guard: plaintext HTTP") {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) => Err(e.to_string()),
    }
}

const OK: &str = "HTTP/1.1 200 OK";

// ---- Tests ----

#[tokio::test]
async fn a_tls_server_serves_clients_that_trust_its_ca_and_nobody_in_plaintext() {
    // Arrange
    let pki = Pki::new();
    let app = spawn_app_with(|c| pki.tls(c)).await;

    // Act
    let published = tls_publish(app.addr, &pki.ca.pem, None).await;
    let https = https_healthz(&app.http, &pki.ca.pem, None).await;
    let plaintext = plaintext_publish(app.addr).await;
    let plaintext_http = plaintext_healthz(&app).await;
    let untrusted = tls_publish(app.addr, &pki.other_ca.pem, None).await;
    let untrusted_https = https_healthz(&app.http, &pki.other_ca.pem, None).await;

    // Assert
    let published = published.expect("a client that trusts the CA publishes over TLS");
    let mut client = tls_client(app.addr, &pki.ca.pem, None).await.expect("connect");
    let stored = client
        .get_event(GetEventRequest { id: published.id.clone(), livemode: None })
        .await
        .expect("read back over TLS")
        .into_inner();
    assert_eq!(stored, published);
    assert_eq!(https.as_deref(), Ok(OK));
    assert!(plaintext.is_err(), "plaintext gRPC must fail: {plaintext:?}");
    assert!(!matches!(plaintext_http, Ok(200)), "plaintext HTTP must fail: {plaintext_http:?}");
    // A client that does not trust the server's CA refuses it.
    let untrusted = [("gRPC", untrusted.map(|_| ())), ("HTTPS", untrusted_https.map(|_| ()))];
    for (case, result) in untrusted {
        assert!(result.as_ref().is_err_and(|e| e.contains("UnknownIssuer")), "{case}: {result:?}");
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_client_certificates_signed_by_the_client_ca() {
    // Arrange
    let pki = Pki::new();
    let app = spawn_app_with(|c| pki.mutual_tls(c)).await;

    // Act and assert: the CA's client certificate is admitted on both listeners.
    let published = tls_publish(app.addr, &pki.ca.pem, Some(&pki.client)).await;
    assert!(published.is_ok(), "{published:?}");
    let https = https_healthz(&app.http, &pki.ca.pem, Some(&pki.client)).await;
    assert_eq!(https.as_deref(), Ok(OK));

    // No certificate, or one from another CA, is refused on both.
    // The server's TLS alert says why.
    let refusals = [
        ("no certificate", None, "CertificateRequired"),
        ("another CA's certificate", Some(&pki.stranger), "UnknownCA"),
    ];
    for (case, identity, alert) in refusals {
        let grpc = tls_publish(app.addr, &pki.ca.pem, identity).await;
        assert!(grpc.as_ref().is_err_and(|e| e.contains(alert)), "gRPC with {case}: {grpc:?}");
        let https = https_healthz(&app.http, &pki.ca.pem, identity).await;
        assert!(https.as_ref().is_err_and(|e| e.contains(alert)), "HTTPS with {case}: {https:?}");
    }
}

#[tokio::test]
async fn mutual_tls_alone_is_enough_to_serve_on_all_interfaces() {
    // Arrange: no API keys, no --allow-unauthenticated, but client certificates required.
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServeConfig::with_data_dir(dir.path().join("data"));
    pki.mutual_tls(&mut config);
    let grpc = TcpListener::bind("0.0.0.0:0").await.expect("bind gRPC");
    let http = TcpListener::bind("0.0.0.0:0").await.expect("bind HTTP");
    // Traffic goes to loopback only, never to a non-loopback address.
    let loopback: SocketAddr = ([127, 0, 0, 1], grpc.local_addr().expect("address").port()).into();
    let (stop, stopped) = oneshot::channel::<()>();

    // Act
    let server = tokio::spawn(eventsd::run(config, Listeners { grpc, http }, async {
        let _ = stopped.await;
    }));
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca.pem))
        .domain_name("localhost");
    tls = tls.identity(Identity::from_pem(&pki.client.cert, &pki.client.key));
    let channel = Endpoint::from_shared(format!("https://{loopback}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("connect with the client certificate");
    let mut health = HealthClient::new(channel);
    let check = health.check(HealthCheckRequest { service: String::new() });
    let health =
        tokio::time::timeout(HANG_GUARD, check).await.expect("hang guard").expect("health");

    // Assert
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    stop.send(()).expect("the server is running");
    tokio::time::timeout(HANG_GUARD, server)
        .await
        .expect("hang guard: shutdown")
        .expect("server task")
        .expect("a clean stop");
}

/// Whether a plaintext gRPC health check over loopback says SERVING.
async fn serves_plaintext(addr: SocketAddr) -> bool {
    let check = async {
        let channel = Channel::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
        let request = HealthCheckRequest { service: String::new() };
        let response = HealthClient::new(channel).check(request).await.ok()?;
        Some(response.into_inner().status() == ServingStatus::Serving)
    };
    let served = tokio::time::timeout(HANG_GUARD, check).await.expect("hang guard: health");
    served.unwrap_or(false)
}

#[tokio::test]
async fn a_half_configured_tls_is_refused_rather_than_served_in_plaintext() {
    // The command line refuses these (clap `requires`), but `eventsd::run` takes its
    // ServeConfig from any embedder, and its own safe default must hold there too: a client CA
    // without a certificate must not count as mutual TLS on an open listener, and a
    // certificate without its key must not quietly become plaintext.
    let pki = Pki::new();
    type Adjust = fn(&Pki, &mut ServeConfig);
    let cases: [(&str, &str, Adjust); 3] = [
        ("--tls-client-ca alone, on all interfaces", "0.0.0.0:0", |p, c| {
            c.tls_client_ca = Some(p.ca_file.clone());
        }),
        ("--tls-cert without --tls-key", "127.0.0.1:0", |p, c| {
            c.tls_cert = Some(p.server_cert.clone());
        }),
        ("--tls-key without --tls-cert", "127.0.0.1:0", |p, c| {
            c.tls_key = Some(p.server_key.clone());
        }),
    ];
    let mut failures = Vec::new();

    for (case, addr, adjust) in cases {
        // Arrange
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServeConfig::with_data_dir(dir.path().join("data"));
        adjust(&pki, &mut config);
        let grpc = TcpListener::bind(addr).await.expect("bind gRPC");
        let http = TcpListener::bind(addr).await.expect("bind HTTP");
        let loopback: SocketAddr =
            ([127, 0, 0, 1], grpc.local_addr().expect("address").port()).into();
        let (stop, stopped) = oneshot::channel::<()>();

        // Act: a server that refuses drops its listeners, so the check fails at once; one
        // that serves answers it (the connection waits in the accept queue until then).
        let server = tokio::spawn(eventsd::run(config, Listeners { grpc, http }, async {
            let _ = stopped.await;
        }));
        let served = serves_plaintext(loopback).await;
        let _ = stop.send(());
        let result = tokio::time::timeout(HANG_GUARD, server)
            .await
            .expect("hang guard: run")
            .expect("server task");

        // Assert
        match (served, result) {
            (false, Err(_)) => {}
            (served, result) => failures.push(format!(
                "{case}: served plaintext without authentication: {served}; run returned {result:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
