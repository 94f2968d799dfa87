//! The durable state of outbound webhooks: [`DeliveryStore`], over one of two backends with
//! the same records — [`SledDeliveries`] on the embedded store (below) and
//! [`KvDeliveries`](crate::delivery::kv_state::KvDeliveries) in a JetStream KV bucket beside the
//! event stream.
//!
//! On the embedded store:
//! It lives in a sled database of its own, `<data-dir>/deliveries`, beside the event log and
//! index: `eventsd reindex` rebuilds the index and never touches it. Two trees:
//! - `endpoints`: one [`EndpointRecord`] per endpoint (a deleted endpoint stays as a tombstone
//!   so its delivery log can still be read);
//! - `deliveries`: per endpoint, its cursor over the log under the key `<endpoint id>` and
//!   one `events.v1.Delivery` per attempted event under `<endpoint id><sequence, 8 bytes BE>`.
//!
//! Promises:
//! - **The publish path writes nothing here.** A record exists only once an event has been
//!   picked for delivery; events above the cursor are simply not yet tried.
//! - **Cursor and records move together**: [`SledDeliveries::advance`] writes the new records
//!   and the cursor that passes them in one atomic sled batch, so after any crash every event
//!   at or below the cursor that matched has a record, and every event above it is scanned
//!   again. A delivery may repeat after a crash; none is lost.
//! - Endpoint changes are flushed before they are acknowledged; delivery progress is flushed
//!   by sled in the background (losing it only repeats an attempt).

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use crate::auth::Mode;
use crate::error::Error;
use crate::proto::{Delivery, DeliveryStatus, Endpoint};

/// Length of an endpoint id: `ep_` and 20 characters.
pub const ENDPOINT_ID_LEN: usize = 23;

/// One signing secret of an endpoint.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SecretRecord {
    /// The secret as given to the endpoint's owner (`whsec_…`).
    #[prost(string, tag = "1")]
    pub secret: String,
    /// When it stops signing (unix milliseconds); 0 while it is the current secret.
    #[prost(int64, tag = "2")]
    pub expires_ms: i64,
}

/// An endpoint as stored: the API's `Endpoint` (without `secret`) and what only eventsd sees.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EndpointRecord {
    /// The endpoint's public fields; `secret` is always empty here.
    #[prost(message, optional, tag = "1")]
    pub endpoint: Option<Endpoint>,
    /// Signing secrets, newest first: the current one, then rotated-out ones in overlap.
    #[prost(message, repeated, tag = "2")]
    pub secrets: Vec<SecretRecord>,
    /// The mode of the key that created the endpoint (`all`, `live`, `test`): it never
    /// receives events that key could not read.
    #[prost(string, tag = "3")]
    pub creator_mode: String,
    /// Since when every attempt has failed (unix milliseconds); 0 when the last succeeded.
    #[prost(int64, tag = "4")]
    pub failing_since_ms: i64,
    /// Deleted: kept only so its delivery log can be listed.
    #[prost(bool, tag = "5")]
    pub deleted: bool,
}

impl EndpointRecord {
    /// The public fields (every stored record has them).
    pub fn endpoint(&self) -> &Endpoint {
        static EMPTY: std::sync::OnceLock<Endpoint> = std::sync::OnceLock::new();
        self.endpoint.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Endpoint::default))
    }

    /// The endpoint's id.
    pub fn id(&self) -> &str {
        &self.endpoint().id
    }

    /// The creator's mode.
    pub fn mode(&self) -> Mode {
        match self.creator_mode.as_str() {
            "live" => Mode::Live,
            "test" => Mode::Test,
            _ => Mode::All,
        }
    }

    /// The secrets that sign at `now_ms`, newest first.
    pub fn active_secrets(&self, now_ms: i64) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.expires_ms == 0 || s.expires_ms > now_ms)
            .map(|s| s.secret.as_str())
            .collect()
    }
}

/// The handle on the deliveries database; cheap to clone.
#[derive(Clone)]
pub struct SledDeliveries {
    db: sled::Db,
    endpoints: sled::Tree,
    deliveries: sled::Tree,
    /// One flush at a time: concurrent `sled::Db::flush_async` calls can hang forever in sled
    /// 0.34 (seen here with 32 concurrent endpoint writes), so flushes are serialised and run
    /// as the blocking `flush` on the blocking pool.
    flushing: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The key of one delivery record.
fn record_key(endpoint_id: &str, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(endpoint_id.len() + 8);
    key.extend_from_slice(endpoint_id.as_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

fn decode_delivery(bytes: &[u8]) -> Result<Delivery, Error> {
    Delivery::decode(bytes).map_err(|e| Error::Corrupt(format!("delivery record: {e}")))
}

fn sequence_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(ENDPOINT_ID_LEN..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

impl SledDeliveries {
    /// Opens (or creates) `<data_dir>/deliveries`.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(data_dir.join("deliveries"))
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(Error::from_storage)?;
        let endpoints = db.open_tree("endpoints")?;
        let deliveries = db.open_tree("deliveries")?;
        Ok(SledDeliveries { db, endpoints, deliveries, flushing: Default::default() })
    }

    /// Stores an endpoint and flushes it to disk.
    pub async fn put_endpoint(&self, record: &EndpointRecord) -> Result<(), Error> {
        self.endpoints.insert(record.id().as_bytes(), record.encode_to_vec())?;
        self.flush().await
    }

    /// One endpoint, tombstones included.
    pub fn endpoint(&self, id: &str) -> Result<Option<EndpointRecord>, Error> {
        match self.endpoints.get(id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => EndpointRecord::decode(&bytes[..])
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("endpoint record: {e}"))),
        }
    }

    /// Every endpoint, tombstones included, in id order.
    pub fn endpoints(&self) -> Result<Vec<EndpointRecord>, Error> {
        self.endpoints
            .iter()
            .map(|entry| {
                let (_, bytes) = entry?;
                EndpointRecord::decode(&bytes[..])
                    .map_err(|e| Error::Corrupt(format!("endpoint record: {e}")))
            })
            .collect()
    }

    /// The endpoint's cursor: every event at or below it has been considered.
    pub fn cursor(&self, endpoint_id: &str) -> Result<Option<u64>, Error> {
        Ok(self.deliveries.get(endpoint_id.as_bytes())?.and_then(|v| {
            let bytes: [u8; 8] = v.as_ref().try_into().ok()?;
            Some(u64::from_be_bytes(bytes))
        }))
    }

    /// Writes `records` and moves the cursor to `cursor`, atomically.
    pub fn advance(
        &self,
        endpoint_id: &str,
        cursor: u64,
        records: &[Delivery],
    ) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for record in records {
            batch.insert(record_key(endpoint_id, record.sequence), record.encode_to_vec());
        }
        batch.insert(endpoint_id.as_bytes(), &cursor.to_be_bytes());
        self.deliveries.apply_batch(batch)?;
        Ok(())
    }

    /// Sets the cursor and flushes it (a replay, or a new endpoint's start).
    pub async fn set_cursor(&self, endpoint_id: &str, cursor: u64) -> Result<(), Error> {
        self.deliveries.insert(endpoint_id.as_bytes(), &cursor.to_be_bytes())?;
        self.flush().await
    }

    /// Stores one delivery record.
    pub fn put_delivery(&self, endpoint_id: &str, record: &Delivery) -> Result<(), Error> {
        self.deliveries.insert(record_key(endpoint_id, record.sequence), record.encode_to_vec())?;
        Ok(())
    }

    /// One delivery record.
    pub fn delivery(&self, endpoint_id: &str, sequence: u64) -> Result<Option<Delivery>, Error> {
        self.deliveries
            .get(record_key(endpoint_id, sequence))?
            .map(|bytes| decode_delivery(&bytes))
            .transpose()
    }

    /// Records of one endpoint with a sequence above `after`, in sequence order, keeping those
    /// `keep` accepts, at most `limit` of them; also says whether the scan stopped early.
    pub fn deliveries(
        &self,
        endpoint_id: &str,
        after: u64,
        limit: usize,
        mut keep: impl FnMut(&Delivery) -> bool,
    ) -> Result<(Vec<Delivery>, bool), Error> {
        let start = record_key(endpoint_id, after.saturating_add(1));
        let end = record_key(endpoint_id, u64::MAX);
        let mut out = Vec::new();
        for entry in self.deliveries.range(start..=end) {
            let (key, bytes) = entry?;
            if sequence_of(&key).is_none_or(|s| s <= after) {
                continue;
            }
            let record = decode_delivery(&bytes)?;
            if keep(&record) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(record);
            }
        }
        Ok((out, false))
    }

    /// Every pending record of an endpoint (at start, to schedule their next attempts).
    pub fn pending(&self, endpoint_id: &str) -> Result<Vec<Delivery>, Error> {
        let pending = DeliveryStatus::Pending as i32;
        self.deliveries(endpoint_id, 0, usize::MAX, |d| d.status == pending).map(|(d, _)| d)
    }

    /// Flushes everything written so far to disk.
    pub async fn flush(&self) -> Result<(), Error> {
        let _one_at_a_time = self.flushing.lock().await;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| Error::Internal(format!("delivery state flush: {e}")))??;
        Ok(())
    }
}

/// Endpoint and delivery state, on the embedded store or in JetStream; cheap to clone. Both
/// backends keep the same records with the same promises (the publish path writes nothing;
/// after a crash every event at or below the cursor that matched has a record).
#[derive(Clone)]
pub enum DeliveryStore {
    /// `<data-dir>/deliveries`.
    Sled(SledDeliveries),
    /// A KV bucket beside the JetStream stream, shared by every instance.
    Kv(crate::delivery::kv_state::KvDeliveries),
}

impl DeliveryStore {
    /// Opens (or creates) `<data_dir>/deliveries`.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        SledDeliveries::open(data_dir).map(DeliveryStore::Sled)
    }

    /// Stores an endpoint durably.
    pub async fn put_endpoint(&self, record: &EndpointRecord) -> Result<(), Error> {
        match self {
            DeliveryStore::Sled(s) => s.put_endpoint(record).await,
            DeliveryStore::Kv(k) => k.put_endpoint(record).await,
        }
    }

    /// One endpoint, tombstones included.
    pub async fn endpoint(&self, id: &str) -> Result<Option<EndpointRecord>, Error> {
        match self {
            DeliveryStore::Sled(s) => s.endpoint(id),
            DeliveryStore::Kv(k) => k.endpoint(id).await,
        }
    }

    /// Every endpoint, tombstones included, in id order.
    pub async fn endpoints(&self) -> Result<Vec<EndpointRecord>, Error> {
        match self {
            DeliveryStore::Sled(s) => s.endpoints(),
            DeliveryStore::Kv(k) => k.endpoints().await,
        }
    }

    /// The endpoint's cursor: every event at or below it has been considered.
    pub async fn cursor(&self, endpoint_id: &str) -> Result<Option<u64>, Error> {
        match self {
            DeliveryStore::Sled(s) => s.cursor(endpoint_id),
            DeliveryStore::Kv(k) => k.cursor(endpoint_id).await,
        }
    }

    /// Writes `records` and moves the cursor to `cursor`; after a crash either both are
    /// stored, or the cursor is not (and the events are scanned again).
    pub async fn advance(
        &self,
        endpoint_id: &str,
        cursor: u64,
        records: &[Delivery],
    ) -> Result<(), Error> {
        match self {
            DeliveryStore::Sled(s) => s.advance(endpoint_id, cursor, records),
            DeliveryStore::Kv(k) => k.advance(endpoint_id, cursor, records).await,
        }
    }

    /// Sets the cursor durably (a replay, or a new endpoint's start).
    pub async fn set_cursor(&self, endpoint_id: &str, cursor: u64) -> Result<(), Error> {
        match self {
            DeliveryStore::Sled(s) => s.set_cursor(endpoint_id, cursor).await,
            DeliveryStore::Kv(k) => k.set_cursor(endpoint_id, cursor).await,
        }
    }

    /// Stores one delivery record.
    pub async fn put_delivery(&self, endpoint_id: &str, record: &Delivery) -> Result<(), Error> {
        match self {
            DeliveryStore::Sled(s) => s.put_delivery(endpoint_id, record),
            DeliveryStore::Kv(k) => k.put_delivery(endpoint_id, record).await,
        }
    }

    /// One delivery record.
    pub async fn delivery(
        &self,
        endpoint_id: &str,
        sequence: u64,
    ) -> Result<Option<Delivery>, Error> {
        match self {
            DeliveryStore::Sled(s) => s.delivery(endpoint_id, sequence),
            DeliveryStore::Kv(k) => k.delivery(endpoint_id, sequence).await,
        }
    }

    /// The records of these sequences that exist.
    pub async fn deliveries_at(
        &self,
        endpoint_id: &str,
        sequences: &[u64],
    ) -> Result<HashMap<u64, Delivery>, Error> {
        match self {
            DeliveryStore::Sled(s) => {
                let mut found = HashMap::with_capacity(sequences.len());
                for &sequence in sequences {
                    if let Some(record) = s.delivery(endpoint_id, sequence)? {
                        found.insert(sequence, record);
                    }
                }
                Ok(found)
            }
            DeliveryStore::Kv(k) => k.deliveries_at(endpoint_id, sequences).await,
        }
    }

    /// Records of one endpoint with a sequence above `after`, in sequence order, keeping those
    /// `keep` accepts, at most `limit` of them; also says whether there are more.
    pub async fn deliveries(
        &self,
        endpoint_id: &str,
        after: u64,
        limit: usize,
        keep: impl FnMut(&Delivery) -> bool,
    ) -> Result<(Vec<Delivery>, bool), Error> {
        match self {
            DeliveryStore::Sled(s) => s.deliveries(endpoint_id, after, limit, keep),
            DeliveryStore::Kv(k) => k.deliveries(endpoint_id, after, limit, keep).await,
        }
    }

    /// Every pending record of an endpoint (when a worker starts, to schedule them).
    pub async fn pending(&self, endpoint_id: &str) -> Result<Vec<Delivery>, Error> {
        let pending = DeliveryStatus::Pending as i32;
        self.deliveries(endpoint_id, 0, usize::MAX, |d| d.status == pending).await.map(|(d, _)| d)
    }

    /// Makes everything written so far durable (JetStream acknowledged each write already).
    pub async fn flush(&self) -> Result<(), Error> {
        match self {
            DeliveryStore::Sled(s) => s.flush().await,
            DeliveryStore::Kv(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(sequence: u64, status: DeliveryStatus) -> Delivery {
        Delivery { sequence, status: status as i32, ..Delivery::default() }
    }

    #[tokio::test]
    async fn cursor_and_records_move_together_and_list_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDeliveries::open(dir.path()).unwrap();
        let ep = "ep_aaaaaaaaaaaaaaaaaaaa";
        let other = "ep_bbbbbbbbbbbbbbbbbbbb";
        assert_eq!(store.cursor(ep).unwrap(), None);
        store
            .advance(
                ep,
                9,
                &[delivery(3, DeliveryStatus::Pending), delivery(7, DeliveryStatus::Succeeded)],
            )
            .unwrap();
        store.advance(other, 4, &[delivery(4, DeliveryStatus::Pending)]).unwrap();
        assert_eq!(store.cursor(ep).unwrap(), Some(9));
        let (all, more) = store.deliveries(ep, 0, 10, |_| true).unwrap();
        assert_eq!(all.iter().map(|d| d.sequence).collect::<Vec<_>>(), vec![3, 7]);
        assert!(!more);
        let (first, more) = store.deliveries(ep, 0, 1, |_| true).unwrap();
        assert_eq!(first.len(), 1);
        assert!(more);
        assert_eq!(store.deliveries(ep, 3, 10, |_| true).unwrap().0[0].sequence, 7);
        assert_eq!(store.pending(ep).unwrap().len(), 1);
        assert_eq!(store.pending(other).unwrap()[0].sequence, 4);
        drop(store);
        // sled's background flusher lets go of the folder's lock a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let reopened = loop {
            match SledDeliveries::open(dir.path()) {
                Ok(reopened) => break reopened,
                Err(err) if std::time::Instant::now() < deadline => {
                    eprintln!("reopen: {err}; trying again");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => panic!("reopen: {err}"),
            }
        };
        assert_eq!(reopened.cursor(ep).unwrap(), Some(9));
        assert_eq!(reopened.delivery(ep, 7).unwrap().unwrap().status, 2);
    }

    #[test]
    fn active_secrets_drop_expired_ones() {
        let record = EndpointRecord {
            secrets: vec![
                SecretRecord { secret: "new".into(), expires_ms: 0 },
                SecretRecord { secret: "old".into(), expires_ms: 1_000 },
            ],
            ..EndpointRecord::default()
        };
        assert_eq!(record.active_secrets(999), vec!["new", "old"]);
        assert_eq!(record.active_secrets(1_000), vec!["new"]);
    }
}

#[cfg(test)]
mod concurrency {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_endpoint_writes_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDeliveries::open(dir.path()).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32 {
            let store = store.clone();
            tasks.spawn(async move {
                let record = EndpointRecord {
                    endpoint: Some(Endpoint { id: format!("ep_{i:020}"), ..Endpoint::default() }),
                    ..EndpointRecord::default()
                };
                store.set_cursor(record.id(), 1).await.unwrap();
                store.put_endpoint(&record).await.unwrap();
            });
        }
        let all = async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap()
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), all).await.expect("flushes hung");
    }
}
