//! Builds the machine's devices: puts them on the port and MMIO buses, wires their
//! interrupts (irqfd) and queue notifications (ioeventfd) into KVM, and registers them with
//! the event manager that the device thread runs.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use devices::bus::{lock, Bus, BusError};
use devices::legacy::acpi_pm::ACPI_PM_PORTS;
use devices::legacy::pvpanic::PVPANIC_PORT;
use devices::legacy::{AcpiPm, Cmos, PvPanic, Serial, I8042};
use devices::virtio::block::{Block, BlockError};
use devices::virtio::net::{Net, NetError};
use devices::virtio::vsock::{Vsock, VsockConfig, VsockError};
use devices::virtio::{MmioTransport, QueueWorker, VirtioDevice, VirtioFront, MMIO_WINDOW_SIZE};
use devices::EventFdTrigger;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{ACPI_PM_PORT, CMOS_PORT, COM1_IRQ, COM1_PORT, I8042_PORT};
use crate::config::VsockSpec;
use crate::console::{ConsoleInput, ConsoleOutput, ConsoleWatcher};
use crate::exit::ExitReason;
use crate::virtio_slots::{SlotsFull, VirtioSlots};

/// The 8250's eight registers.
const COM1_PORT_LEN: u64 = 8;
/// Data port 0x60 through command port 0x64.
const I8042_PORT_LEN: u64 = 5;
/// Index and data registers.
const CMOS_PORT_LEN: u64 = 2;
/// QueueNotify register offset in a virtio-mmio window.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot create the event manager: {0:?}")]
    EventManager(event_manager::Error),
    #[error(transparent)]
    Slots(#[from] SlotsFull),
}

pub struct Devices {
    pub pio: Bus,
    pub mmio: Bus,
    pub event_manager: EventManager<Subscriber>,
    pub blocks: Vec<Arc<Mutex<Block>>>,
    /// Kept so the device (and its host socket) lives as long as the VM.
    pub vsock: Option<Arc<Mutex<Vsock>>>,
    /// Kept so the NIC (and its TAP) lives as long as the VM.
    pub net: Option<Arc<Mutex<Net>>>,
    /// Where each virtio device went; the kernel command line declares them.
    pub virtio_slots: VirtioSlots,
    pub virtio_report: VirtioReport,
}

/// Every virtio transport, for `SIGUSR1`'s report on a stuck guest (see `log`).
#[derive(Clone, Default)]
pub struct VirtioReport {
    transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
}

impl VirtioReport {
    /// Logs one line per virtio device: its driver status, pending interrupt bits and ring
    /// indexes. A guest that waits on a device shows which side is behind.
    pub fn log(&self) {
        for (name, transport) in &self.transports {
            log::warn!("{name}: {}", lock(transport).report());
        }
    }
}

/// Turns a device's line that ends the VM (the i8042's reset, ACPI's power-off, pvpanic)
/// into an exit reason.
struct ExitLine {
    line: EventFd,
    reason: ExitReason,
    exit: Sender<ExitReason>,
}

impl ExitLine {
    /// A line for `reason`, and the trigger its device raises.
    fn new(
        reason: ExitReason,
        exit: Sender<ExitReason>,
    ) -> Result<(Self, EventFdTrigger), DeviceError> {
        let line = new_eventfd()?;
        let trigger = EventFdTrigger::new(line.try_clone().map_err(DeviceError::EventFd)?);
        Ok((Self { line, reason, exit }, trigger))
    }
}

impl MutEventSubscriber for ExitLine {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.line, EventSet::IN)) {
            log::error!("cannot watch the line for {:?}: {e:?}", self.reason);
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.line.read();
        let _ = self.exit.send(self.reason.clone());
    }
}

fn new_eventfd() -> Result<EventFd, DeviceError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DeviceError {
    move |source| DeviceError::Kvm { what, source }
}

impl Devices {
    pub fn build(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        drives: Vec<Block>,
        vsock: Option<&VsockSpec>,
        net: Option<Net>,
        exit: Sender<ExitReason>,
        watcher: Arc<ConsoleWatcher>,
    ) -> Result<Self, DeviceError> {
        let mut devices = Self {
            pio: Bus::new(),
            mmio: Bus::new(),
            event_manager: EventManager::new().map_err(DeviceError::EventManager)?,
            blocks: Vec::new(),
            vsock: None,
            net: None,
            virtio_slots: VirtioSlots::default(),
            virtio_report: VirtioReport::default(),
        };
        devices.add_legacy(vm, exit, watcher)?;
        for drive in drives {
            let block = devices.add_virtio(vm, mem, drive)?;
            devices.blocks.push(block);
        }
        if let Some(spec) = vsock {
            let device = Vsock::new(&VsockConfig {
                guest_cid: spec.guest_cid,
                uds_path: spec.uds_path.clone(),
            })?;
            devices.vsock = Some(devices.add_virtio(vm, mem, device)?);
        }
        if let Some(device) = net {
            devices.net = Some(devices.add_virtio(vm, mem, device)?);
        }
        Ok(devices)
    }

    fn add_legacy(
        &mut self,
        vm: &VmFd,
        exit: Sender<ExitReason>,
        watcher: Arc<ConsoleWatcher>,
    ) -> Result<(), DeviceError> {
        let serial_irq = new_eventfd()?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("wire the serial interrupt"))?;
        let serial = Arc::new(Mutex::new(Serial::new(
            EventFdTrigger::new(serial_irq),
            Box::new(ConsoleOutput::new(watcher)),
        )));
        self.pio
            .insert(serial.clone(), u64::from(COM1_PORT), COM1_PORT_LEN)?;
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(serial))));

        let (reset, reset_trigger) = ExitLine::new(ExitReason::Reset, exit.clone())?;
        self.pio.insert(
            Arc::new(Mutex::new(I8042::new(reset_trigger))),
            u64::from(I8042_PORT),
            I8042_PORT_LEN,
        )?;
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(reset)));
        let (power_off, power_off_trigger) = ExitLine::new(ExitReason::PowerOff, exit.clone())?;
        self.pio.insert(
            Arc::new(Mutex::new(AcpiPm::new(power_off_trigger))),
            u64::from(ACPI_PM_PORT),
            ACPI_PM_PORTS,
        )?;
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(power_off)));
        let panic = ExitReason::GuestPanic("the guest kernel panicked (pvpanic)".into());
        let (panic, panic_trigger) = ExitLine::new(panic, exit)?;
        self.pio.insert(
            Arc::new(Mutex::new(PvPanic::new(panic_trigger))),
            u64::from(PVPANIC_PORT),
            1,
        )?;
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(panic)));
        self.pio.insert(
            Arc::new(Mutex::new(Cmos::new())),
            u64::from(CMOS_PORT),
            CMOS_PORT_LEN,
        )?;
        Ok(())
    }

    /// Puts a virtio device in the next MMIO slot: its front behind the transport, its
    /// worker on the device thread. Returns the worker.
    fn add_virtio<W>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        device: W,
    ) -> Result<Arc<Mutex<W>>, DeviceError>
    where
        W: QueueWorker + MutEventSubscriber,
    {
        let slot = self.virtio_slots.take()?;
        let (addr, irq) = (slot.addr, slot.irq);
        let (front, worker) = VirtioFront::new(device).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(front.interrupt().irqfd(), irq)
            .map_err(kvm_err("wire a virtio interrupt"))?;
        for (queue, evt) in front.queue_events().iter().enumerate() {
            let notify = IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET);
            vm.register_ioevent(evt, &notify, queue as u32)
                .map_err(kvm_err("wire a virtio queue notification"))?;
        }
        let name = format!("{} at {addr:#x} (irq {irq})", lock(&worker).base().name());
        let transport = Arc::new(Mutex::new(MmioTransport::new(mem.clone(), Box::new(front))));
        self.mmio
            .insert(transport.clone(), addr, MMIO_WINDOW_SIZE)?;
        self.virtio_report.transports.push((name, transport));
        self.event_manager.add_subscriber(worker.clone());
        Ok(worker)
    }
}
