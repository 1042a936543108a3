//! Generated gRPC types for `crossflow.v1`, built from `proto/crossflow/v1`.
#![forbid(unsafe_code)]

pub mod codec;

pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]

    // Messages and servers (servers decode with `crate::codec::RequestCodec`).
    tonic::include_proto!("crossflow.v1");
    // Clients, with tonic-prost's codec; see build.rs.
    include!(concat!(env!("OUT_DIR"), "/client/crossflow.v1.rs"));

    /// Encoded `FileDescriptorSet` of every `crossflow.v1` file, for server
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("crossflow_descriptor");
}
