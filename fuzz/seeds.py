#!/usr/bin/env python3
"""Writes the hand-made seeds of each fuzz target into fuzz/corpus/<target>/seed-*.

Each seed is a meaningful input in the target's own format (see the doc comment at the
top of each fuzz_targets/*.rs): valid requests, packets, lines, configs and messages, plus
a few classic malformed ones. The rest of each corpus comes from fuzzing (`cargo fuzz
cmin`). Run from anywhere: `python3 fuzz/seeds.py`.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


u8 = lambda v: struct.pack("<B", v)
u16 = lambda v: struct.pack("<H", v)
u32 = lambda v: struct.pack("<I", v)
u64 = lambda v: struct.pack("<Q", v)

# ---------------------------------------------------------------- blk_request
NEXT, WRITE, INDIRECT = 1, 2, 4
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13


def blk(flags, writes, descs, heads, avail_idx=None):
    out = u8(flags) + u8(len(writes))
    for at, data in writes:
        out += u32(at) + u16(len(data)) + data
    out += u8(len(descs))
    for addr, ln, fl, nxt in descs:
        out += u64(addr) + u32(ln) + u16(fl) + u16(nxt)
    out += u8(len(heads)) + b"".join(u16(h) for h in heads)
    if avail_idx is not None:
        out += u16(avail_idx)
    return out


def blk_hdr(t, sector):
    return struct.pack("<IIQ", t, 0, sector)


def chain(first, hdr_at, data, status_at):
    """Descriptors first.. for header, data [(addr, len, write)], status."""
    parts = [(hdr_at, 16, False)] + data + [(status_at, 1, True)]
    descs = []
    for i, (addr, ln, w) in enumerate(parts):
        last = i == len(parts) - 1
        fl = (WRITE if w else 0) | (0 if last else NEXT)
        descs.append((addr, ln, fl, 0 if last else first + i + 1))
    return descs


def blk_seeds():
    t = "blk_request"
    rd = chain(0, 0x1000, [(0x2000, 512, True), (0x3000, 1024, True)], 0x4000)
    write(t, "read", blk(0, [(0x1000, blk_hdr(T_IN, 2))], rd, [0]))
    wr = chain(0, 0x1000, [(0x2000, 1024, False)], 0x4000)
    write(t, "write", blk(0, [(0x1000, blk_hdr(T_OUT, 8)), (0x2000, b"\xab" * 1024)], wr, [0]))
    write(t, "write-read-only", blk(1, [(0x1000, blk_hdr(T_OUT, 8))], wr, [0]))
    fl = chain(0, 0x1000, [], 0x4000)
    write(t, "flush", blk(0, [(0x1000, blk_hdr(T_FLUSH, 0))], fl, [0]))
    rng = struct.pack("<QII", 1, 4, 0) + struct.pack("<QII", 64, 8, 0)
    dc = chain(0, 0x1000, [(0x2000, 32, False)], 0x4000)
    write(t, "discard", blk(0, [(0x1000, blk_hdr(T_DISCARD, 0)), (0x2000, rng)], dc, [0]))
    wz = chain(0, 0x1000, [(0x2000, 16, False)], 0x4000)
    unmap = struct.pack("<QII", 2, 16, 1)
    write(t, "write-zeroes", blk(0, [(0x1000, blk_hdr(T_WRITE_ZEROES, 0)), (0x2000, unmap)], wz, [0]))
    gi = chain(0, 0x1000, [(0x2000, 20, True)], 0x4000)
    write(t, "get-id", blk(2, [(0x1000, blk_hdr(T_GET_ID, 0))], gi, [0]))
    # Three requests in one queue, EVENT_IDX on.
    three = (
        chain(0, 0x1000, [(0x2000, 512, True)], 0x4000)
        + chain(3, 0x1100, [(0x2200, 512, False)], 0x4001)
        + chain(6, 0x1200, [], 0x4002)
    )
    writes = [(0x1000, blk_hdr(T_IN, 0)), (0x1100, blk_hdr(T_OUT, 1)), (0x1200, blk_hdr(T_FLUSH, 0))]
    write(t, "read-write-flush", blk(2, writes, three, [0, 3, 6]))
    # An indirect table at 0x5000 with header, data, status.
    table = b"".join(
        u64(a) + u32(l) + u16(f) + u16(n)
        for a, l, f, n in chain(0, 0x1000, [(0x2000, 512, True)], 0x4000)
    )
    write(t, "indirect", blk(0, [(0x1000, blk_hdr(T_IN, 0)), (0x5000, table)],
                            [(0x5000, len(table), INDIRECT, 0)], [0]))
    # Malformed: status not writable, beyond the disk, unaligned, avail index ahead.
    bad = chain(0, 0x1000, [(0x2000, 512, True)], 0x4000)
    bad[-1] = (0x4000, 1, 0, 0)
    write(t, "bad-status", blk(0, [(0x1000, blk_hdr(T_IN, 0))], bad, [0]))
    write(t, "beyond-disk", blk(0, [(0x1000, blk_hdr(T_IN, 127))], rd, [0]))
    odd = chain(0, 0x1000, [(0x2000, 100, True)], 0x4000)
    write(t, "unaligned", blk(0, [(0x1000, blk_hdr(T_IN, 0))], odd, [0]))
    write(t, "avail-ahead", blk(4, [(0x1000, blk_hdr(T_IN, 0))], rd, [0], avail_idx=40))


# ---------------------------------------------------------------- vsock_packet
PORT = {1024: 0, 1025: 1, 1026: 2, 52: 3, 5000: 4, 4242: 5}
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(1, 8)


def pkt(op, src, dst, payload=b"", flags=0, buf_alloc=65536, fwd_cnt=0, layout=1, cut=0):
    """Opcode 0: a guest packet from guest port `src` to host port `dst`."""
    return (u8(0) + u8(layout) + u8(PORT[src]) + u8(PORT[dst]) + u8(op) + u8(flags)
            + u32(buf_alloc) + u32(fwd_cnt) + u16(len(payload)) + payload + u8(cut))


def rx_bufs(n, ln=4096):
    return u8(3) + u8(n - 1) + u16(ln) + u8(0) + u8(0)


def vsock_seeds():
    t = "vsock_packet"
    # The guest connects to a host service on port 5000, talks, shuts down.
    write(t, "guest-connect", b"".join([
        u8(8) + u8(PORT[5000]),                 # listen on <uds>_5000
        rx_bufs(4),
        pkt(OP_REQUEST, 1025, 5000),
        u8(8) + u8(PORT[5000]),                 # accept
        pkt(OP_RW, 1025, 5000, b"hello from the guest"),
        u8(6) + u8(0),                          # the service reads
        u8(5) + u8(0) + u16(5) + b"hello",      # and answers
        rx_bufs(4),
        pkt(OP_CREDIT_UPDATE, 1025, 5000, fwd_cnt=5),
        pkt(OP_SHUTDOWN, 1025, 5000, flags=3),
        u8(7) + u8(1) + u8(0),                  # the service goes away
        pkt(OP_RST, 1025, 5000),
    ]))
    # A host client: CONNECT to guest port 52; the guest accepts; data both ways.
    write(t, "host-connect", b"".join([
        rx_bufs(4),
        u8(4) + u8(11) + b"CONNECT 52\n",
        pkt(OP_RESPONSE, 52, 1024),
        u8(6) + u8(0),                          # the client reads OK 1024
        u8(5) + u8(0) + u16(4) + b"ping",
        rx_bufs(2),
        pkt(OP_RW, 52, 1024, b"pong"),
        pkt(OP_CREDIT_REQUEST, 52, 1024),
        u8(7) + u8(0) + u8(0),                  # the client shuts its write side
        rx_bufs(2),
    ]))
    # Nobody listens on 1026: the guest gets RST. Then the driver resets.
    write(t, "refused", rx_bufs(2) + pkt(OP_REQUEST, 1025, 1026) + u8(9) + rx_bufs(1))
    # Header and payload in one descriptor; header cut across two; a lying length.
    write(t, "layouts", b"".join([
        u8(8) + u8(PORT[4242]), rx_bufs(4),
        pkt(OP_REQUEST, 1024, 4242, layout=0),
        pkt(OP_RW, 1024, 4242, b"x" * 100, layout=2, cut=20),
        u8(0) + u8(0x11) + u8(PORT[1024]) + u8(PORT[4242]) + u8(OP_RW) + u8(0) + u32(65536)
        + u32(0) + u16(10) + b"0123456789" + u32(1000) + u8(0),
    ]))
    # Raw chains: a short header, a writable one, one outside memory.
    write(t, "raw-chains", b"".join([
        u8(2) + u32(0) + u16(44) + bytes(44),
        u8(1) + u8(0) + u64(0x20000) + u32(40) + u8(0),
        u8(1) + u8(0) + u64(0x20000) + u32(44) + u8(1),
        u8(1) + u8(1) + u64(0x7ff000) + u32(0x2000) + u8(0) + u64(0x20000) + u32(44) + u8(0),
    ]))


# ---------------------------------------------------------------- hybrid_connect_line
def connect_seeds():
    t = "hybrid_connect_line"
    for i, line in enumerate([
        b"CONNECT 1024\n", b"CONNECT 52\r\nhello", b"CONNECT 4294967295\n",
        b"CONNECT 4294967296\n", b"connect 5\n", b"CONNECT \n", b"CONNECT 5 6\n",
        b"CONNECT 0000000000000000000000052\n", b"CONNECT 1234", b"CONNECT 5\ndata after",
        b"OK 1024\n", b"\n",
    ]):
        write(t, "line%02d" % i, u8(i) + line)


# ---------------------------------------------------------------- mmio_registers
REG = [0x000, 0x004, 0x008, 0x00C, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044,
       0x050, 0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0A0, 0x0A4, 0x0FC, 0x100,
       0x104, 0x108, 0x110]
r = lambda off: u8(REG.index(off))


def m_write(off, value):
    return u8(0) + r(off) + u32(value)


def m_read(off, size_sel=0):
    return u8(2) + r(off) + u8(size_sel)


def m_mem(at, data):
    return u8(3) + u8(0) + u32(at) + u16(len(data)) + data


def m_init(sizes, mask=0xFFFFFFFFFFFFFFFF):
    return u8(4) + u8(0) + u64(mask) + b"".join(u8(s) for s in sizes)


def m_chain(q, descs):
    return u8(5) + u8(0) + u8(q) + u8(len(descs) - 1) + b"".join(
        u32(a) + u32(l) + u8(w) for a, l, w in descs)


def mmio_seeds():
    t = "mmio_registers"
    ident = b"".join(m_read(o) for o in [0x000, 0x004, 0x008, 0x00C, 0x034, 0x070, 0x0FC])
    write(t, "block-identity", u8(0) + ident + m_write(0x014, 1) + m_read(0x010)
          + u8(2) + u8(REG.index(0x100)) + u8(3) + u8(2) + u8(REG.index(0x108)) + u8(1))
    write(t, "block-read", b"".join([
        u8(0), m_init([4]),
        m_mem(0x80000, blk_hdr(T_IN, 1)),
        m_chain(0, [(0x80000, 16, 0), (0x81000, 512, 1), (0x82000, 1, 1)]),
        m_read(0x060), m_write(0x064, 1),
        m_mem(0x80000, blk_hdr(T_OUT, 2)),
        m_chain(0, [(0x80000, 16, 0), (0x81000, 1024, 0), (0x82000, 1, 1)]),
        m_write(0x070, 0), m_read(0x070),
    ]))
    write(t, "block-manual-setup", b"".join([
        u8(2), m_write(0x070, 1), m_write(0x070, 3), m_write(0x024, 1), m_write(0x020, 1),
        m_write(0x070, 0xB), m_write(0x030, 0), m_write(0x038, 16),
        m_write(0x080, 0x10000), m_write(0x090, 0x11000), m_write(0x0A0, 0x12000),
        m_write(0x044, 1), m_write(0x070, 0xF), m_write(0x050, 0), m_read(0x070),
        m_write(0x038, 12), m_write(0x070, 0),
    ]))
    request = struct.pack("<QQIIIHHIII", 3, 2, 1025, 5000, 0, 1, OP_REQUEST, 0, 65536, 0)
    write(t, "vsock-queues", b"".join([
        u8(1), m_read(0x008), m_read(0x100, 3), m_init([4, 4, 4]),
        m_chain(0, [(0x90000, 4096, 1)]),
        m_mem(0xA0000, request),
        m_chain(1, [(0xA0000, 44, 0)]),
        m_write(0x070, 0),
    ]))


# ---------------------------------------------------------------- config_toml
def config_seeds():
    t = "config_toml"
    write(t, "minimal.toml", 'kernel = "vmlinux"\n')
    write(t, "full.toml", """kernel = "vmlinux"
initrd = "initrd.img"
rootfs = "rootfs.ext4"
cpus = 2
memory_mib = 256
append = "quiet loglevel=3"
init = "system"

[[drives]]
path = "data.img"
read_only = true
id = "data"

[api]
socket = "run/api.sock"
lifetime_secs = 60

[vsock]
uds_path = "run/v.sock"
guest_cid = 7
""")
    write(t, "bzimage-flags.toml", 'kernel = "bzImage"\n#drive data.img,ro,id=media\n#drive rootfs.ext4\n')
    write(t, "api-only.toml", 'kernel = "vmlinux"\n[api]\nsocket = "run/api.sock"\n')
    write(t, "unknown-key.toml", 'kernel = "vmlinux"\nmemory = 5\n')
    write(t, "bad-values.toml", 'kernel = "vmlinux"\ncpus = 0\n[vsock]\nuds_path = "run/v"\nguest_cid = 2\n')
    write(t, "bad-disks.toml", 'kernel = "vmlinux"\n[[drives]]\npath = "odd.img"\n[[drives]]\npath = "empty.img"\n')
    write(t, "nul-append.toml", 'kernel = "vmlinux"\nappend = "a\\u0000b"\n')
    write(t, "dup-ids.toml", 'kernel = "vmlinux"\nrootfs = "rootfs.ext4"\n[[drives]]\npath = "data.img"\nid = "rootfs"\n')


# ---------------------------------------------------------------- agent_messages
def varint(v):
    v &= (1 << 64) - 1
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def fv(field, v):
    return varint(field << 3) + varint(v)


def fl(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


def exec_start(argv, env=None, cwd="", user="", tty=False, window=None, timeout=0):
    m = b"".join(fl(1, a) for a in argv)
    for k, v in (env or {}).items():
        m += fl(2, fl(1, k) + fl(2, v))
    if cwd:
        m += fl(3, cwd)
    if user:
        m += fl(4, user)
    if tty:
        m += fv(5, 1)
    if window:
        m += fl(6, fv(1, window[0]) + fv(2, window[1]))
    if timeout:
        m += fv(8, timeout)
    return m


def frame(kind, msg):
    return u8(kind) + u16(len(msg)) + msg


def agent_seeds():
    t = "agent_messages"
    start = exec_start(["/bin/sh", "-c", "echo hi"], {"A": "1"}, cwd="/tmp")
    write(t, "exec", frame(1, fl(1, start)) + frame(1, fl(2, b"stdin data")) + frame(1, fl(3, b""))
          + frame(1, fv(4, 15)) + frame(1, fl(5, fv(1, 50) + fv(2, 132))))
    write(t, "exec-user-tty", frame(1, fl(1, exec_start(["sh"], user="user", tty=True,
                                                          window=(100000, 0), timeout=5000))))
    write(t, "exec-bad", frame(1, fl(1, exec_start([]))) + frame(1, fl(1, exec_start(["", "x"])))
          + frame(1, fl(1, exec_start(["true"], {"A=B": "x"}))) + frame(1, fl(1, exec_start(["true"], user="nobody2"))))
    write(t, "files", b"".join([
        frame(2, fl(1, fl(1, "/tmp/x") + fv(2, 0o600) + fv(3, 1))), frame(2, fl(2, b"data")),
        frame(3, fl(1, "/etc/hostname") + fv(2, 100)), frame(4, fl(1, "/tmp/d") + fv(2, 0o755) + fv(3, 1)),
        frame(5, fl(1, "/")), frame(6, fl(1, "relative")), frame(7, fl(1, "/tmp/x") + fv(2, 1)),
        frame(8, fl(1, "/tmp/a") + fl(2, "/tmp/b")), frame(0, b""), frame(9, b""),
    ]))
    sandbox_start = fl(1, fl(1, exec_start(["/bin/echo", "x" * 600, "y" * 600])) + fl(2, "job-1"))
    write(t, "sandbox-exec", b"".join([
        frame(10, sandbox_start),
        frame(13, fl(1, fv(1, 42))),
        frame(13, fl(2, b"out" * 100)), frame(13, fl(3, b"err")), frame(13, fl(2, b"more" * 2000)),
        frame(10, fl(2, fl(1, "job-1") + fv(2, 5) + fv(3, 0))),
        frame(10, fl(2, fl(1, "job-1") + fv(2, 0) + fv(3, 4))),
        frame(10, fl(3, b"input")), frame(10, fv(5, 9)), frame(10, fv(5, -1)),
        frame(10, fl(6, fv(1, 24) + fv(2, 80))),
        frame(13, fl(4, fv(1, 0))),
        frame(10, fl(2, fl(1, "bad id!") + fv(2, 1 << 40))),
        frame(11, b""), frame(12, fv(1, 1000)),
    ]))
    info = fl(1, "x") + fl(2, "/x") + fv(3, 1) + fv(4, 10) + fv(5, 0o644) + fv(8, -5)
    write(t, "agent-answers", b"".join([
        frame(14, fl(1, info)), frame(14, fl(2, b"chunk")), frame(15, fl(1, info) + fl(1, info)),
        frame(16, info), frame(17, fl(1, "0.1.0") + fv(2, 1) + fl(3, "sandbox") + fv(4, 99)),
        frame(18, fv(1, 4)), frame(19, fv(1, 2) + fv(2, 10)),
    ]))


if __name__ == "__main__":
    blk_seeds()
    vsock_seeds()
    connect_seeds()
    mmio_seeds()
    config_seeds()
    agent_seeds()
