//! Generated gRPC types for `crossflow.v1`, built from `proto/crossflow/v1`.
#![forbid(unsafe_code)]
#![allow(missing_docs, missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("crossflow.v1");

    /// Encoded `FileDescriptorSet` of every `crossflow.v1` file, for server
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("crossflow_descriptor");
}
