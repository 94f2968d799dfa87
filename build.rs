//! Compiles `proto/` with protox (pure Rust, no protoc needed) and hands the descriptors to
//! tonic-prost-build, twice (see `src/proto.rs` for why):
//! - the **plain** set in OUT_DIR: every message as prost generates it, and the client;
//! - the **wire** set in OUT_DIR/wire: the server, the publish requests and the responses that
//!   carry events, with `events.v1.Event` mapped to `crate::proto::wire::WireEvent` (stored
//!   bytes written as they are), `google.protobuf.Struct` to `crate::proto::WireStruct` (a
//!   publish's `data` kept as the bytes that arrived) and every other message mapped to the
//!   plain set.
//!
//! The encoded descriptor set is also written to OUT_DIR for the gRPC reflection service, with
//! imports and source info so `grpcurl describe` shows comments. It describes the real
//! messages: the wire set is the same protocol, only its Rust types differ.

use std::{env, fs, path::PathBuf};

/// Messages of `events.v1` the wire set takes from the plain set: everything but `Event`, the
/// responses that hold it and the publish requests (whose `data` the server reads as bytes).
const PLAIN: &[&str] = &[
    "GetEventRequest",
    "ListEventsRequest",
    "SubscribeEventsRequest",
    "CaughtUp",
    "Heartbeat",
    "Order",
    "Format",
    // webhooks.proto: no message of it holds an Event.
    "EndpointFormat",
    "Endpoint",
    "CreateEndpointRequest",
    "GetEndpointRequest",
    "ListEndpointsRequest",
    "ListEndpointsResponse",
    "UpdateEndpointRequest",
    "DeleteEndpointRequest",
    "DeleteEndpointResponse",
    "RotateEndpointSecretRequest",
    "ReplayEndpointRequest",
    "DeliveryStatus",
    "DeliveryAttempt",
    "Delivery",
    "ListDeliveriesRequest",
    "ListDeliveriesResponse",
    "RetryDeliveryRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(["events/v1/events.proto", "events/v1/webhooks.proto"])?
        .file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("events_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds.clone())?;

    let wire_dir = out_dir.join("wire");
    fs::create_dir_all(&wire_dir)?;
    let mut wire = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&wire_dir)
        .extern_path(".events.v1.Event", "crate::proto::wire::WireEvent")
        .extern_path(".google.protobuf.Struct", "crate::proto::WireStruct")
        .extern_path(".io.cloudevents.v1", "crate::proto::io::cloudevents::v1");
    for name in PLAIN {
        wire = wire.extern_path(format!(".events.v1.{name}"), format!("crate::proto::{name}"));
    }
    wire.compile_fds(fds)?;
    Ok(())
}
