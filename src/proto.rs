//! The generated `events.v1` types and service traits, and the descriptor set that the
//! reflection service serves (with comments, so `grpcurl describe` shows them).

tonic::include_proto!("events.v1");

/// The encoded `FileDescriptorSet` of `proto/` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("events_descriptor");
