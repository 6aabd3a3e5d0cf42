//! Runs one VM from a validated config to its end: build, boot, wait for a reason to stop,
//! stop the vCPUs, flush the disks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::bus::lock;

use crate::arch::regs;
use crate::boot::{self, BootSpec};
use crate::config::VmConfig;
use crate::console::{ConsoleWatcher, RawTerminal};
use crate::device_manager::{DeviceError, Devices};
use crate::drives::{DriveError, Drives};
use crate::exit::ExitReason;
use crate::hostnet::attach::{Attachment, SandboxLink};
use crate::machine::{Machine, MachineError};
use crate::seccomp::{Filters, ThreadKind};
use crate::signals;
use crate::vcpu::{self, Vcpu, VcpuHandle};

/// How long vCPUs get to leave KVM_RUN once told to stop.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);
const VCPU_KICK_INTERVAL: Duration = Duration::from_millis(2);
const VCPU_POLL_INTERVAL: Duration = Duration::from_micros(50);
/// How long a panicking guest gets to finish its report (it resets after `panic=1` s).
const PANIC_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Drives(#[from] DriveError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
    #[error(transparent)]
    Supervisor(#[from] crate::sandbox::ServeError),
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("--net auto needs the host side attached first (vmm::hostnet::attach)")]
    NotAttached,
    #[error(transparent)]
    Net(#[from] devices::virtio::net::NetError),
}

/// Runs the VM; returns why it stopped. Errors are setup failures (nothing ran).
/// `attachment` is the host side of `--net auto`, made by the caller before anything
/// was confined.
pub fn run(
    config: &VmConfig,
    seccomp: Arc<Filters>,
    attachment: Option<Attachment>,
) -> Result<ExitReason, VmError> {
    let setup_started = Instant::now();
    let (exit_tx, exit_rx) = channel();
    // Blocked here so every thread spawned below inherits the mask; one thread waits.
    let stop_signals = signals::block_stop_signals();
    vcpu::install_kick_handler().map_err(VmError::KickHandler)?;

    let (tap, guest_network, host_services) = match attachment {
        Some(a) => match a.link {
            SandboxLink::Tap(tap) => (Some(tap), Some(a.guest), Some((a.dns, a.published))),
            SandboxLink::Veth => return Err(VmError::NotAttached),
        },
        None => (None, None, None),
    };
    let net = config
        .net
        .as_ref()
        .map(|spec| open_nic(spec, tap))
        .transpose()?;
    let machine = Machine::new(config.memory_bytes())?;
    let watcher = ConsoleWatcher::new();
    let (mut drives, blocks) = Drives::open(&config.drives)?;
    // The devices first: where they went is part of the kernel's command line.
    let devices = Devices::build(
        &machine.vm,
        &machine.mem,
        blocks,
        config.vsock.as_ref(),
        net,
        exit_tx.clone(),
        watcher.clone(),
    )?;
    let cmdline = config.kernel_cmdline(&devices.virtio_slots.cmdline_tokens());
    let entry = boot::load(
        &machine.mem,
        &BootSpec {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline: &cmdline,
            mem_size: config.memory_bytes(),
            cpus: config.cpus,
        },
    )?;
    regs::write_descriptor_tables(&machine.mem, entry.mode)?;

    let mut vcpu_fds = Vec::with_capacity(config.cpus as usize);
    for index in 0..config.cpus {
        vcpu_fds.push(machine.create_vcpu(index, config.cpus)?);
    }
    regs::setup_boot_cpu(&vcpu_fds[0], entry.mode, entry.rip)?;

    // Everything the VM needs from the host is open now. Each thread below confines itself
    // (no capabilities, its seccomp filter) before it does any work; this one last.
    // SIGUSR1: the virtio devices' rings, then every vCPU's registers.
    let register_reports: Vec<Arc<vcpu::RegisterReport>> =
        (0..config.cpus).map(|_| Arc::default()).collect();
    let (virtio_report, vcpu_reports) = (devices.virtio_report.clone(), register_reports.clone());
    signals::spawn_signal_thread(stop_signals, exit_tx.clone(), seccomp.clone(), move || {
        virtio_report.log();
        vcpu_reports.iter().for_each(|r| r.request());
    })
    .map_err(|e| VmError::Thread("signal", e))?;
    if let Some((dns, published)) = host_services {
        crate::hostnet::services::spawn(dns, published, seccomp.clone())
            .map_err(|e| VmError::Thread("hostnet", e))?;
    }
    let Devices {
        pio,
        mmio,
        mut event_manager,
        blocks,
        vsock: _vsock,
        net: _net,
        virtio_slots: _,
        virtio_report: _,
    } = devices;
    drives.attach(&blocks);
    let drives = Arc::new(drives);
    let (devices_seccomp, devices_exit) = (seccomp.clone(), exit_tx.clone());
    std::thread::Builder::new()
        .name("devices".into())
        .spawn(move || {
            if let Err(e) = devices_seccomp.confine(ThreadKind::Devices) {
                let _ = devices_exit.send(ExitReason::Vmm(e.to_string()));
                return;
            }
            loop {
                if let Err(e) = event_manager.run() {
                    log::error!("device event loop: {e:?}");
                }
            }
        })
        .map_err(|e| VmError::Thread("device", e))?;

    let supervisor = match &config.api {
        Some(api) => Some(start_supervisor(
            config,
            api,
            &exit_tx,
            setup_started,
            &seccomp,
            drives.clone(),
            guest_network.clone(),
        )?),
        None => None,
    };
    let mut terminal = RawTerminal::enter();
    let stop = Arc::new(AtomicBool::new(false));
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let mut handles = Vec::new();
    for ((index, fd), report) in vcpu_fds.into_iter().enumerate().zip(register_reports) {
        let vcpu = Vcpu {
            index: index as u8,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: exit_tx.clone(),
            stop: stop.clone(),
            seccomp: seccomp.clone(),
            report,
        };
        handles.push(vcpu.spawn().map_err(|e| VmError::Thread("vCPU", e))?);
    }
    seccomp.confine(ThreadKind::Main)?;

    log::debug!("VM set up in {:?}; vCPUs running", setup_started.elapsed());
    let mut reason = wait_for_exit(&exit_rx, &watcher);
    if let (ExitReason::Reset | ExitReason::PowerOff, Some(cause)) =
        (&reason, supervisor.as_ref().and_then(|s| s.end_cause()))
    {
        // The guest powered off because the supervisor asked it to.
        reason = cause.exit_reason();
    }
    stop_vcpus(&stop, &handles);
    drives.close();
    terminal.restore();
    // Keep guest memory mapped until the vCPUs are gone (or abandoned at exit).
    drop(machine);
    Ok(reason)
}

/// The NIC on its TAP, opened before anything is confined.
fn open_nic(
    spec: &crate::config::NetSpec,
    attached: Option<devices::virtio::net::Tap>,
) -> Result<devices::virtio::net::Net, VmError> {
    use devices::virtio::net::{Net, NetConfig, TapSource};
    let tap = match (&spec.backend, attached) {
        (crate::config::NetBackend::Tap(name), _) => TapSource::Name(name.clone()),
        (crate::config::NetBackend::Auto, Some(tap)) => TapSource::Open(tap),
        (crate::config::NetBackend::Auto, None) => return Err(VmError::NotAttached),
    };
    Ok(Net::new(NetConfig {
        tap,
        mac: spec.mac,
        mtu: None,
    })?)
}

fn start_supervisor(
    config: &VmConfig,
    api: &crate::config::ApiSpec,
    exit_tx: &std::sync::mpsc::Sender<ExitReason>,
    started: Instant,
    seccomp: &Arc<Filters>,
    drives: Arc<Drives>,
    network: Option<crate::hostnet::attach::GuestNetwork>,
) -> Result<crate::sandbox::Handle, VmError> {
    let vsock = config
        .vsock
        .as_ref()
        .expect("config validation adds a vsock device whenever the API is served");
    let options = crate::sandbox::Options {
        api_socket: api.socket.clone(),
        agent: vmm_protocol::connect::Address::HybridVsock {
            uds: vsock.uds_path.clone(),
            port: vmm_protocol::AGENT_VSOCK_PORT,
        },
        lifetime: api.lifetime,
        ready_fd: api.ready_fd,
        started,
        seccomp: seccomp.clone(),
        drives: Some(drives),
        network,
        entrypoint: api.entrypoint.clone(),
    };
    let exit = std::sync::Mutex::new(exit_tx.clone());
    Ok(crate::sandbox::spawn(
        options,
        Box::new(move |cause| {
            let _ = lock(&exit).send(cause.exit_reason());
        }),
    )?)
}

fn wait_for_exit(rx: &Receiver<ExitReason>, watcher: &ConsoleWatcher) -> ExitReason {
    let reason = rx
        .recv()
        .unwrap_or_else(|_| ExitReason::Vmm("every VM thread ended".into()));
    match reason {
        ExitReason::GuestPanic(reported) => {
            // The kernel's panic notifiers (pvpanic) run before it finishes its report;
            // `panic=1` resets the guest a second later. Let it print until then.
            let _ = rx.recv_timeout(PANIC_GRACE);
            ExitReason::GuestPanic(watcher.panic_line().unwrap_or(reported))
        }
        reason => reason,
    }
}

fn stop_vcpus(stop: &AtomicBool, handles: &[VcpuHandle]) {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    let mut next_kick = Instant::now();
    // A kick can land just before a thread enters KVM_RUN; kick again until all have left.
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        if Instant::now() >= next_kick {
            for h in handles.iter().filter(|h| !h.is_finished()) {
                h.kick();
            }
            next_kick = Instant::now() + VCPU_KICK_INTERVAL;
        }
        std::thread::sleep(VCPU_POLL_INTERVAL);
    }
    if handles.iter().any(|h| !h.is_finished()) {
        log::warn!("a vCPU did not stop within {VCPU_STOP_TIMEOUT:?}");
    }
}
