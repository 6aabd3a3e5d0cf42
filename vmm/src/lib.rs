//! The vmm library: configuration, the machine (KVM, memory, vCPUs), boot, devices and the
//! run loop behind the `vmm` binary.

pub mod arch;
pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod doctor;
pub mod drives;
pub mod exit;
pub mod hostnet;
pub mod machine;
pub mod privileges;
pub mod ready_fd;
pub mod releaser;
pub mod resources;
pub mod sandbox;
pub mod seccomp;
pub mod signals;
pub mod vcpu;
pub mod virtio_slots;
pub mod vm;
