//! `--vm-domain-type auto`: whether KVM really runs guests here. /dev/kvm
//! opening is not enough: under nested virtualisation it opens, libvirt
//! starts the domain, and the guest never executes an instruction of its
//! own, so every node would time out after minutes with no hint. So lbd
//! boots the node image once under KVM, in the background at start (lbd
//! serves meanwhile), and waits for the image's init to say on the serial
//! console that it runs; without that within [`KVM_PROBE_DEADLINE`] VMs run
//! under TCG and a warning says why. Node creation waits for the answer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;

use super::domain_xml::{probe_xml, Boot, DomainType};
use crate::model::{Warning, WarningCode};

/// How long a KVM guest gets to reach init. A working one takes about a
/// second (the kernel boots, then init runs from the initramfs); the margin
/// is for a loaded host.
pub const KVM_PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// What the image's init prints first, on every boot.
pub const INIT_MARKER: &str = "lbaas-node: init";

/// What the decision needs from the host; a trait, so the decision is
/// tested without KVM.
pub trait KvmHost {
    /// Whether /dev/kvm opens for writing.
    fn kvm_device_opens(&self) -> bool;
    /// Boots a guest under KVM and waits at most `deadline` for it to reach
    /// init; how long it took, or what went wrong.
    fn boot_guest(&self, deadline: Duration) -> Result<Duration, String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub domain_type: DomainType,
    /// Set when KVM looked usable but is not.
    pub warning: Option<Warning>,
}

/// `kvm` if a KVM guest reached init, else `qemu`: with a warning when
/// /dev/kvm opened (the operator expects KVM), without one when there is no
/// KVM at all (then TCG is the only choice and nothing is probed).
pub fn decide(host: &dyn KvmHost, deadline: Duration) -> Decision {
    if !host.kvm_device_opens() {
        return Decision {
            domain_type: DomainType::Qemu,
            warning: None,
        };
    }
    match host.boot_guest(deadline) {
        Ok(_) => Decision {
            domain_type: DomainType::Kvm,
            warning: None,
        },
        Err(reason) => Decision {
            domain_type: DomainType::Qemu,
            warning: Some(Warning {
                code: WarningCode::VmTcgFallback,
                message: format!(
                    "/dev/kvm opens but a KVM guest did not run ({reason}); \
                     VMs run under TCG (emulation, slower). \
                     Force a type with --vm-domain-type"
                ),
            }),
        },
    }
}

enum State {
    Probing,
    Ready(DomainType),
    /// lbd is stopping: no answer will come.
    Stopped,
}

/// The domain type VMs get: known at once, or once the probe answers.
pub struct DomainTypeCell {
    state: Mutex<State>,
    changed: Condvar,
}

impl DomainTypeCell {
    pub fn ready(domain_type: DomainType) -> Self {
        DomainTypeCell {
            state: Mutex::new(State::Ready(domain_type)),
            changed: Condvar::new(),
        }
    }

    pub fn probing() -> Self {
        DomainTypeCell {
            state: Mutex::new(State::Probing),
            changed: Condvar::new(),
        }
    }

    fn set(&self, next: State) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, State::Probing) {
            *state = next;
        }
        self.changed.notify_all();
    }

    pub fn stop(&self) {
        self.set(State::Stopped);
    }

    /// The domain type, waiting at most `limit` for the probe.
    pub fn wait(&self, limit: Duration) -> Result<DomainType, String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, _) = self
            .changed
            .wait_timeout_while(state, limit, |s| matches!(s, State::Probing))
            .unwrap_or_else(PoisonError::into_inner);
        match *state {
            State::Ready(t) => Ok(t),
            State::Probing => Err("the KVM probe has not answered yet".into()),
            State::Stopped => Err("lbd is stopping".into()),
        }
    }
}

/// The real host: boots the node image under KVM through libvirt.
pub struct LibvirtKvmHost {
    pub uri: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    /// Domain name of the probe VM (`<prefix>-kvm-probe`: not a node's name).
    pub name: String,
    pub console: PathBuf,
    pub cancel: Arc<AtomicBool>,
}

impl KvmHost for LibvirtKvmHost {
    fn kvm_device_opens(&self) -> bool {
        super::domain_xml::kvm_device_opens()
    }

    fn boot_guest(&self, deadline: Duration) -> Result<Duration, String> {
        let mut conn = Connect::open(Some(&self.uri)).map_err(|e| format!("libvirt: {e}"))?;
        let result = self.boot_on(&conn, deadline);
        let _ = conn.close();
        result
    }
}

impl LibvirtKvmHost {
    fn boot_on(&self, conn: &Connect, deadline: Duration) -> Result<Duration, String> {
        // One left by an lbd killed while probing.
        if let Ok(old) = Domain::lookup_by_name(conn, &self.name) {
            let _ = old.destroy();
        }
        let _ = std::fs::remove_file(&self.console);
        let boot = Boot {
            domain_type: DomainType::Kvm,
            kernel: &self.kernel,
            initrd: Some(&self.initrd),
            memory_mib: self.memory_mib,
            vcpus: 1,
        };
        let xml = probe_xml(&boot, &self.name, &self.console);
        let started = Instant::now();
        let domain =
            Domain::create_xml(conn, &xml, 0).map_err(|e| format!("creating a KVM guest: {e}"))?;
        let result = self.wait_for_init(&domain, started, deadline);
        let _ = domain.destroy();
        let _ = std::fs::remove_file(&self.console);
        result
    }

    /// Polls the console log for the init's marker until the deadline.
    fn wait_for_init(
        &self,
        domain: &Domain,
        started: Instant,
        deadline: Duration,
    ) -> Result<Duration, String> {
        loop {
            let console = std::fs::read_to_string(&self.console).unwrap_or_default();
            if console.contains(INIT_MARKER) {
                return Ok(started.elapsed());
            }
            if self.cancel.load(Ordering::SeqCst) {
                return Err("lbd is stopping".into());
            }
            if !domain.is_active().unwrap_or(false) {
                return Err("the KVM guest stopped before init".into());
            }
            if started.elapsed() >= deadline {
                let said = if console.trim().is_empty() {
                    "no console output".to_string()
                } else {
                    format!("{} bytes of console output", console.len())
                };
                return Err(format!(
                    "it did not reach init within {} s, {said}",
                    deadline.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs the probe on its own thread and records the answer in `cell`, in
/// lbd's log and, for a fallback, in `warnings`.
pub fn spawn(
    host: LibvirtKvmHost,
    cell: Arc<DomainTypeCell>,
    warnings: crate::drivers::compute::ComputeWarnings,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let started = Instant::now();
            let decision = decide(&host, KVM_PROBE_DEADLINE);
            if host.cancel.load(Ordering::SeqCst) {
                return;
            }
            let took = started.elapsed().as_secs_f64();
            match &decision.warning {
                Some(w) => {
                    tracing::warn!(
                        "--vm-domain-type auto: {} (probed for {took:.1} s)",
                        w.message
                    );
                    warnings.add(w.clone());
                }
                None => tracing::info!(
                    "--vm-domain-type auto: VMs run as {} (probed for {took:.1} s)",
                    decision.domain_type.as_str()
                ),
            }
            cell.set(State::Ready(decision.domain_type));
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct FakeHost {
        device: bool,
        boot: Result<Duration, String>,
        boots: Cell<u32>,
    }

    impl FakeHost {
        fn new(device: bool, boot: Result<Duration, String>) -> Self {
            FakeHost {
                device,
                boot,
                boots: Cell::new(0),
            }
        }
    }

    impl KvmHost for FakeHost {
        fn kvm_device_opens(&self) -> bool {
            self.device
        }
        fn boot_guest(&self, _deadline: Duration) -> Result<Duration, String> {
            self.boots.set(self.boots.get() + 1);
            self.boot.clone()
        }
    }

    #[test]
    fn a_guest_that_reaches_init_means_kvm() {
        let host = FakeHost::new(true, Ok(Duration::from_millis(900)));
        let d = decide(&host, KVM_PROBE_DEADLINE);
        assert_eq!(d.domain_type, DomainType::Kvm);
        assert_eq!(d.warning, None);
        assert_eq!(host.boots.get(), 1);
    }

    #[test]
    fn a_guest_that_fails_or_times_out_means_tcg_with_a_warning() {
        for reason in [
            "it did not reach init within 20 s, no console output",
            "creating a KVM guest: permission denied",
        ] {
            let host = FakeHost::new(true, Err(reason.into()));
            let d = decide(&host, KVM_PROBE_DEADLINE);
            assert_eq!(d.domain_type, DomainType::Qemu);
            let w = d.warning.expect("a fallback warns");
            assert_eq!(w.code, WarningCode::VmTcgFallback);
            assert!(w.message.contains(reason), "{}", w.message);
            assert!(w.message.contains("TCG"), "{}", w.message);
        }
    }

    #[test]
    fn no_kvm_device_means_tcg_without_a_probe() {
        let host = FakeHost::new(false, Ok(Duration::ZERO));
        let d = decide(&host, KVM_PROBE_DEADLINE);
        assert_eq!(d.domain_type, DomainType::Qemu);
        assert_eq!(d.warning, None);
        assert_eq!(host.boots.get(), 0, "nothing is booted");
    }

    #[test]
    fn node_creation_waits_for_the_answer() {
        let cell = Arc::new(DomainTypeCell::probing());
        assert!(
            cell.wait(Duration::from_millis(10)).is_err(),
            "no answer yet"
        );
        let setter = {
            let cell = cell.clone();
            std::thread::spawn(move || cell.set(State::Ready(DomainType::Qemu)))
        };
        assert_eq!(cell.wait(Duration::from_secs(30)), Ok(DomainType::Qemu));
        setter.join().unwrap();
        cell.stop();
        assert_eq!(
            cell.wait(Duration::ZERO),
            Ok(DomainType::Qemu),
            "an answer stays"
        );
        let stopped = DomainTypeCell::probing();
        stopped.stop();
        assert!(stopped.wait(Duration::from_secs(30)).is_err());
        assert_eq!(
            DomainTypeCell::ready(DomainType::Kvm).wait(Duration::ZERO),
            Ok(DomainType::Kvm)
        );
    }
}
