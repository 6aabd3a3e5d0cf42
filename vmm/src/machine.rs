//! KVM, the VM and its memory: what every guest (and `vmm doctor`'s probe) needs before
//! devices and vCPUs.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::{cpuid, layout, regs};

/// KVM's stable API version since Linux 2.6.22.
const KVM_API_VERSION: i32 = 12;
/// Where KVM keeps the TSS for real-mode emulation: three pages just below the BIOS area,
/// inside the MMIO hole so it never shadows RAM.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Capabilities the VMM cannot run without.
pub const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::Irqfd, "irqfd"),
    (Cap::SetTssAddr, "TSS address"),
    (Cap::Pit2, "in-kernel PIT"),
];

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported version {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {0} MiB of guest memory")]
    Memory(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |source| MachineError::Kvm { what, source }
}

pub struct Machine {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub mem: GuestMemoryMmap,
}

/// Opens /dev/kvm and checks the API version and the capabilities we rely on.
pub fn open_kvm() -> Result<Kvm, MachineError> {
    let kvm = Kvm::new().map_err(MachineError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(MachineError::ApiVersion(version));
    }
    if let Some((_, name)) = REQUIRED_CAPS
        .iter()
        .find(|(cap, _)| !kvm.check_extension(*cap))
    {
        return Err(MachineError::MissingCap(name));
    }
    Ok(kvm)
}

impl Machine {
    /// A VM with an in-kernel irqchip and PIT and `mem_size` bytes of RAM.
    pub fn new(mem_size: u64) -> Result<Self, MachineError> {
        let kvm = open_kvm()?;
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("create the irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;

        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_size)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| MachineError::Memory(mem_size >> 20, e))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region.as_ptr();
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping belongs to `mem`, which the Machine keeps alive as long as
            // the VM exists, and regions never overlap (layout::ram_ranges).
            unsafe { vm.set_user_memory_region(desc) }.map_err(kvm_err("map guest memory"))?;
        }
        Ok(Self { kvm, vm, mem })
    }

    /// Creates vCPU `index` of `count` with CPUID, FPU, MSRs and LAPIC set up.
    pub fn create_vcpu(&self, index: u8, count: u8) -> Result<VcpuFd, MachineError> {
        let fd = self
            .vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report supported CPUID"))?;
        cpuid::filter(&mut cpuid, index, count);
        fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        regs::setup_fpu_and_msrs(&fd)?;
        regs::setup_lapic(&fd)?;
        Ok(fd)
    }
}
