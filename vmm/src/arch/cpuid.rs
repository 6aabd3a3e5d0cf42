//! CPUID as the guest sees it: what KVM supports, with the topology and identity bits
//! rewritten per vCPU and features this VMM does not provide removed.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_THERMAL_POWER: u32 = 0x6;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// TSC deadline timer, emulated by KVM's in-kernel LAPIC.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
/// Thermal/power management (leaf 6 EAX/ECX): not emulated.
const THERMAL_AND_POWER_MASK: u32 = 0;

const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Rewrites `cpuid` for vCPU `index` of `count`: one socket, one thread per core.
pub fn filter(cpuid: &mut CpuId, index: u8, count: u8) {
    for entry in cpuid.as_mut_slice() {
        filter_entry(entry, u32::from(index), u32::from(count));
    }
}

fn filter_entry(e: &mut kvm_cpuid_entry2, index: u32, count: u32) {
    match e.function {
        LEAF_FEATURES => {
            // EBX: initial APIC ID [31:24], logical processors [23:16], CLFLUSH size [15:8].
            e.ebx = (index << 24) | (count << 16) | (8 << 8);
            e.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
            if count > 1 {
                e.edx |= EDX_HTT;
            }
        }
        LEAF_CACHE_TOPOLOGY => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
        }
        LEAF_THERMAL_POWER => {
            e.eax &= THERMAL_AND_POWER_MASK;
            e.ecx &= THERMAL_AND_POWER_MASK;
        }
        // No PMU is virtualized for the guest: version 0 tells it so.
        LEAF_PERFMON => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            e.edx = index; // x2APIC ID
            match e.index {
                0 => {
                    e.eax = 0; // no bits for SMT
                    e.ebx = 1;
                    e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = bits_for(count);
                    e.ebx = count;
                    e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        _ => {}
    }
}

/// Bits of APIC ID needed to number `count` cores.
fn bits_for(count: u32) -> u32 {
    u32::BITS - (count.max(1) - 1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn identity_and_topology_follow_the_vcpu() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1)]).unwrap();
        filter(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!((e[2].eax, e[2].ebx), (2, 4));
    }

    #[test]
    fn apic_id_bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(32), 5);
    }
}
