//! Start-up of the JetStream backend: connect, refuse servers older than 2.12, and create the
//! stream or verify that an existing one has the settings eventsd's guarantees rest on.

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::jetstream::api::{Api, StreamInfo};
use crate::store::jetstream::subject;

/// The oldest nats-server eventsd accepts: 2.12 brought atomic batches and
/// `Nats-Expected-Last-Subject-Sequence-Subject`; older servers ignore both silently, which
/// would break atomic PublishEvents and permanent idempotency without any error.
const MIN_VERSION: (u64, u64) = (2, 12);

/// How to reach and lay out the stream.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// Comma-separated `nats://host:port` URLs of the cluster's servers.
    pub urls: String,
    /// The stream's name; its subjects are `<name>.>`.
    pub stream: String,
    /// Trust this CA and require TLS on the NATS connection.
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM chain) to present to NATS (mutual TLS), with `tls_key`.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// A NATS credentials file: user JWT and NKey seed.
    pub creds: Option<std::path::PathBuf>,
    /// Replicas of every event (1, 3 or 5).
    pub replicas: usize,
    /// How long one call may wait for JetStream, retries of unknown outcomes included.
    pub request_timeout: Duration,
    /// The recent-events cache gets its share of this (`--cache-bytes`).
    pub cache_bytes: u64,
    /// Where publish figures go.
    pub metrics: Metrics,
}

/// Connects and returns the API handle with the stream's info. Every file named by a flag is
/// read and checked first: a bad one stops the start before anything connects.
pub async fn connect(config: &JetStreamConfig) -> Result<(Api, StreamInfo), Error> {
    let connection = Connection::validate(config)?;
    let shown = &connection.shown;
    let options = connection.options()?;
    let client =
        tokio::time::timeout(Duration::from_secs(15), options.connect(connection.urls.clone()))
            .await
            .map_err(|_| Error::Startup(format!("no NATS server of {shown} answered")))?
            .map_err(|e| Error::Startup(format!("cannot connect to {shown}: {e}")))?;
    let info = client.server_info();
    check_version(&node_name(&info, "the connected server"), &info.version)?;
    let checked = check_every_node(&connection, &info).await?;
    tracing::info!(nodes = checked, "every reachable NATS node is 2.12 or newer");
    // Each call gets a few seconds; append retries on top of it stay within the call deadline.
    let call_timeout = config.request_timeout.min(Duration::from_secs(5));
    let api = Api::new(client, config.stream.clone(), call_timeout);
    let wanted = stream_config(config);
    let info = wait_for_answer(|| api.info()).await?;
    let info = match info {
        Some(info) => {
            verify(&config.stream, &info.config, &wanted)?;
            info
        }
        None => {
            tracing::info!(stream = %config.stream, replicas = config.replicas, "creating the stream");
            wait_for_answer(|| api.create(wanted.clone())).await?
        }
    };
    Ok((api, info))
}

/// How to connect, with every flag's file read and checked. No `Debug`: it holds secrets.
pub(crate) struct Connection {
    /// The servers, as `--store` gave them (full form).
    urls: Vec<async_nats::ServerAddr>,
    /// The URLs as logs and errors may show them.
    shown: String,
    user_password: Option<(String, String)>,
    tls_ca: Option<std::path::PathBuf>,
    client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The credentials file's contents (checked to parse).
    creds: Option<String>,
    request_timeout: Duration,
}

impl Connection {
    /// Reads and checks what the configuration names, connecting to nothing: the URLs, the
    /// CA (`--nats-tls-ca`: at least one PEM certificate), the client certificate and key
    /// (`--nats-tls-cert`/`--nats-tls-key`: both or neither, readable, and the key the
    /// certificate's) and the credentials file (`--nats-creds`: a user JWT and NKey seed).
    /// Errors name the flag and the file, never a file's contents.
    pub(crate) fn validate(config: &JetStreamConfig) -> Result<Connection, Error> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let shown = redacted(&config.urls);
        let urls: Vec<async_nats::ServerAddr> = config
            .urls
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Startup(format!("--store {shown}: {e}")))?;
        let user_password = credentials(&urls)?;
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Error::Startup(format!("cannot read {flag} {}: {e}", path.display())))
        };
        let certificates = |flag: &str, path: &std::path::Path| {
            let pem = read(flag, path)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Startup(format!("{flag} {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Startup(format!(
                    "{flag} {}: no PEM certificate in it",
                    path.display()
                )));
            }
            Ok(certs)
        };
        if let Some(ca) = &config.tls_ca {
            certificates("--nats-tls-ca", ca)?;
        }
        let client_cert = match (&config.tls_cert, &config.tls_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Startup("--nats-tls-cert needs --nats-tls-key".into()))
            }
            (None, Some(_)) => {
                return Err(Error::Startup("--nats-tls-key needs --nats-tls-cert".into()))
            }
            (Some(cert), Some(key)) => {
                let chain = certificates("--nats-tls-cert", cert)?;
                let key_pem = read("--nats-tls-key", key)?;
                let bad_key = |e: &dyn std::fmt::Display| {
                    Error::Startup(format!("--nats-tls-key {}: {e}", key.display()))
                };
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_key(&e))?;
                // What async-nats does with the two files when it connects (rustls checks
                // that the key is the certificate's), done here so that a mismatch stops the
                // start with the flags named rather than failing every connection.
                let provider = tokio_rustls::rustls::crypto::ring::default_provider();
                tokio_rustls::rustls::sign::CertifiedKey::from_der(chain, key_der, &provider)
                    .map_err(|e| {
                        Error::Startup(format!(
                            "--nats-tls-key {} is not the key of --nats-tls-cert {}: {e}",
                            key.display(),
                            cert.display()
                        ))
                    })?;
                Some((cert.clone(), key.clone()))
            }
        };
        let creds = match &config.creds {
            None => None,
            Some(path) => {
                let bytes = read("--nats-creds", path)?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    Error::Startup(format!("--nats-creds {}: not UTF-8 text", path.display()))
                })?;
                // Parses the JWT and the seed now; the message never quotes the file.
                async_nats::ConnectOptions::new().credentials(&text).map_err(|e| {
                    Error::Startup(format!(
                        "--nats-creds {}: not a NATS credentials file ({e})",
                        path.display()
                    ))
                })?;
                Some(text)
            }
        };
        Ok(Connection {
            urls,
            shown,
            user_password,
            tls_ca: config.tls_ca.clone(),
            client_cert,
            creds,
            request_timeout: config.request_timeout,
        })
    }

    /// Fresh connect options (they cannot be cloned) with every setting.
    fn options(&self) -> Result<async_nats::ConnectOptions, Error> {
        let mut options = async_nats::ConnectOptions::new()
            .name("eventsd")
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(PING_INTERVAL)
            .request_timeout(Some(self.request_timeout));
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        if let Some(creds) = &self.creds {
            options = options.credentials(creds).map_err(|e| {
                Error::Startup(format!("--nats-creds: not a NATS credentials file ({e})"))
            })?;
        }
        Ok(options)
    }
}

/// How often the client pings a quiet server. A node cut off by the network sends neither a
/// reset nor a close, and the client gives the connection up after three pings without an
/// answer: about 6 s here, against 3 minutes at the client's default of 60 s, during which
/// every call through that node would fail.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Most addresses [`check_every_node`] tries (given and advertised together).
const MOST_PROBES: usize = 32;

/// Checks the version of every node of the cluster, not only the connected one's.
///
/// How: without system-account access no request reports the other nodes' versions
/// (`$SYS.REQ.SERVER.PING` needs the system account, and `$JS.API.INFO` describes the
/// account, not the servers). What every node does tell any client is its own INFO (version
/// and server_id) when a client connects, and that INFO lists the client URLs of the other
/// nodes of its cluster (`connect_urls`; empty only with `no_advertise`). So eventsd connects,
/// with the same TLS and credentials, to every URL of `--store` and every URL a node
/// advertises, reads each distinct server's version (by server_id), and disconnects. A node
/// too old is refused, naming it. A node that cannot be reached at start (down, or advertising
/// an address this host cannot reach) cannot be checked: it is logged as a warning, not
/// refused, so that a cluster with one node down can still serve. Returns how many distinct
/// servers were checked.
async fn check_every_node(
    connection: &Connection,
    connected: &async_nats::ServerInfo,
) -> Result<usize, Error> {
    let scheme = connection.urls.first().map(|u| u.scheme().to_string()).unwrap_or("nats".into());
    let mut queue: std::collections::VecDeque<(String, String)> = connection
        .urls
        .iter()
        .map(|u| (format!("{}:{}", u.host(), u.port()), u.scheme().to_string()))
        .collect();
    let mut tried = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::from([connected.server_id.clone()]);
    let advertised = |queue: &mut std::collections::VecDeque<(String, String)>,
                      info: &async_nats::ServerInfo| {
        for url in &info.connect_urls {
            queue.push_back((url.clone(), scheme.clone()));
        }
    };
    advertised(&mut queue, connected);
    while let Some((host_port, scheme)) = queue.pop_front() {
        if !tried.insert(host_port.clone()) {
            continue;
        }
        if tried.len() > MOST_PROBES {
            tracing::warn!("more than {MOST_PROBES} NATS addresses: the rest are not checked");
            break;
        }
        let shown = format!("{scheme}://{host_port}");
        let addr: async_nats::ServerAddr = match shown.parse() {
            Ok(addr) => addr,
            Err(e) => {
                tracing::warn!(node = %shown, "cannot check this NATS node's version: {e}");
                continue;
            }
        };
        let options = connection
            .options()?
            .ignore_discovered_servers()
            .connection_timeout(Duration::from_secs(3));
        let client = match tokio::time::timeout(Duration::from_secs(5), options.connect(addr)).await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::warn!(node = %shown, "cannot check this NATS node's version: {e}");
                continue;
            }
            Err(_) => {
                tracing::warn!(node = %shown, "cannot check this NATS node's version: no answer");
                continue;
            }
        };
        let info = client.server_info();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
        if !seen.insert(info.server_id.clone()) {
            continue;
        }
        check_version(&node_name(&info, &shown), &info.version)?;
        advertised(&mut queue, &info);
    }
    Ok(seen.len())
}

/// A server as errors name it: its server name (if any) and where it was reached.
fn node_name(info: &async_nats::ServerInfo, reached_at: &str) -> String {
    if info.server_name.is_empty() {
        reached_at.to_string()
    } else {
        format!("{} ({reached_at})", info.server_name)
    }
}

/// The user and password the URLs carry (`nats://user:password@host`): the same in every URL
/// that has any, or none.
fn credentials(urls: &[async_nats::ServerAddr]) -> Result<Option<(String, String)>, Error> {
    let mut found: Option<(String, String)> = None;
    for url in urls.iter().filter(|u| u.has_user_pass()) {
        let pair = (
            url.username().unwrap_or_default().to_string(),
            url.password().unwrap_or_default().to_string(),
        );
        match &found {
            Some(seen) if *seen != pair => {
                return Err(Error::Startup(
                    "--store: the URLs carry different credentials; give every server the same \
                     user and password"
                        .into(),
                ))
            }
            _ => found = Some(pair),
        }
    }
    Ok(found)
}

/// The URLs as they may be shown: any `user:password@` replaced by `***@`.
pub fn redacted(urls: &str) -> String {
    urls.split(',').map(super::urls::redact).collect::<Vec<_>>().join(",")
}

/// The secret that signs page tokens, shared by every instance over the stream: a 32-byte
/// value under one key of a small KV bucket beside the stream (`<stream>_page_token`, as many
/// replicas as the stream), drawn by whichever instance starts first. The bucket keeps it out
/// of the event stream, whose every message is an event; a create that loses the race reads
/// the winner's value, so all instances end up with the same one.
pub async fn page_token_key(
    client: &async_nats::Client,
    config: &JetStreamConfig,
) -> Result<[u8; 32], Error> {
    use async_nats::jetstream::kv;
    const KEY: &str = "secret";
    let js = async_nats::jetstream::new(client.clone());
    let bucket = format!("{}_page_token", config.stream);
    let started = std::time::Instant::now();
    loop {
        let attempt = async {
            let store = match js.get_key_value(&bucket).await {
                Ok(store) => store,
                Err(_) => js
                    .create_key_value(kv::Config {
                        bucket: bucket.clone(),
                        description: "eventsd: the secret that signs page tokens".into(),
                        history: 1,
                        num_replicas: config.replicas,
                        storage: async_nats::jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?,
            };
            if let Some(value) = store.get(KEY).await.map_err(|e| e.to_string())? {
                return Ok(value);
            }
            let fresh =
                crate::service::list::PageTokens::random_key().map_err(|e| e.to_string())?.to_vec();
            match store.create(KEY, fresh.clone().into()).await {
                Ok(_) => Ok(fresh.into()),
                // Another instance created it first: theirs is the one.
                Err(_) => store.get(KEY).await.map_err(|e| e.to_string())?.ok_or_else(|| {
                    "the page-token secret vanished after a concurrent create".to_string()
                }),
            }
        };
        match attempt.await {
            Ok(value) => {
                return <[u8; 32]>::try_from(value.as_ref()).map_err(|_| {
                    Error::Startup(format!(
                        "the page-token secret in KV bucket {bucket} is not 32 bytes"
                    ))
                })
            }
            Err(why) if started.elapsed() < Duration::from_secs(30) => {
                tracing::info!(reason = %why, "waiting for JetStream (page-token secret)");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(why) => {
                return Err(Error::Startup(format!(
                    "cannot read or create the page-token secret in KV bucket {bucket}: {why}"
                )))
            }
        }
    }
}

/// Retries a start-up call while the cluster elects leaders (a cluster that has just started
/// answers "no responders" for a few seconds), for up to 30 seconds.
async fn wait_for_answer<T, F, Fut>(mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::jetstream::api::Failure>>,
{
    let started = std::time::Instant::now();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(crate::store::jetstream::api::Failure::Transient(why))
                if started.elapsed() < Duration::from_secs(30) =>
            {
                tracing::info!(reason = %why, "waiting for JetStream");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(failure) => {
                return Err(Error::Startup(format!("JetStream refused the stream: {:?}", failure)))
            }
        }
    }
}

/// Refuses servers older than [`MIN_VERSION`], naming the node.
fn check_version(node: &str, version: &str) -> Result<(), Error> {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u64>().ok());
    let found = (parts.next().flatten(), parts.next().flatten());
    match found {
        (Some(major), Some(minor)) if (major, minor) >= MIN_VERSION => Ok(()),
        _ => Err(Error::Startup(format!(
            "nats-server {node} is {version}, too old: eventsd needs 2.12 or newer, whose atomic batches \
             and Nats-Expected-Last-Subject-Sequence-Subject checks keep PublishEvents atomic and \
             ids unique (older servers ignore both without an error)"
        ))),
    }
}

/// The stream eventsd creates: one subject per event, nothing ever removed, atomic batches
/// and direct reads allowed.
fn stream_config(config: &JetStreamConfig) -> Value {
    json!({
        "name": config.stream,
        "description": "eventsd events: one message per event, sequence = event sequence",
        "subjects": [subject::all(&config.stream)],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "max_msg_size": -1,
        "discard": "old",
        "storage": "file",
        "num_replicas": config.replicas,
        "deny_delete": true,
        "deny_purge": true,
        "allow_direct": true,
        "allow_atomic": true,
    })
}

/// Settings an existing stream must share with [`stream_config`]; a difference is refused at
/// start rather than discovered as a broken guarantee later.
const VERIFIED: &[&str] = &[
    "subjects",
    "retention",
    "max_msgs",
    "max_bytes",
    "max_age",
    "max_msgs_per_subject",
    "storage",
    "num_replicas",
    "deny_delete",
    "deny_purge",
    "allow_direct",
    "allow_atomic",
];

fn verify(stream: &str, actual: &Value, wanted: &Value) -> Result<(), Error> {
    for field in VERIFIED {
        let have = normalized(field, actual.get(field));
        let want = normalized(field, wanted.get(field));
        if have != want {
            return Err(Error::Startup(format!(
                "stream {stream} exists with {field} = {have}, but eventsd needs {field} = {want}; \
                 use another --nats-stream or fix the stream (eventsd never changes an existing \
                 stream)"
            )));
        }
    }
    Ok(())
}

/// A setting in comparable form: absent flags are false, and any limit of zero or less (or
/// absent) is "unlimited", written -1.
fn normalized(field: &str, value: Option<&Value>) -> Value {
    let limit = field.starts_with("max_");
    match value {
        None | Some(Value::Null) if limit => json!(-1),
        None | Some(Value::Null) => json!(false),
        Some(Value::Number(n)) if limit && n.as_i64().is_some_and(|n| n <= 0) => json!(-1),
        Some(other) => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_2_12_are_refused_with_the_reason() {
        assert!(check_version("n1", "2.12.0").is_ok());
        assert!(check_version("n1", "2.15.1").is_ok());
        assert!(check_version("n1", "3.0.0-beta").is_ok());
        let err = check_version("n3 (nats://h3:4222)", "2.9.10").unwrap_err().to_string();
        assert!(err.contains("n3 (nats://h3:4222) is 2.9.10") && err.contains("2.12"), "{err}");
        assert!(check_version("n1", "garbage").is_err());
    }

    #[test]
    fn credentials_never_reach_what_is_shown() {
        let urls = "nats://eventsd:s3cret@h1:4222,nats://h2:4222";
        assert_eq!(redacted(urls), "nats://***@h1:4222,nats://h2:4222");
        let parsed: Vec<async_nats::ServerAddr> =
            urls.split(',').map(|u| u.parse().unwrap()).collect();
        assert_eq!(credentials(&parsed).unwrap(), Some(("eventsd".into(), "s3cret".into())));
        let mixed: Vec<async_nats::ServerAddr> = ["nats://a:b@h1:4222", "nats://a:c@h2:4222"]
            .iter()
            .map(|u| u.parse().unwrap())
            .collect();
        let err = credentials(&mixed).unwrap_err().to_string();
        assert!(err.contains("different credentials") && !err.contains("a:b"), "{err}");
    }

    #[test]
    fn a_stream_with_other_settings_is_refused_naming_the_setting() {
        let config = JetStreamConfig {
            urls: String::new(),
            stream: "EV".into(),
            replicas: 3,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            creds: None,
            request_timeout: Duration::from_secs(1),
            cache_bytes: 1 << 20,
            metrics: Metrics::new(),
        };
        let wanted = stream_config(&config);
        assert!(verify("EV", &wanted, &wanted).is_ok());
        let mut other = wanted.clone();
        other["num_replicas"] = json!(1);
        let err = verify("EV", &other, &wanted).unwrap_err().to_string();
        assert!(err.contains("num_replicas = 1"), "{err}");
        let mut limited = wanted.clone();
        limited["max_age"] = json!(3_600_000_000_000u64);
        assert!(verify("EV", &limited, &wanted).is_err());
    }

    fn config(urls: &str) -> JetStreamConfig {
        JetStreamConfig {
            urls: urls.into(),
            stream: "EV".into(),
            replicas: 1,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            creds: None,
            request_timeout: Duration::from_secs(5),
            cache_bytes: 1 << 20,
            metrics: Metrics::new(),
        }
    }

    /// A CA, a client certificate it signed and that certificate's key, and a second key, as
    /// PEM files in `dir`: (ca, cert, key, other_key).
    fn pem_files(dir: &std::path::Path) -> [std::path::PathBuf; 4] {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["eventsd".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "eventsd");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let other = KeyPair::generate().unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        [
            write("ca.pem", ca.pem()),
            write("client.pem", cert.pem()),
            write("client.key", key.serialize_pem()),
            write("other.key", other.serialize_pem()),
        ]
    }

    fn refusal(config: &JetStreamConfig) -> String {
        match Connection::validate(config) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tls_files_are_checked_before_connecting_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key, other] = pem_files(dir.path());
        let missing = dir.path().join("missing.pem");
        // Nothing listens there: validation must not try.
        let base = || config("nats://127.0.0.1:1");

        let good = JetStreamConfig {
            tls_ca: Some(ca.clone()),
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..base()
        };
        assert!(Connection::validate(&good).is_ok());

        let err = refusal(&JetStreamConfig { tls_ca: Some(missing.clone()), ..base() });
        assert!(err.contains("--nats-tls-ca") && err.contains("missing.pem"), "{err}");
        let err = refusal(&JetStreamConfig { tls_ca: Some(key.clone()), ..base() });
        assert!(err.contains("--nats-tls-ca") && err.contains("no PEM certificate"), "{err}");

        let err = refusal(&JetStreamConfig { tls_cert: Some(cert.clone()), ..base() });
        assert!(err.contains("--nats-tls-cert needs --nats-tls-key"), "{err}");
        let err = refusal(&JetStreamConfig { tls_key: Some(key.clone()), ..base() });
        assert!(err.contains("--nats-tls-key needs --nats-tls-cert"), "{err}");

        let with = |cert: &std::path::Path, key: &std::path::Path| JetStreamConfig {
            tls_cert: Some(cert.to_path_buf()),
            tls_key: Some(key.to_path_buf()),
            ..base()
        };
        let err = refusal(&with(&missing, &key));
        assert!(err.contains("--nats-tls-cert") && err.contains("missing.pem"), "{err}");
        let err = refusal(&with(&cert, &missing));
        assert!(err.contains("--nats-tls-key") && err.contains("missing.pem"), "{err}");
        let err = refusal(&with(&cert, &cert));
        assert!(err.contains("--nats-tls-key") && err.contains("client.pem"), "{err}");
        let err = refusal(&with(&key, &key));
        assert!(err.contains("--nats-tls-cert") && err.contains("no PEM certificate"), "{err}");
        let err = refusal(&with(&cert, &other));
        assert!(
            err.contains("--nats-tls-key") && err.contains("is not the key of --nats-tls-cert"),
            "{err}"
        );
        let key_pem = std::fs::read_to_string(&other).unwrap();
        let secret_line = key_pem.lines().nth(1).unwrap();
        assert!(!err.contains(secret_line), "the key reached the message: {err}");
    }

    #[test]
    fn a_credentials_file_is_checked_before_connecting_and_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let creds = |jwt: &str, seed: &str| {
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            )
        };
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let with = |path: std::path::PathBuf| JetStreamConfig {
            creds: Some(path),
            ..config("nats://127.0.0.1:1")
        };
        let good = write("good.creds", &creds("eyJhbGciOiJlZDI1NTE5In0.e30.c2ln", &seed));
        assert!(Connection::validate(&with(good)).is_ok());

        let err = refusal(&with(dir.path().join("missing.creds")));
        assert!(err.contains("--nats-creds") && err.contains("missing.creds"), "{err}");
        for (name, text) in [
            ("empty.creds", String::new()),
            ("garbage.creds", "SUAGARBAGESECRETSEED not a creds file".to_string()),
            ("no-seed.creds", creds("eyJhbGciOiJlZDI1NTE5In0.e30.c2ln", "")),
            ("bad-seed.creds", creds("eyJhbGciOiJlZDI1NTE5In0.e30.c2ln", "SUAXSECRETXSEEDX")),
        ] {
            let err = refusal(&with(write(name, &text)));
            assert!(
                err.contains("--nats-creds") && err.contains(name) && err.contains("not a NATS"),
                "{name}: {err}"
            );
            assert!(!err.contains("SECRET"), "{name}: the file reached the message: {err}");
        }
        let binary = dir.path().join("binary.creds");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let err = refusal(&with(binary));
        assert!(err.contains("--nats-creds") && err.contains("binary.creds"), "{err}");
    }

    /// A fake NATS server: sends an INFO with this id, version and `connect_urls`, and answers
    /// PING with PONG (all a client needs to connect). Returns its port.
    async fn fake_node(id: &'static str, version: &'static str, advertise: Vec<String>) -> u16 {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let info = json!({
            "server_id": id, "server_name": id, "version": version, "proto": 1,
            "headers": true, "max_payload": 1 << 20, "connect_urls": advertise,
        });
        // Ends with the test's runtime.
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let info = info.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    write.write_all(format!("INFO {info}\r\n").as_bytes()).await?;
                    let mut lines = BufReader::new(read).lines();
                    while let Some(line) = lines.next_line().await? {
                        if line.starts_with("PING") {
                            write.write_all(b"PONG\r\n").await?;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn every_node_the_cluster_advertises_is_version_checked() {
        // An unreachable advertised address is warned about, not refused.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let new = fake_node("NEW", "2.12.0", vec![]).await;
        let old = fake_node("OLD", "2.10.22", vec![]).await;
        let first = fake_node("FIRST", "2.15.1", vec![format!("127.0.0.1:{new}"), closed]).await;
        let connection = Connection::validate(&config(&format!("nats://127.0.0.1:{first}")))
            .expect("valid settings");
        let connected = async_nats::ServerInfo {
            server_id: "FIRST".into(),
            connect_urls: vec![format!("127.0.0.1:{new}")],
            ..Default::default()
        };
        assert_eq!(check_every_node(&connection, &connected).await.expect("all new"), 2);

        // Given as a bare entry of --store, or advertised: either way refused, named.
        for urls in [
            format!("nats://127.0.0.1:{first},127.0.0.1:{old}"),
            format!("nats://127.0.0.1:{first}"),
        ] {
            let urls = super::super::urls::normalize(&urls).unwrap();
            let connection = Connection::validate(&config(&urls)).unwrap();
            let connected = async_nats::ServerInfo {
                server_id: "FIRST".into(),
                connect_urls: vec![format!("127.0.0.1:{new}"), format!("127.0.0.1:{old}")],
                ..Default::default()
            };
            let err = check_every_node(&connection, &connected).await.unwrap_err().to_string();
            assert!(
                err.contains(&format!("OLD (nats://127.0.0.1:{old}) is 2.10.22, too old")),
                "{err}"
            );
        }
    }
}
