//! The protocols of vmm, generated from agent/protocol/proto, and their transports:
//! [`pb`] (host <-> agent, spoken by the agent and the supervisor in `vmm`) and [`api`]
//! (orchestrator <-> vmm, spoken by the supervisor and every client). A crate of its own
//! so that clients need neither the agent nor KVM.

pub mod connect;
pub mod socket;

/// What a file that is not a regular file is, for error messages ("is a FIFO") of the
/// agent's file API and of `vmm run`'s checks alike.
pub fn file_kind_name(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Generated code; module paths mirror the protobuf packages so cross-package
/// references resolve.
mod generated {
    pub mod vmm {
        pub mod agent {
            pub mod v1 {
                #![allow(clippy::all)]
                tonic::include_proto!("vmm.agent.v1");
            }
        }
        pub mod sandbox {
            pub mod v1 {
                #![allow(clippy::all)]
                tonic::include_proto!("vmm.sandbox.v1");
            }
        }
    }
}

/// Host <-> agent messages and the `Agent` service.
pub use generated::vmm::agent::v1 as pb;
/// Orchestrator <-> vmm messages and the `Sandbox` service.
pub use generated::vmm::sandbox::v1 as api;

/// The vsock port the agent listens on inside a VM.
pub const AGENT_VSOCK_PORT: u32 = 1024;
