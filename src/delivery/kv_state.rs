//! The state of outbound webhooks on the JetStream store: a KV bucket beside the event stream,
//! `<stream>_DELIVERIES`, with as many replicas as the stream, created at start or verified
//! (history 1, file storage, the stream's replicas, no direct gets: every read is answered by
//! the stream leader, so a worker reads back what it just wrote). Every instance over the stream reads and
//! writes the same bucket, so endpoints, cursors and delivery records are shared.
//!
//! Keys (an endpoint id is `ep_` and 20 lowercase letters or digits, a valid key part):
//! - `ep.<endpoint>`: the [`EndpointRecord`] (a deleted endpoint stays as a tombstone);
//! - `cur.<endpoint>`: the cursor, 8 bytes big-endian;
//! - `dlv.<endpoint>.<sequence, 20 digits>`: one `events.v1.Delivery` per attempted event;
//! - `lease.<endpoint>`: which instance runs the endpoint's worker (`delivery::sharing`).
//!
//! Promises:
//! - **The publish path writes nothing here**, as on the embedded store.
//! - **Crash order instead of a transaction**: KV has no multi-key write, so [`advance`]
//!   writes the delivery records first and the cursor last. A crash between them leaves the
//!   cursor behind records that exist: those events are scanned again, keep their record, and
//!   are attempted again (a repeat with the same `webhook-id`), never lost.
//! - **One cursor writer**: the cursor is written with the revision this instance last read or
//!   wrote (`update`, compare-and-set), so an instance that lost the endpoint's lease cannot
//!   move it back under the new holder; its `advance` fails with `ShuttingDown` and its worker
//!   stops.
//! - Every write returns once JetStream acknowledged it (a quorum of replicas stored it).
//!
//! [`advance`]: KvDeliveries::advance

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv;
use bytes::Bytes;
use prost::Message;
use tokio_stream::StreamExt;

use crate::delivery::state::EndpointRecord;
use crate::error::Error;
use crate::proto::Delivery;

/// Longest one scan of a key prefix may take.
const SCAN_LIMIT: Duration = Duration::from_secs(30);

/// Most delivery records written (or read) concurrently by one call.
const WRITE_CONCURRENCY: usize = 64;

/// The bucket's name for a stream.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}_DELIVERIES")
}

fn endpoint_key(id: &str) -> String {
    format!("ep.{id}")
}

fn cursor_key(id: &str) -> String {
    format!("cur.{id}")
}

fn delivery_key(id: &str, sequence: u64) -> String {
    format!("dlv.{id}.{sequence:020}")
}

/// The lease key of an endpoint.
pub fn lease_key(id: &str) -> String {
    format!("lease.{id}")
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("JetStream KV ({what}): {error}"))
}

fn decode_endpoint(bytes: &[u8]) -> Result<EndpointRecord, Error> {
    EndpointRecord::decode(bytes).map_err(|e| Error::Corrupt(format!("endpoint record: {e}")))
}

fn decode_delivery(bytes: &[u8]) -> Result<Delivery, Error> {
    Delivery::decode(bytes).map_err(|e| Error::Corrupt(format!("delivery record: {e}")))
}

/// The KV backend; cheap to clone.
#[derive(Clone)]
pub struct KvDeliveries {
    kv: Arc<kv::Store>,
    client: async_nats::Client,
    /// The revision of each endpoint's cursor as this instance last read or wrote it.
    cursor_revisions: Arc<Mutex<HashMap<String, u64>>>,
}

impl KvDeliveries {
    /// Creates the bucket, or verifies an existing one; retries while a cluster that has just
    /// started elects its leaders (for up to 30 seconds).
    pub async fn open(
        client: &async_nats::Client,
        stream: &str,
        replicas: usize,
    ) -> Result<Self, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let bucket = bucket_name(stream);
        let started = std::time::Instant::now();
        loop {
            let attempt = async {
                if js.get_stream(format!("KV_{bucket}")).await.is_err() {
                    // Created like `create_key_value` would, but without direct gets: any
                    // replica may answer those, and a lagging one answers stale.
                    let created = js.create_stream(stream_config(&bucket, replicas)).await;
                    if let Err(error) = created {
                        tracing::debug!(%error, "creating the delivery state bucket");
                    }
                }
                js.get_key_value(&bucket).await.map_err(|e| e.to_string())
            };
            match attempt.await {
                Ok(mut store) => {
                    verify(&bucket, &mut store, replicas).await?;
                    return Ok(KvDeliveries {
                        kv: Arc::new(store),
                        client: client.clone(),
                        cursor_revisions: Arc::default(),
                    });
                }
                Err(why) if started.elapsed() < Duration::from_secs(30) => {
                    tracing::info!(reason = %why, "waiting for JetStream (delivery state bucket)");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(why) => {
                    return Err(Error::Startup(format!(
                        "cannot open or create the KV bucket {bucket}: {why}"
                    )))
                }
            }
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Stores an endpoint.
    pub async fn put_endpoint(&self, record: &EndpointRecord) -> Result<(), Error> {
        self.kv
            .put(endpoint_key(record.id()), Bytes::from(record.encode_to_vec()))
            .await
            .map_err(|e| unavailable("storing an endpoint", e))?;
        Ok(())
    }

    /// One endpoint, tombstones included.
    pub async fn endpoint(&self, id: &str) -> Result<Option<EndpointRecord>, Error> {
        match self.kv.get(endpoint_key(id)).await {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => decode_endpoint(&bytes).map(Some),
            Err(e) => Err(unavailable("reading an endpoint", e)),
        }
    }

    /// Every endpoint, tombstones included, in id order.
    pub async fn endpoints(&self) -> Result<Vec<EndpointRecord>, Error> {
        let mut out = Vec::new();
        for (_, value) in self.scan("ep.*").await? {
            out.push(decode_endpoint(&value)?);
        }
        out.sort_by(|a, b| a.id().cmp(b.id()));
        Ok(out)
    }

    /// The endpoint's cursor (and its revision, remembered for the next write).
    pub async fn cursor(&self, id: &str) -> Result<Option<u64>, Error> {
        let entry = self
            .kv
            .entry(cursor_key(id))
            .await
            .map_err(|e| unavailable("reading a cursor", e))?
            .filter(|e| e.operation == kv::Operation::Put);
        let Some(entry) = entry else { return Ok(None) };
        self.remember(id, entry.revision);
        let bytes: [u8; 8] = entry
            .value
            .as_ref()
            .try_into()
            .map_err(|_| Error::Corrupt(format!("the cursor of {id} is not 8 bytes")))?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    fn remember(&self, id: &str, revision: u64) {
        if let Ok(mut revisions) = self.cursor_revisions.lock() {
            revisions.insert(id.to_owned(), revision);
        }
    }

    fn revision(&self, id: &str) -> Option<u64> {
        self.cursor_revisions.lock().ok().and_then(|r| r.get(id).copied())
    }

    /// Writes `records`, then moves the cursor (compare-and-set on its last known revision).
    pub async fn advance(&self, id: &str, cursor: u64, records: &[Delivery]) -> Result<(), Error> {
        for chunk in records.chunks(WRITE_CONCURRENCY) {
            let mut writes = tokio::task::JoinSet::new();
            for record in chunk {
                let (kv, key) = (self.kv.clone(), delivery_key(id, record.sequence));
                let value = Bytes::from(record.encode_to_vec());
                writes.spawn(async move { kv.put(key, value).await });
            }
            while let Some(written) = writes.join_next().await {
                written
                    .map_err(|e| Error::Internal(format!("delivery write task: {e}")))?
                    .map_err(|e| unavailable("storing a delivery", e))?;
            }
        }
        let value = Bytes::copy_from_slice(&cursor.to_be_bytes());
        let revision = match self.revision(id) {
            Some(revision) => match self.kv.update(cursor_key(id), value, revision).await {
                Ok(revision) => revision,
                // Another instance moved the cursor: it holds the endpoint now, or did since
                // this worker read the cursor. This worker must stop (and start again from the
                // stored state if it takes the lease again).
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    if let Ok(mut revisions) = self.cursor_revisions.lock() {
                        revisions.remove(id);
                    }
                    tracing::warn!(endpoint = id, "the cursor was moved by another instance");
                    return Err(Error::ShuttingDown);
                }
                Err(e) => return Err(unavailable("moving a cursor", e)),
            },
            None => self
                .kv
                .put(cursor_key(id), value)
                .await
                .map_err(|e| unavailable("moving a cursor", e))?,
        };
        self.remember(id, revision);
        Ok(())
    }

    /// Sets the cursor (a replay through the endpoint's worker, or a new endpoint's start).
    pub async fn set_cursor(&self, id: &str, cursor: u64) -> Result<(), Error> {
        let value = Bytes::copy_from_slice(&cursor.to_be_bytes());
        let revision = self
            .kv
            .put(cursor_key(id), value)
            .await
            .map_err(|e| unavailable("setting a cursor", e))?;
        self.remember(id, revision);
        Ok(())
    }

    /// Stores one delivery record.
    pub async fn put_delivery(&self, id: &str, record: &Delivery) -> Result<(), Error> {
        self.kv
            .put(delivery_key(id, record.sequence), Bytes::from(record.encode_to_vec()))
            .await
            .map_err(|e| unavailable("storing a delivery", e))?;
        Ok(())
    }

    /// One delivery record.
    pub async fn delivery(&self, id: &str, sequence: u64) -> Result<Option<Delivery>, Error> {
        match self.kv.get(delivery_key(id, sequence)).await {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => decode_delivery(&bytes).map(Some),
            Err(e) => Err(unavailable("reading a delivery", e)),
        }
    }

    /// The records of these sequences that exist, read concurrently.
    pub async fn deliveries_at(
        &self,
        id: &str,
        sequences: &[u64],
    ) -> Result<HashMap<u64, Delivery>, Error> {
        let mut found = HashMap::with_capacity(sequences.len());
        for chunk in sequences.chunks(WRITE_CONCURRENCY) {
            let mut reads = tokio::task::JoinSet::new();
            for &sequence in chunk {
                let (kv, key) = (self.kv.clone(), delivery_key(id, sequence));
                reads.spawn(async move { (sequence, kv.get(key).await) });
            }
            while let Some(read) = reads.join_next().await {
                let (sequence, value) =
                    read.map_err(|e| Error::Internal(format!("delivery read task: {e}")))?;
                if let Some(bytes) = value.map_err(|e| unavailable("reading a delivery", e))? {
                    found.insert(sequence, decode_delivery(&bytes)?);
                }
            }
        }
        Ok(found)
    }

    /// Records of one endpoint above `after`, in sequence order, filtered and limited. Reads
    /// every record of the endpoint (one ordered consumer over its keys).
    pub async fn deliveries(
        &self,
        id: &str,
        after: u64,
        limit: usize,
        mut keep: impl FnMut(&Delivery) -> bool,
    ) -> Result<(Vec<Delivery>, bool), Error> {
        let mut all = Vec::new();
        for (_, value) in self.scan(&format!("dlv.{id}.*")).await? {
            let record = decode_delivery(&value)?;
            if record.sequence > after {
                all.push(record);
            }
        }
        all.sort_by_key(|d| d.sequence);
        let mut out = Vec::new();
        for record in all {
            if keep(&record) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(record);
            }
        }
        Ok((out, false))
    }

    /// The current value of every key matching `pattern` (deleted keys left out), read with an
    /// ordered consumer that delivers the last message of each key and ends when none is left.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<(String, Bytes)>, Error> {
        tokio::time::timeout(SCAN_LIMIT, self.scan_unbounded(pattern))
            .await
            .map_err(|_| unavailable("listing keys", "timed out"))?
    }

    async fn scan_unbounded(&self, pattern: &str) -> Result<Vec<(String, Bytes)>, Error> {
        let consumer = self
            .kv
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                description: Some("eventsd delivery state scan".to_string()),
                filter_subject: format!("{}{}", self.kv.prefix, pattern),
                replay_policy: ReplayPolicy::Instant,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("listing keys", e))?;
        // Deleted once read: an ordered consumer would otherwise linger for 30 s after each
        // scan (ListDeliveries polled often would pile them up).
        let name = consumer.cached_info().name.clone();
        let read = self.read_scan(consumer).await;
        if let Err(error) = self.kv.stream.delete_consumer(&name).await {
            tracing::debug!(%error, "deleting a scan's consumer; it expires on its own");
        }
        read
    }

    async fn read_scan(
        &self,
        consumer: async_nats::jetstream::consumer::Consumer<OrderedConfig>,
    ) -> Result<Vec<(String, Bytes)>, Error> {
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| unavailable("listing keys", e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| unavailable("listing keys", e))?;
            let info = message.info().map_err(|e| unavailable("listing keys", e))?;
            let pending = info.pending;
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            if !deleted {
                let key = message.subject.strip_prefix(&self.kv.prefix).unwrap_or_default();
                out.push((key.to_owned(), message.payload.clone()));
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }
}

/// The bucket's stream: a KV bucket (history 1, rollups, no deletes but purges, discard new)
/// whose reads go to the stream leader, which holds every acknowledged write.
fn stream_config(bucket: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    Config {
        name: format!("KV_{bucket}"),
        description: Some(
            "eventsd: outbound webhook endpoints, cursors, deliveries and leases".into(),
        ),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: false,
        discard: DiscardPolicy::New,
        ..Default::default()
    }
}

/// Refuses a bucket whose settings break the promises above (another history, replicas or
/// storage): eventsd never changes an existing bucket.
async fn verify(bucket: &str, store: &mut kv::Store, replicas: usize) -> Result<(), Error> {
    let info = store
        .stream
        .info()
        .await
        .map_err(|e| Error::Startup(format!("cannot read KV bucket {bucket}: {e}")))?;
    let config = &info.config;
    let problems = [
        (config.max_messages_per_subject != 1, "history must be 1"),
        (config.num_replicas != replicas, "its replicas must match --nats-replicas"),
        (
            config.storage != async_nats::jetstream::stream::StorageType::File,
            "storage must be file",
        ),
        (config.allow_direct, "direct gets must be off (reads go to the stream leader)"),
    ];
    if let Some((_, why)) = problems.iter().find(|(bad, _)| *bad) {
        return Err(Error::Startup(format!(
            "KV bucket {bucket} exists with other settings: {why}; remove it or use another \
             --nats-stream (eventsd never changes an existing bucket)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_delivery_keys_sort_by_sequence() {
        let id = "ep_aaaaaaaaaaaaaaaaaaaa";
        assert_eq!(delivery_key(id, 42), "dlv.ep_aaaaaaaaaaaaaaaaaaaa.00000000000000000042");
        assert!(delivery_key(id, 9) < delivery_key(id, 10));
        assert!(delivery_key(id, u64::MAX).ends_with(&u64::MAX.to_string()));
        for key in [endpoint_key(id), cursor_key(id), lease_key(id)] {
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b)));
        }
    }
}
