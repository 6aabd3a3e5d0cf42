//! The boot GDT and the segment registers derived from it.

use kvm_bindings::kvm_segment;

/// Selectors: index * 8.
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

/// Access/flags words (flags nibble << 12 | access byte), as in the SDM's descriptor layout.
const CODE64: u16 = 0xa09b; // G, L, present, code exec/read accessed
const CODE32: u16 = 0xc09b; // G, D (32-bit), present, code exec/read accessed
const DATA: u16 = 0xc093; // G, D, present, data read/write accessed
const TSS: u16 = 0x808b; // G, present, 64-bit busy TSS

/// The four descriptors: null, code, data, TSS. `long_mode` picks the code segment kind.
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode { CODE64 } else { CODE32 };
    [
        0,
        descriptor(code, 0, 0xfffff),
        descriptor(DATA, 0, 0xfffff),
        descriptor(TSS, 0, 0xfffff),
    ]
}

fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The kvm_segment KVM expects for descriptor `entry` loaded with `selector`.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bits = |shift: u32, width: u32| ((entry >> shift) & ((1 << width) - 1)) as u8;
    let granular = bits(55, 1) == 1;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: bits(40, 4),
        present: bits(47, 1),
        dpl: bits(45, 2),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: bits(55, 1),
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_sdm_encoding() {
        // Well-known flat descriptors.
        assert_eq!(descriptor(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn segments_decode_descriptors() {
        let gdt = boot_gdt(true);
        let cs = segment(gdt[1], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(gdt[2], DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.s, ds.type_), (0, 1, 1, 3));
        let tr = segment(gdt[3], TSS_SELECTOR);
        assert_eq!((tr.s, tr.type_), (0, 0xb));
        let cs32 = segment(boot_gdt(false)[1], CODE_SELECTOR);
        assert_eq!((cs32.l, cs32.db), (0, 1));
    }
}
