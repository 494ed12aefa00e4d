//! One [`BackendDriver`] over the two kinds: a start goes by its template,
//! every later call by the kind that backend id was started (or found) as.
//! The trait's calls after `start` carry only the id, and the managed code
//! need not know which kind it runs; an id this lbd has not seen yet (after
//! a restart) is looked for among processes first (a local /proc read),
//! then VMs.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{BackendDriver, BackendError, BackendLaunch, BackendObservation};
use crate::model::managed::ManagedCompute;

pub struct Backends {
    process: Box<dyn BackendDriver>,
    /// `None` when this lbd runs no VMs (`--compute process`, or built
    /// without the `libvirt` feature): a VM start is refused.
    vm: Option<Box<dyn BackendDriver>>,
    kinds: Mutex<HashMap<i64, ManagedCompute>>,
}

impl Backends {
    pub fn new(process: Box<dyn BackendDriver>, vm: Option<Box<dyn BackendDriver>>) -> Self {
        Backends {
            process,
            vm,
            kinds: Mutex::default(),
        }
    }

    /// Whether `compute: vm` pools can run here (the API refuses them otherwise).
    pub fn runs_vms(&self) -> bool {
        self.vm.is_some()
    }

    fn kinds(&self) -> MutexGuard<'_, HashMap<i64, ManagedCompute>> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn kind(&self, id: i64) -> Option<ManagedCompute> {
        self.kinds().get(&id).copied()
    }

    fn driver(&self, kind: ManagedCompute) -> Option<&dyn BackendDriver> {
        match kind {
            ManagedCompute::Process => Some(self.process.as_ref()),
            ManagedCompute::Vm => self.vm.as_deref(),
        }
    }

    /// The kind of an id not seen yet, found by asking each driver.
    fn find(&self, id: i64) -> (Option<ManagedCompute>, BackendObservation) {
        let seen = self.process.observe(id);
        if seen != BackendObservation::Absent {
            return (Some(ManagedCompute::Process), seen);
        }
        if let Some(vm) = &self.vm {
            let seen = vm.observe(id);
            if seen != BackendObservation::Absent {
                return (Some(ManagedCompute::Vm), seen);
            }
        }
        (None, BackendObservation::Absent)
    }
}

impl BackendDriver for Backends {
    fn start(&self, launch: &BackendLaunch) -> Result<u32, BackendError> {
        let kind = launch.template.compute();
        let driver = self.driver(kind).ok_or(BackendError::Unsupported {
            id: launch.id,
            what: kind.as_str(),
        })?;
        self.kinds().insert(launch.id, kind);
        driver.start(launch)
    }

    fn observe(&self, id: i64) -> BackendObservation {
        if let Some(d) = self.kind(id).and_then(|k| self.driver(k)) {
            return d.observe(id);
        }
        let (kind, seen) = self.find(id);
        if let Some(kind) = kind {
            self.kinds().insert(id, kind);
        }
        seen
    }

    fn stop(&self, id: i64) -> Result<(), BackendError> {
        let known = self.kinds().remove(&id);
        match known.and_then(|k| self.driver(k)) {
            Some(d) => d.stop(id),
            // Unknown: each driver's stop is a no-op without a backend of its own.
            None => {
                self.process.stop(id)?;
                match &self.vm {
                    Some(vm) => vm.stop(id),
                    None => Ok(()),
                }
            }
        }
    }

    fn live(&self) -> Vec<(i64, u32)> {
        let mut all = self.process.live();
        let mut kinds = self.kinds();
        for (id, _) in &all {
            kinds.insert(*id, ManagedCompute::Process);
        }
        if let Some(vm) = &self.vm {
            for (id, pid) in vm.live() {
                kinds.insert(id, ManagedCompute::Vm);
                all.push((id, pid));
            }
        }
        all.sort_unstable();
        all
    }

    fn kill_orphan(&self, id: i64, pid: u32) {
        // Only what `live` found is an orphan, so its kind is known; a
        // process kill with a VM's domain id as pid must never happen.
        let kind = self.kinds().remove(&id);
        if let Some(d) = kind.and_then(|k| self.driver(k)) {
            d.kill_orphan(id, pid);
        }
    }

    fn output_tail(&self, id: i64) -> String {
        match self.kind(id).and_then(|k| self.driver(k)) {
            Some(d) => d.output_tail(id),
            None => self.process.output_tail(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::managed::BackendTemplate;
    use std::sync::Arc;

    /// Records which calls reached it; every id it started is running.
    #[derive(Default)]
    struct Fake {
        started: Mutex<Vec<i64>>,
        killed: Mutex<Vec<(i64, u32)>>,
        pid: u32,
    }

    impl BackendDriver for Arc<Fake> {
        fn start(&self, l: &BackendLaunch) -> Result<u32, BackendError> {
            self.started.lock().unwrap().push(l.id);
            Ok(self.pid)
        }
        fn observe(&self, id: i64) -> BackendObservation {
            if self.started.lock().unwrap().contains(&id) {
                BackendObservation::Running { pid: self.pid }
            } else {
                BackendObservation::Absent
            }
        }
        fn stop(&self, id: i64) -> Result<(), BackendError> {
            self.started.lock().unwrap().retain(|i| *i != id);
            Ok(())
        }
        fn live(&self) -> Vec<(i64, u32)> {
            let started = self.started.lock().unwrap();
            started.iter().map(|i| (*i, self.pid)).collect()
        }
        fn kill_orphan(&self, id: i64, pid: u32) {
            self.killed.lock().unwrap().push((id, pid));
        }
        fn output_tail(&self, id: i64) -> String {
            format!("tail of {id} from {}", self.pid)
        }
    }

    fn launch(id: i64, vm: bool) -> BackendLaunch {
        use crate::model::managed::{ProcessTemplate, VmTemplate};
        BackendLaunch {
            id,
            instance: "web".into(),
            address: "100.64.3.9".parse().unwrap(),
            port: 80,
            prefix_len: 24,
            resource: None,
            template: if vm {
                BackendTemplate::Vm(VmTemplate {
                    kernel: "/k".into(),
                    initrd: None,
                    cmdline: None,
                    memory_mb: 128,
                    vcpus: 1,
                })
            } else {
                BackendTemplate::Process(ProcessTemplate::default())
            },
            netns: None,
        }
    }

    fn fakes() -> (Arc<Fake>, Arc<Fake>, Backends) {
        let (p, v) = (
            Arc::new(Fake {
                pid: 100,
                ..Fake::default()
            }),
            Arc::new(Fake {
                pid: 200,
                ..Fake::default()
            }),
        );
        let b = Backends::new(Box::new(p.clone()), Some(Box::new(v.clone())));
        (p, v, b)
    }

    #[test]
    fn each_kind_goes_to_its_driver() {
        let (p, v, b) = fakes();
        assert_eq!(b.start(&launch(1, false)).unwrap(), 100);
        assert_eq!(b.start(&launch(2, true)).unwrap(), 200);
        assert_eq!(b.observe(2), BackendObservation::Running { pid: 200 });
        assert_eq!(b.output_tail(2), "tail of 2 from 200");
        assert_eq!(b.live(), vec![(1, 100), (2, 200)]);
        b.stop(2).unwrap();
        assert!(v.started.lock().unwrap().is_empty());
        assert_eq!(*p.started.lock().unwrap(), vec![1]);
    }

    #[test]
    fn an_unknown_id_is_found_and_an_orphan_killed_by_its_own_driver() {
        let (_, v, b) = fakes();
        // Started by an earlier lbd: this one has not seen it.
        v.started.lock().unwrap().push(7);
        assert_eq!(b.observe(7), BackendObservation::Running { pid: 200 });
        assert_eq!(b.observe(8), BackendObservation::Absent);
        let fresh = fakes();
        fresh.1.started.lock().unwrap().push(9);
        assert_eq!(fresh.2.live(), vec![(9, 200)]);
        fresh.2.kill_orphan(9, 200);
        assert_eq!(*fresh.1.killed.lock().unwrap(), vec![(9, 200)]);
        assert!(fresh.0.killed.lock().unwrap().is_empty());
    }

    #[test]
    fn a_vm_is_refused_without_the_vm_driver() {
        let b = Backends::new(Box::new(Arc::new(Fake::default())), None);
        assert!(!b.runs_vms());
        let e = b.start(&launch(3, true)).unwrap_err();
        assert!(matches!(e, BackendError::Unsupported { what: "vm", .. }));
        assert!(b.start(&launch(4, false)).is_ok());
    }
}
