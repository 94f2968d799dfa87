//! Stored bytes on the wire: every RPC that returns events sends each event's stored encoding
//! unchanged. Responses are read raw (a codec that keeps the response bytes, then field 1 taken
//! apart by hand), so no decoder of ours stands between the wire and the comparison, and
//! compared with `StoredEvent::bytes()` of what the store holds once the server has stopped.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use eventsd::config::StoreKind;
use eventsd::metrics::Metrics;
use eventsd::proto::subscribe_events_request::Start;
use eventsd::proto::{
    Event, GetEventRequest, ListEventsRequest, PublishEventRequest, PublishEventsRequest,
    SubscribeEventsRequest,
};
use eventsd::store::jetstream::{JetStreamConfig, JetStreamStore};
use eventsd::store::{EventStore, SledStore, StoreConfig};
use prost::Message;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

use crate::helpers::spawn_app;
use crate::support::{event, json_struct, HANG_GUARD};

/// Encodes requests with prost; hands responses back as their raw bytes.
struct RawCodec<T>(PhantomData<T>);

impl<T> Default for RawCodec<T> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

struct RequestEncoder<T>(PhantomData<T>);
struct RawDecoder;

impl<T: Message + Send + 'static> Codec for RawCodec<T> {
    type Encode = T;
    type Decode = Bytes;
    type Encoder = RequestEncoder<T>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RequestEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl<T: Message> Encoder for RequestEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Every occurrence of length-delimited field `number` in an encoded message, as raw bytes.
fn field(mut message: &[u8], number: u32) -> Vec<Bytes> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut found = Vec::new();
    while message.has_remaining() {
        let (tag, wire_type) = decode_key(&mut message).expect("a field key");
        if tag == number && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut message).expect("a length") as usize;
            found.push(Bytes::copy_from_slice(&message[..len]));
            message.advance(len);
        } else {
            skip_field(wire_type, tag, &mut message, DecodeContext::default()).expect("a field");
        }
    }
    found
}

/// A raw client of the EventService.
struct Raw(tonic::client::Grpc<tonic::transport::Channel>);

impl Raw {
    async fn unary<T: Message + Send + 'static>(&mut self, method: &'static str, req: T) -> Bytes {
        self.0.ready().await.expect("ready");
        let path = PathAndQuery::from_static(method);
        let response = self.0.unary(tonic::Request::new(req), path, RawCodec::default()).await;
        response.unwrap_or_else(|s| panic!("{method}: {s}")).into_inner()
    }

    async fn stream(&mut self, req: SubscribeEventsRequest, items: usize) -> Vec<Bytes> {
        self.0.ready().await.expect("ready");
        let path = PathAndQuery::from_static("/events.v1.EventService/SubscribeEvents");
        let codec = RawCodec::<SubscribeEventsRequest>::default();
        let response = self.0.server_streaming(tonic::Request::new(req), path, codec).await;
        let mut stream = response.expect("subscribe").into_inner();
        let mut out = Vec::new();
        while out.len() < items {
            let item = tokio::time::timeout(HANG_GUARD, stream.next()).await.expect("an item");
            out.push(item.expect("stream open").expect("an item"));
        }
        out
    }
}

/// Opens the app's store as the server did, once the server has stopped.
async fn open_store(config: &eventsd::ServeConfig) -> Arc<dyn EventStore> {
    match &config.store {
        StoreKind::Embedded => Arc::new(
            SledStore::open(&StoreConfig {
                path: config.data_dir.clone(),
                cache_bytes: config.cache_bytes,
                durability: config.durability,
                metrics: Metrics::new(),
                segment_bytes: config.segment_bytes,
                list_deadline: config.list_deadline,
            })
            .expect("open the stopped store"),
        ),
        StoreKind::JetStream(urls) => Arc::new(
            JetStreamStore::open(&JetStreamConfig {
                urls: urls.clone(),
                stream: config.nats_stream.clone(),
                replicas: config.nats_replicas,
                tls_ca: config.nats_tls_ca.clone(),
                tls_cert: config.nats_tls_cert.clone(),
                tls_key: config.nats_tls_key.clone(),
                creds: config.nats_creds.clone(),
                request_timeout: config.request_timeout,
                cache_bytes: config.cache_bytes,
                metrics: Metrics::new(),
            })
            .await
            .expect("open the stream"),
        ),
    }
}

#[tokio::test]
async fn every_rpc_sends_each_event_as_the_bytes_the_store_holds() {
    let mut app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut raw = Raw(tonic::client::Grpc::new(channel));

    // Arrange: events with varied data (floats, nesting, unicode, an empty object), both
    // modes, one with an explicit `created`.
    let datas = [
        json!({"object": "charge", "amount": 100000, "fee": 3.65, "tags": ["a", "b"]}),
        json!({"nested": {"deep": {"deeper": [1, {"x": null}, true]}}, "name": "東京 \"q\""}),
        json!({}),
        json!({"big": 9007199254740992u64, "neg": -0.5, "e": 1.5e-300}),
    ];
    let single = PublishEventRequest {
        id: "evt_wire_single".into(),
        data: Some(json_struct(datas[0].clone())),
        source: "omise".into(),
        api_version: "2019-05-29".into(),
        created: Some(prost_types::Timestamp { seconds: 1_600_000_000, nanos: 123 }),
        ..event("charge.create")
    };
    let published_one = raw.unary("/events.v1.EventService/PublishEvent", single).await;
    let batch = PublishEventsRequest {
        events: datas
            .iter()
            .enumerate()
            .map(|(i, data)| PublishEventRequest {
                data: Some(json_struct(data.clone())),
                livemode: i % 2 == 1,
                ..event(&format!("refund.t{i}"))
            })
            .collect(),
    };
    let published_batch = raw.unary("/events.v1.EventService/PublishEvents", batch).await;
    let mut published = vec![published_one];
    published.extend(field(&published_batch, 1));
    assert_eq!(published.len(), 5);

    // Act: read every event back through each RPC, raw.
    let events: Vec<Event> = published.iter().map(|b| Event::decode(b.clone()).unwrap()).collect();
    let mut gets = HashMap::new();
    for e in &events {
        let request = GetEventRequest { id: e.id.clone(), livemode: None };
        gets.insert(e.id.clone(), raw.unary("/events.v1.EventService/GetEvent", request).await);
    }
    let page = raw.unary("/events.v1.EventService/ListEvents", ListEventsRequest::default()).await;
    let listed = field(&page, 1);
    let subscribe =
        SubscribeEventsRequest { start: Some(Start::FromBeginning(true)), ..Default::default() };
    let streamed: Vec<Bytes> =
        raw.stream(subscribe, events.len()).await.iter().flat_map(|item| field(item, 1)).collect();
    app.stop().await;

    // Assert: each is the store's bytes for that event, byte for byte.
    let store = open_store(&app.config).await;
    assert_eq!(listed.len(), events.len());
    assert_eq!(streamed.len(), events.len());
    for (i, e) in events.iter().enumerate() {
        let stored = store.get(e.livemode, &e.id).await.unwrap().expect("the event is stored");
        let bytes = stored.bytes();
        assert_eq!(&published[i], bytes, "publish response of {}", e.id);
        assert_eq!(&gets[&e.id], bytes, "GetEvent of {}", e.id);
        let position = listed.iter().position(|b| Event::decode(b.clone()).unwrap().id == e.id);
        assert_eq!(&listed[position.expect("listed")], bytes, "ListEvents of {}", e.id);
        let position = streamed.iter().position(|b| Event::decode(b.clone()).unwrap().id == e.id);
        assert_eq!(&streamed[position.expect("streamed")], bytes, "SubscribeEvents of {}", e.id);
    }
    store.close().await;

    // And for the embedded store, each is the record's payload in its segment file, read
    // here straight from the files (frame: len u32 LE, crc32c u32 LE, sequence u64 LE).
    if matches!(app.config.store, StoreKind::Embedded) {
        let records = segment_records(&app.config.data_dir.join("log"));
        for (i, e) in events.iter().enumerate() {
            let record = records.get(&e.sequence).expect("a record of the event's sequence");
            assert_eq!(&published[i], record, "publish response of {} vs its segment record", e.id);
            assert_eq!(&gets[&e.id], record, "GetEvent of {} vs its segment record", e.id);
        }
    }
}

/// Every record payload in the log's segment files, by sequence.
fn segment_records(log: &std::path::Path) -> HashMap<u64, Bytes> {
    let mut records = HashMap::new();
    for entry in std::fs::read_dir(log).expect("the log folder") {
        let path = entry.expect("an entry").path();
        if path.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let mut data = Bytes::from(std::fs::read(&path).expect("read a segment"));
        while data.remaining() >= 16 {
            let len = data.get_u32_le() as usize;
            let _crc = data.get_u32_le();
            let sequence = data.get_u64_le();
            records.insert(sequence, data.split_to(len));
        }
    }
    records
}
