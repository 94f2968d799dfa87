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
    /// Replicas of every event (1, 3 or 5).
    pub replicas: usize,
    /// How long one call may wait for JetStream, retries of unknown outcomes included.
    pub request_timeout: Duration,
    /// The recent-events cache gets its share of this (`--cache-bytes`).
    pub cache_bytes: u64,
    /// Where publish figures go.
    pub metrics: Metrics,
}

/// Connects and returns the API handle with the stream's info.
pub async fn connect(config: &JetStreamConfig) -> Result<(Api, StreamInfo), Error> {
    let shown = redacted(&config.urls);
    let urls: Vec<async_nats::ServerAddr> = config
        .urls
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Startup(format!("--store {shown}: {e}")))?;
    let mut options = async_nats::ConnectOptions::new()
        .name("eventsd")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(config.request_timeout));
    if let Some((user, password)) = credentials(&urls)? {
        options = options.user_and_password(user, password);
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = tokio::time::timeout(Duration::from_secs(15), options.connect(urls))
        .await
        .map_err(|_| Error::Startup(format!("no NATS server of {shown} answered")))?
        .map_err(|e| Error::Startup(format!("cannot connect to {shown}: {e}")))?;
    check_version(&client.server_info().version)?;
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
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
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

/// Refuses servers older than [`MIN_VERSION`].
fn check_version(version: &str) -> Result<(), Error> {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u64>().ok());
    let found = (parts.next().flatten(), parts.next().flatten());
    match found {
        (Some(major), Some(minor)) if (major, minor) >= MIN_VERSION => Ok(()),
        _ => Err(Error::Startup(format!(
            "nats-server {version} is too old: eventsd needs 2.12 or newer, whose atomic batches \
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
        assert!(check_version("2.12.0").is_ok());
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("3.0.0-beta").is_ok());
        let err = check_version("2.9.10").unwrap_err().to_string();
        assert!(err.contains("2.9.10") && err.contains("2.12"), "{err}");
        assert!(check_version("garbage").is_err());
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
}
