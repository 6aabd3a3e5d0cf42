//! ACPI tables, only what gives the guest kernel-mediated power events that a guest user
//! cannot fake: power-off through the PM1a control block (`\_S5`), and panics through the
//! pvpanic device. A FADT in the legacy (not hardware-reduced) model, a FACS, and a DSDT.
//!
//! The MADT lists the CPUs' local APICs and nothing else. Linux needs it (without one it
//! ignores the MP table and boots one CPU), and with no IOAPIC in it Linux keeps taking
//! the IOAPIC and the interrupt routing from the MP table, so the virtio-mmio devices on
//! the command line keep their IRQ numbers: an ACPI IOAPIC would number GSIs above 15
//! dynamically. Hardware-reduced ACPI is avoided for the same reason (it replaces the
//! legacy PIC with a null one, and then ISA pins get dynamic IRQs too).

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use devices::legacy::acpi_pm::{PM1_CNT_LEN, PM1_CNT_OFFSET, PM1_EVT_LEN, S5_SLEEP_TYPE};
use devices::legacy::pvpanic::PVPANIC_PORT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{
    ACPI_PM_PORT, ACPI_SCI_IRQ, ACPI_TABLES_END, ACPI_TABLES_START, LAPIC_ADDR, MAX_VCPUS,
};

/// Where Linux also looks on its own (0xE0000-0xFFFFF, 16-byte aligned); we pass the
/// address in the boot parameters too.
pub const RSDP_ADDR: u64 = ACPI_TABLES_START;
const XSDT_ADDR: u64 = RSDP_ADDR + 0x40;
const FADT_ADDR: u64 = XSDT_ADDR + 0x40;
/// The FACS must be 64-byte aligned.
const FACS_ADDR: u64 = FADT_ADDR + 0x140;
const DSDT_ADDR: u64 = FACS_ADDR + 0x40;
/// After the DSDT (under 0x100 bytes): 44 + 8 per CPU.
const MADT_ADDR: u64 = DSDT_ADDR + 0x100;

const OEM_ID: [u8; 6] = *b"VMMSBX";
const OEM_TABLE_ID: [u8; 8] = *b"VMMSBOX ";
const OEM_REVISION: u32 = 1;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;

/// IA-PC boot architecture flags: legacy ISA devices (COM1, the RTC) and an 8042 are
/// present (the i8042 carries the reset line), there is no VGA.
const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;

/// `\_S5` is the only sleep state; `\_SB.PEVT` is the pvpanic device (QEMU's ID, which
/// Linux's pvpanic-mmio driver matches).
fn dsdt() -> Vec<u8> {
    let mut body = Vec::new();
    let s5 = u8::try_from(S5_SLEEP_TYPE).expect("a 3-bit sleep type");
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5, &s5, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);
    let pvpanic_port = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    aml::Scope::new(
        "\\_SB_".into(),
        vec![&aml::Device::new(
            "PEVT".into(),
            vec![
                &aml::Name::new("_HID".into(), &"QEMU0001"),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![&pvpanic_port]),
                ),
            ],
        )],
    )
    .to_aml_bytes(&mut body);
    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(&body);
    table.as_slice().to_vec()
}

fn io_register(port: u16, len: u64) -> GAS {
    // Access size 0: the register's own width, as QEMU describes PM1 blocks.
    GAS::new(
        AddressSpace::SystemIo,
        (len * 8) as u8,
        0,
        AccessSize::Undefined,
        u64::from(port),
    )
}

fn fadt() -> Vec<u8> {
    let evt_port = ACPI_PM_PORT;
    let cnt_port = ACPI_PM_PORT + PM1_CNT_OFFSET as u16;
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(DSDT_ADDR)
        .firmware_ctrl_64(FACS_ADDR)
        .flag(Flags::Wbinvd)
        // No fixed power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // SMI_CMD stays 0: the OS owns the hardware from the start (no ACPI mode switch).
    f.sci_int = ACPI_SCI_IRQ.into();
    f.pm1a_evt_blk = u32::from(evt_port).into();
    f.pm1_evt_len = PM1_EVT_LEN as u8;
    f.x_pm1a_evt_blk = io_register(evt_port, PM1_EVT_LEN);
    f.pm1a_cnt_blk = u32::from(cnt_port).into();
    f.pm1_cnt_len = PM1_CNT_LEN as u8;
    f.x_pm1a_cnt_blk = io_register(cnt_port, PM1_CNT_LEN);
    f.iapc_boot_arch = (BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA).into();
    to_bytes(&f.finalize())
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// One enabled local APIC per vCPU, IDs as in the MP table.
fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    to_bytes(&madt)
}

/// The tables and where each goes, RSDP first.
fn tables(cpus: u8) -> Vec<(u64, Vec<u8>)> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(FADT_ADDR);
    xsdt.add_entry(MADT_ADDR);
    vec![
        (RSDP_ADDR, to_bytes(&Rsdp::new(OEM_ID, XSDT_ADDR))),
        (XSDT_ADDR, to_bytes(&xsdt)),
        (FADT_ADDR, fadt()),
        (FACS_ADDR, to_bytes(&FACS::new())),
        (DSDT_ADDR, dsdt()),
        (MADT_ADDR, madt(cpus)),
    ]
}

/// Writes the tables for `cpus` vCPUs to guest memory; returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, cpus: u8) -> Result<u64, GuestMemoryError> {
    for (addr, bytes) in tables(cpus) {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(RSDP_ADDR)
}

// The fixed table slots hold their tables (checked by the tests, which build them).
const _: () = assert!(
    MADT_ADDR + 44 + 8 * MAX_VCPUS as u64 <= ACPI_TABLES_END && FACS_ADDR.is_multiple_of(64)
);

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn tables_fit_their_slots_and_their_checksums_hold() {
        let all = tables(MAX_VCPUS);
        for pair in all.windows(2) {
            let ((addr, bytes), (next, _)) = (&pair[0], &pair[1]);
            assert!(addr + bytes.len() as u64 <= *next, "{addr:#x} overlaps");
        }
        let (last_addr, last) = all.last().unwrap();
        assert!(last_addr + last.len() as u64 <= ACPI_TABLES_END);
        let rsdp = &all[0].1;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        for (_, t) in &all[1..] {
            let sig = &t[..4];
            if sig != b"FACS" {
                assert_eq!(u32_at(t, 4) as usize, t.len(), "{sig:?} length");
                assert_eq!(sum(t), 0, "{sig:?} checksum");
            }
        }
    }

    #[test]
    fn the_chain_leads_from_the_rsdp_to_the_power_registers_the_dsdt_and_the_cpus() {
        let all = tables(2);
        let at = |addr: u64| &all.iter().find(|(a, _)| *a == addr).unwrap().1;
        let xsdt_addr = u64_at(&all[0].1, 24);
        let xsdt = at(xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        let fadt = at(u64_at(xsdt, 36));
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(fadt.len(), 276);
        // Legacy model: not hardware-reduced; SCI, PM1a event and control blocks set.
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 0);
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), ACPI_SCI_IRQ);
        assert_eq!(u32_at(fadt, 56), u32::from(ACPI_PM_PORT));
        assert_eq!(u32_at(fadt, 64), u32::from(ACPI_PM_PORT) + 4);
        assert_eq!((fadt[88], fadt[89]), (4, 2));
        assert_eq!(&at(u64_at(fadt, 140))[..4], b"DSDT");
        assert_eq!(&at(u64_at(fadt, 132))[..4], b"FACS");
        let dsdt = at(u64_at(fadt, 140));
        let aml = &dsdt[36..];
        let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_") && has(b"QEMU0001") && has(b"PEVT"));
        let madt = at(u64_at(xsdt, 44));
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        // Two local APICs (type 0, length 8), IDs 0 and 1, enabled; no IOAPIC.
        assert_eq!(madt.len(), 44 + 2 * 8);
        assert_eq!(&madt[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&madt[52..60], &[0, 8, 1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn tables_land_in_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(write_tables(&mem, 1).unwrap(), RSDP_ADDR);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(RSDP_ADDR)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
