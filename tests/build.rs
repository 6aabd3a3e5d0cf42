//! Builds the freestanding test guests in guests/ with gcc and exports their paths:
//! TINY_ELF, TINY_BZIMAGE, TINY_PVH_ELF, TINY_PVH64_ELF (see guests/README.md).

#[path = "src/bzimage.rs"]
mod bzimage;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-ffreestanding",
    "-nostdlib",
    "-static",
    "-fno-pic",
    "-fno-pie",
    "-mno-red-zone",
    "-mcmodel=small",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-common",
    // Keep gcc from turning our memset/memcpy loops into calls to themselves.
    "-fno-tree-loop-distribute-patterns",
    // Fixed low physical addresses are legitimate here.
    "--param=min-pagesize=0",
    "-Wall",
    "-Wextra",
];

const LDFLAGS: &[&str] = &[
    "-nostdlib",
    "-static",
    "-no-pie",
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=0x1000",
    "-Wl,-z,noexecstack",
    "-Wl,--no-warn-rwx-segments",
];

const C_SOURCES: &[&str] = &[
    "main.c", "lib.c", "boot.c", "blk.c", "vsock.c", "net.c", "acpi.c",
];

fn main() {
    let src = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("guests");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=guests");
    println!("cargo:rerun-if-changed=src/bzimage.rs");
    println!("cargo:rerun-if-env-changed=GUEST_CC");
    let b = Builder {
        cc: env::var("GUEST_CC").unwrap_or_else(|_| "gcc".into()),
        src,
        out,
    };

    let objs: Vec<PathBuf> = C_SOURCES.iter().map(|s| b.compile(s, &[])).collect();
    let common: Vec<&Path> = objs.iter().map(PathBuf::as_path).collect();
    let entry = b.compile("entry64.S", &[]);
    let entry_bz = b.compile_as("entry64.S", "entry64-bz.o", &["-DBZIMAGE_PAD"]);

    let tiny = b.link(
        "tiny.elf",
        "guest.ld",
        &[&[entry.as_path()], &common[..]].concat(),
    );
    export("TINY_ELF", &tiny);

    let payload_elf = b.link(
        "payload.elf",
        "guest.ld",
        &[&[entry_bz.as_path()], &common[..]].concat(),
    );
    let info = elf_info(&payload_elf);
    assert_eq!(
        info.entry, 0x10_0200,
        "bzImage payload entry must be at +0x200"
    );
    let payload_bin = b.out.join("payload.bin");
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&payload_elf)
        .arg(&payload_bin));
    let payload = fs::read(&payload_bin).expect("read payload.bin");
    let init_size = u32::try_from((info.end - 0x10_0000).next_multiple_of(0x1000)).unwrap();
    let bz = b.out.join("tiny.bzImage");
    fs::write(&bz, bzimage::build(&payload, init_size)).expect("write tiny.bzImage");
    export("TINY_BZIMAGE", &bz);

    let pvh = b.link("tiny-pvh.elf", "pvh.ld", &[&b.compile("pvh.S", &[])]);
    export("TINY_PVH_ELF", &pvh);

    let zeropage = b.compile("zeropage.c", &[]);
    let trampoline = b.compile("pvh64.S", &[]);
    let pvh64_objs = [&[trampoline.as_path(), &zeropage, &entry], &common[..]].concat();
    let pvh64 = b.link("tiny-pvh64.elf", "pvh64.ld", &pvh64_objs);
    export("TINY_PVH64_ELF", &pvh64);
}

struct Builder {
    cc: String,
    src: PathBuf,
    out: PathBuf,
}

impl Builder {
    fn compile(&self, name: &str, extra: &[&str]) -> PathBuf {
        let obj = Path::new(name).with_extension("o");
        self.compile_as(name, obj.to_str().unwrap(), extra)
    }

    fn compile_as(&self, name: &str, obj: &str, extra: &[&str]) -> PathBuf {
        let obj = self.out.join(obj);
        run(Command::new(&self.cc)
            .args(CFLAGS)
            .args(extra)
            .arg("-c")
            .arg(self.src.join(name))
            .arg("-o")
            .arg(&obj));
        obj
    }

    fn link(&self, name: &str, script: &str, objs: &[&Path]) -> PathBuf {
        let elf = self.out.join(name);
        run(Command::new(&self.cc)
            .args(LDFLAGS)
            .arg("-T")
            .arg(self.src.join(script))
            .args(objs)
            .arg("-o")
            .arg(&elf));
        elf
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (the test guests need gcc and binutils)")
    });
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("cargo:warning={line}");
    }
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
}

fn export(name: &str, path: &Path) {
    println!("cargo:rustc-env={name}={}", path.display());
}

struct ElfInfo {
    entry: u64,
    /// End of the highest PT_LOAD segment in memory (p_paddr + p_memsz).
    end: u64,
}

/// Reads just what the bzImage needs from a little-endian ELF64 file.
fn elf_info(path: &Path) -> ElfInfo {
    let b = fs::read(path).expect("read ELF");
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes(b[o..o + 4].try_into().unwrap()));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(&b[..5], b"\x7fELF\x02", "{} is not ELF64", path.display());
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let end = (0..phnum)
        .map(|i| usize::try_from(phoff + i * phentsize).unwrap())
        .filter(|&ph| u32_at(ph) == 1)
        .map(|ph| u64_at(ph + 0x18) + u64_at(ph + 0x28))
        .max()
        .expect("a PT_LOAD segment");
    ElfInfo {
        entry: u64_at(0x18),
        end,
    }
}
