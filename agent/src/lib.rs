//! Protocols shared by the guest agent, the supervisor in `vmm` and the tests:
//! [`pb`] (host <-> agent) and [`api`] (orchestrator <-> vmm), generated from agent/proto.

pub mod connect;
pub mod socket;

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
