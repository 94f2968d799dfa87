//! The generated protobuf code and the descriptor set that the reflection service serves
//! (with comments, so `grpcurl describe` shows them). The modules mirror the proto packages,
//! because generated code refers from one package to another by relative path; `events.v1`
//! is re-exported here, since that is what the rest of eventsd speaks.

/// Package `events.v1`.
pub mod events {
    /// Version 1 of the events API.
    pub mod v1 {
        tonic::include_proto!("events.v1");
    }
}

/// Package `io.cloudevents.v1`: the CloudEvents 1.0 protobuf format.
pub mod io {
    /// CloudEvents.
    pub mod cloudevents {
        /// CloudEvents 1.0.
        pub mod v1 {
            tonic::include_proto!("io.cloudevents.v1");
        }
    }
}

pub use events::v1::*;

/// The encoded `FileDescriptorSet` of `proto/` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("events_descriptor");
