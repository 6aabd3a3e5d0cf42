//! virtio-vsock through the guest's polling virtio-mmio driver (test=vsock) and the
//! hybrid-vsock Unix sockets: a guest-initiated stream to a host listener, a refused
//! one, and a host-initiated echo stream on which the guest advertises only 64 bytes of
//! buffer, so the device must wait for its CREDIT_UPDATEs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::{GuestOutput, Outcome, Vmm, TINY_ELF};

const LISTEN_PORT: u32 = 5000;
const CONNECT_PORT: u32 = 6000;
/// The guest's receive buffer on the echo stream (`LISTEN_BUF_ALLOC` in vsock.c).
const GUEST_CREDIT: u64 = 64;
const GUEST_CID: u64 = 3;
const OP_SHUTDOWN: u64 = 4;
const OP_RST: u64 = 3;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const HOST_TIMEOUT: Duration = Duration::from_secs(15);

/// What the run left on both sides.
struct Scenario {
    out: Outcome,
    /// The guest's stream to `v.sock_6000`, as the host listener saw it.
    service: Result<Service, String>,
    /// The host-initiated stream through `v.sock`.
    client: Result<Client, String>,
}

struct Service {
    /// Everything the guest sent, up to end-of-stream.
    received: Vec<u8>,
}

struct Client {
    ok_line: String,
    sent: Vec<u8>,
    echoed: Vec<u8>,
}

/// A message longer than the guest's credit, and not a multiple of it.
fn echo_message() -> Vec<u8> {
    (0..300u32).map(|i| b'!' + (i * 7 % 94) as u8).collect()
}

/// One VM run shared by every test; a run that panicked fails each of them.
fn scenario() -> &'static Scenario {
    static RUN: OnceLock<Result<Scenario, String>> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        panic::catch_unwind(|| run_scenario("")).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into())
        })
    });
    run.as_ref()
        .unwrap_or_else(|e| panic!("the vsock scenario failed: {e}"))
}

/// One VM run of the three streams; `extra` adds words to the guest's command line.
fn run_scenario(extra: &str) -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let service_path = PathBuf::from(format!("{}_{CONNECT_PORT}", uds.display()));
    let listener = UnixListener::bind(&service_path).unwrap();

    let vm = Vmm::guest(TINY_ELF, "vsock")
        .flag("--vsock-uds", &uds)
        .append(&format!(
            "vsock_listen={LISTEN_PORT} vsock_connect={CONNECT_PORT} {extra}"
        ))
        .spawn();
    let service = thread::spawn(move || serve_once(&listener));

    // The guest announces its listening port after the guest-initiated part; when it
    // ends early (`done`), there is nobody to connect to.
    let deadline = Instant::now() + HOST_TIMEOUT;
    let client = loop {
        let text = vm.stdout_text();
        if text.contains("info vsock listening") {
            break echo_client(&uds);
        }
        if text.contains("\ndone") || Instant::now() > deadline {
            break Err("the guest never listened".into());
        }
        thread::sleep(Duration::from_millis(5));
    };
    let out = vm.wait();
    let service = service
        .join()
        .unwrap_or_else(|_| Err("the service thread panicked".into()));
    Scenario {
        out,
        service,
        client,
    }
}

/// Accepts one connection, reads the guest's line, answers, and reads to end-of-stream.
fn serve_once(listener: &UnixListener) -> Result<Service, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + HOST_TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("no guest connection on the service socket: {e}")),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HOST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&stream);
    let mut received = Vec::new();
    reader
        .read_until(b'\n', &mut received)
        .map_err(|e| format!("reading the guest's line: {e}"))?;
    (&stream)
        .write_all(b"hello from host\n")
        .map_err(|e| format!("answering the guest: {e}"))?;
    reader
        .read_to_end(&mut received)
        .map_err(|e| format!("waiting for the guest's shutdown: {e} (got {received:?})"))?;
    Ok(Service { received })
}

/// Connects to guest port 5000 and has it echo a message longer than its credit.
fn echo_client(uds: &Path) -> Result<Client, String> {
    let stream = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    stream
        .set_read_timeout(Some(HOST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    (&stream)
        .write_all(format!("CONNECT {LISTEN_PORT}\n").as_bytes())
        .map_err(|e| format!("writing CONNECT: {e}"))?;
    // Byte by byte: nothing after the line may be consumed here.
    let mut ok_line = Vec::new();
    let mut byte = [0u8];
    while ok_line.last() != Some(&b'\n') {
        match (&stream).read(&mut byte) {
            Ok(1) => ok_line.push(byte[0]),
            Ok(_) => return Err(format!("end of stream after {ok_line:?}")),
            Err(e) => return Err(format!("reading the OK line: {e} (got {ok_line:?})")),
        }
    }
    let ok_line = String::from_utf8_lossy(&ok_line).into_owned();
    let sent = echo_message();
    (&stream)
        .write_all(&sent)
        .map_err(|e| format!("writing the message: {e}"))?;
    let mut echoed = vec![0u8; sent.len()];
    let mut got = 0;
    while got < echoed.len() {
        match (&stream).read(&mut echoed[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("reading the echo after {got} bytes: {e}")),
        }
    }
    echoed.truncate(got);
    // Dropping the stream closes the connection: the guest sees it reset.
    Ok(Client {
        ok_line,
        sent,
        echoed,
    })
}

fn guest() -> &'static GuestOutput {
    &scenario().out.guest
}

/// `info vsock <key> <value>` is parsed as key `vsock`, value `<key> <value>`.
fn vsock_value(key: &str) -> &'static str {
    value_in(scenario(), key)
}

fn value_in<'a>(run: &'a Scenario, key: &str) -> &'a str {
    let prefix = format!("{key} ");
    run.out
        .guest
        .info_all("vsock")
        .into_iter()
        .find_map(|v| v.strip_prefix(&prefix).or((v == key).then_some("")))
        .unwrap_or_else(|| panic!("no `info vsock {key}` line\n{}", run.out))
}

fn vsock_num(key: &str) -> u64 {
    num_in(scenario(), key)
}

fn num_in(run: &Scenario, key: &str) -> u64 {
    let v = value_in(run, key);
    vmm_tests::parse_num(v).unwrap_or_else(|| panic!("`info vsock {key} {v}` is not a number"))
}

fn service() -> &'static Service {
    scenario()
        .service
        .as_ref()
        .unwrap_or_else(|e| panic!("host service: {e}\n{}", scenario().out))
}

fn client() -> &'static Client {
    scenario()
        .client
        .as_ref()
        .unwrap_or_else(|e| panic!("host client: {e}\n{}", scenario().out))
}

#[test]
fn scenario_completes_without_guest_failures() {
    scenario().out.assert_passed();
}

#[test]
fn device_is_found_and_driven_with_the_guest_cid() {
    assert_eq!(vsock_num("cid"), GUEST_CID);
    assert_ne!(vsock_num("features") & VIRTIO_F_VERSION_1, 0);
    // ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, no NEEDS_RESET / FAILED.
    assert_eq!(vsock_num("status"), 0xf);
    let max = vmm_tests::parse_nums(vsock_value("queue_num_max")).unwrap();
    assert_eq!(max.len(), 3, "rx, tx and event queues");
    assert!(max.iter().all(|&m| m >= 16), "queue sizes {max:?}");
}

#[test]
fn guest_connects_to_a_host_listener() {
    assert_eq!(vsock_value("connect_response"), "ok");
    assert!(vsock_num("connect_peer_buf_alloc") > 0);
}

#[test]
fn guest_data_reaches_the_host_and_the_reply_reaches_the_guest() {
    assert_eq!(
        String::from_utf8_lossy(&service().received),
        "hello from guest\n",
        "the guest's shutdown must end the host's stream after its line"
    );
    assert_eq!(vsock_value("host_says"), "hello from host");
}

#[test]
fn guest_shutdown_is_answered_with_a_reset() {
    assert_eq!(vsock_num("shutdown_reply"), OP_RST);
    // Every byte the guest sent was forwarded to the host socket.
    assert_eq!(vsock_num("connect_peer_fwd_cnt"), 17);
}

#[test]
fn connect_to_a_port_nobody_listens_on_is_reset() {
    assert_eq!(vsock_value("refused_rst"), "ok");
}

#[test]
fn host_connects_to_a_guest_port() {
    let c = client();
    let port = c
        .ok_line
        .strip_prefix("OK ")
        .and_then(|p| p.strip_suffix('\n'))
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("bad OK line {:?}", c.ok_line));
    let request = vmm_tests::parse_nums(
        &vsock_value("request")
            .replace("src_port", "")
            .replace("buf_alloc", ""),
    )
    .unwrap();
    assert_eq!(
        request[0], port,
        "the REQUEST's source port is the OK line's port"
    );
    assert!(request[1] > 0, "the REQUEST advertises a buffer");
}

#[test]
fn echo_comes_back_intact() {
    let c = client();
    assert_eq!(c.echoed.len(), c.sent.len(), "echo length");
    assert!(c.echoed == c.sent, "echo differs from what was sent");
    assert_eq!(vsock_num("echo_bytes"), c.sent.len() as u64);
}

#[test]
fn device_respects_the_guest_credit() {
    let g = guest();
    assert!(
        !g.fail
            .iter()
            .any(|f| f.value.starts_with("credit_exceeded")),
        "the device sent more than the guest's credit: {:?}",
        g.fail
    );
    let sent = echo_message().len() as u64;
    let max = vsock_num("echo_max_len");
    assert!(max <= GUEST_CREDIT, "an RW packet of {max} bytes");
    let packets = vsock_num("echo_packets");
    assert!(
        packets >= sent.div_ceil(GUEST_CREDIT),
        "{sent} bytes in {packets} packets"
    );
    assert!(vsock_num("credit_updates") >= packets);
}

#[test]
fn host_close_reaches_the_guest() {
    let closed = vmm_tests::parse_nums(&vsock_value("host_closed").replace("flags", "")).unwrap();
    assert!(
        closed[0] == OP_RST || closed[0] == OP_SHUTDOWN,
        "host_closed op {}",
        closed[0]
    );
    // The device forwarded the whole echo to the host before it closed.
    assert_eq!(vsock_num("echo_peer_fwd_cnt"), echo_message().len() as u64);
}

/// Connects to `path` as user `nobody` and asks for the agent's port; returns what the
/// socket answered ("" when it was closed). In a forked child: setuid is per process.
fn connect_as_nobody(path: &Path) -> Result<String, String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let (read_end, write_end) = std::io::pipe().unwrap();
    use std::os::fd::AsRawFd;
    let report = write_end.as_raw_fd();
    // SAFETY: between fork and _exit the child only makes raw system calls on memory
    // prepared before the fork (no allocation, no locks).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; every call is a plain system call on prepared buffers.
        unsafe {
            const NOBODY: libc::uid_t = 65534;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                libc::_exit(2);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(3);
            }
            let tv = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                tv_len,
            );
            let ask = b"CONNECT 1024\n";
            libc::write(fd, ask.as_ptr().cast(), ask.len());
            let mut buf = [0u8; 64];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n > 0 {
                libc::write(report, buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(0);
        }
    }
    drop(write_end);
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut &read_end, &mut answer).unwrap();
    match libc::WEXITSTATUS(status) {
        0 => Ok(answer),
        code => Err(format!("child failed at step {code}")),
    }
}

/// The vsock socket reaches the agent, so it is as private as the API socket: mode 0600
/// whatever the umask, and a client of another user is refused even if the mode allows it.
#[test]
fn the_vsock_socket_admits_only_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    // nobody must be able to reach the socket's directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let vmm_args = Vmm::guest(TINY_ELF, "hang")
        .flag("--vsock-uds", &uds)
        .command_line();
    let mut args: Vec<std::ffi::OsString> = vec![
        "-c".into(),
        "umask 000; exec \"$0\" \"$@\"".into(),
        vmm_tests::vmm_bin().into(),
    ];
    args.extend(vmm_args);
    let mut vm = Vmm::program(Path::new("/bin/sh"), args).spawn();
    vm.wait_for_stdout("info ready", Duration::from_secs(20));
    let mode = std::fs::metadata(&uds).unwrap().permissions().mode() & 0o777;
    // Opened up by hand: the peer check alone must keep nobody out.
    std::fs::set_permissions(&uds, std::fs::Permissions::from_mode(0o777)).unwrap();
    let answer = connect_as_nobody(&uds);
    vm.signal(libc::SIGTERM);
    let out = vm.wait_timeout(Duration::from_secs(10));
    assert_eq!(mode, 0o600, "created under umask 000");
    assert_eq!(answer, Ok(String::new()), "{out}");
    assert!(
        out.stderr.contains("refused a host client of another user"),
        "{out}"
    );
}

/// A hostile driver publishes a tx avail index more than the queue size ahead of the
/// device (`vsock_break_avail=1`). The device gives up on its queues, says so once
/// (DEVICE_NEEDS_RESET and a config interrupt), and its thread stays free: after a reset
/// the same run's three streams all work.
#[test]
fn a_broken_avail_ring_needs_a_reset_and_the_device_recovers() {
    let run = run_scenario("vsock_break_avail=1");
    run.out.assert_passed();
    assert_ne!(
        num_in(&run, "broken_status") & 0x40,
        0,
        "no DEVICE_NEEDS_RESET"
    );
    assert_ne!(num_in(&run, "broken_isr") & 2, 0, "no config interrupt");
    assert_eq!(num_in(&run, "status_after_reset"), 0);
    let service = run
        .service
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}\n{}", run.out));
    assert_eq!(
        String::from_utf8_lossy(&service.received),
        "hello from guest\n"
    );
    assert_eq!(value_in(&run, "refused_rst"), "ok");
    let client = run
        .client
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}\n{}", run.out));
    assert_eq!(client.echoed, client.sent);
    assert_eq!(
        run.out.stderr.matches("the device needs a reset").count(),
        1,
        "logged once:\n{}",
        run.out.stderr
    );
}
