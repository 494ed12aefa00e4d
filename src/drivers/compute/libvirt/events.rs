//! Lifecycle events of our VMs: a VM that stops or crashes without lbd
//! destroying it (`virsh destroy`, qemu killed, a guest panic) is reported
//! as a [`NodeExit`] the moment libvirt says so, as the process driver's
//! reaper does for processes; the health checker then fails it over
//! without waiting for missed checks.
//!
//! libvirt delivers events through an event loop the application runs: one
//! thread here registers libvirt's default implementation, opens a
//! connection of its own, registers a lifecycle callback
//! (`virConnectDomainEventRegisterAny`) and runs the loop, waking twice a
//! second to see whether it must stop or reconnect (libvirtd restarted).

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use virt::connect::Connect;
use virt::sys;

use super::super::{ExitSink, NodeExit};
use crate::model::NodeId;

/// The VMs the driver knows run our nodes, and where their ends go.
#[derive(Default)]
pub(super) struct Watched {
    inner: Mutex<WatchedInner>,
}

#[derive(Default)]
struct WatchedInner {
    /// Node → the UUID of the domain that runs it and its id (the "pid"
    /// of its node row). A transient domain gets a new UUID each time it
    /// is created, so an event about an earlier VM of the node is told
    /// apart.
    running: HashMap<NodeId, (String, u32)>,
    sink: Option<ExitSink>,
}

impl Watched {
    fn lock(&self) -> MutexGuard<'_, WatchedInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `node` runs as domain `uuid` with id `pid`.
    pub(super) fn running(&self, node: NodeId, uuid: String, pid: u32) {
        self.lock().running.insert(node, (uuid, pid));
    }

    /// lbd destroys the node's VM itself: its end is not reported.
    pub(super) fn stopping(&self, node: NodeId) {
        self.lock().running.remove(&node);
    }

    fn set_sink(&self, sink: ExitSink) {
        self.lock().sink = Some(sink);
    }

    /// Domain `uuid` of `node` ended: reported once if it is the VM known
    /// to run the node.
    pub(super) fn ended(&self, node: NodeId, uuid: &str, reason: String) {
        let mut inner = self.lock();
        let pid = match inner.running.get(&node) {
            Some((known, pid)) if known == uuid => *pid,
            _ => return,
        };
        inner.running.remove(&node);
        if let Some(sink) = &inner.sink {
            // A closed sink: lbd is stopping; there is no one to tell.
            let _ = sink.send(NodeExit {
                node_id: node,
                pid,
                reason,
            });
        }
    }
}

/// How a lifecycle event says the VM ended, or `None` when it did not
/// (started, paused, resumed) or went on elsewhere (migrated, saved).
pub(super) fn ended_reason(event: c_int, detail: c_int) -> Option<String> {
    let (event, detail) = (event as u32, detail as u32);
    match event {
        sys::VIR_DOMAIN_EVENT_STOPPED => match detail {
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => Some("the VM shut down".into()),
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => Some("the VM was destroyed".into()),
            sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => Some("the VM crashed".into()),
            sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => {
                Some("the VM failed (the hypervisor lost it)".into())
            }
            _ => None,
        },
        sys::VIR_DOMAIN_EVENT_CRASHED => Some("the VM's guest crashed (panic)".into()),
        _ => None,
    }
}

/// The watcher thread, and how to stop it.
pub(super) struct EventThread {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl EventThread {
    pub(super) fn spawn(
        uri: String,
        prefix: String,
        watched: Arc<Watched>,
        sink: ExitSink,
    ) -> std::io::Result<Self> {
        watched.set_sink(sink);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(move || run(&uri, Context { prefix, watched }, &stopping))?;
        Ok(EventThread { stop, thread })
    }

    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // The loop wakes at least every TICK.
        let _ = self.thread.join();
    }
}

/// What the callback needs: which domains are ours, and whom to tell.
#[derive(Clone)]
struct Context {
    prefix: String,
    watched: Arc<Watched>,
}

const TICK: Duration = Duration::from_millis(500);

fn run(uri: &str, ctx: Context, stop: &AtomicBool) {
    static DEFAULT_IMPL: Once = Once::new();
    DEFAULT_IMPL.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::warn!("libvirt events: no event loop ({e}); missed checks find ended VMs");
        }
    });
    // Wakes the loop every TICK even when no event comes.
    let _tick =
        virt::event::event_add_timeout(TICK.as_millis() as c_int, |_, _| {}, std::ptr::null_mut());
    let mut subscribed: Option<Subscription> = None;
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        if subscribed.as_ref().is_none_or(|s| !s.alive()) {
            if let Some(old) = subscribed.take() {
                old.close();
            }
            match Subscription::open(uri, ctx.clone()) {
                Ok(s) => {
                    if warned {
                        tracing::info!("libvirt events: watching VMs again");
                    }
                    warned = false;
                    subscribed = Some(s);
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!("libvirt events: {e}; retrying (missed checks find ended VMs meanwhile)");
                    }
                    warned = true;
                    std::thread::sleep(TICK);
                    continue;
                }
            }
        }
        if virt::event::event_run_default_impl().is_err() {
            std::thread::sleep(TICK);
        }
    }
    if let Some(s) = subscribed {
        s.close();
    }
}

/// libvirt's lifecycle callback, and the generic shape registration takes.
type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// A connection with our lifecycle callback registered on it.
struct Subscription {
    conn: Connect,
    callback: c_int,
}

impl Subscription {
    fn open(uri: &str, ctx: Context) -> Result<Self, String> {
        let mut conn = Connect::open(Some(uri)).map_err(|e| format!("connecting: {e}"))?;
        let opaque = Box::into_raw(Box::new(ctx)) as *mut c_void;
        // SAFETY: the callback has the lifecycle signature libvirt calls
        // for VIR_DOMAIN_EVENT_ID_LIFECYCLE (the C API's own
        // VIR_DOMAIN_EVENT_CALLBACK cast); `opaque` is a leaked Box that
        // libvirt hands to `free_context` exactly once, when the callback
        // is deregistered or the connection closes.
        let callback = unsafe {
            let lifecycle: LifecycleCallback = on_lifecycle;
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                Some(std::mem::transmute::<LifecycleCallback, GenericCallback>(
                    lifecycle,
                )),
                opaque,
                Some(free_context),
            )
        };
        if callback < 0 {
            // SAFETY: registration failed, so libvirt did not take `opaque`.
            drop(unsafe { Box::from_raw(opaque as *mut Context) });
            let _ = conn.close();
            return Err(format!(
                "registering for lifecycle events: {}",
                virt::error::Error::last_error()
            ));
        }
        Ok(Subscription { conn, callback })
    }

    fn alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }

    fn close(mut self) {
        // SAFETY: `callback` is the id this connection returned.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.callback);
        }
        let _ = self.conn.close();
    }
}

unsafe extern "C" fn free_context(opaque: *mut c_void) {
    // SAFETY: `opaque` is the Box leaked in `Subscription::open`, freed once.
    drop(unsafe { Box::from_raw(opaque as *mut Context) });
}

/// libvirt's lifecycle callback, on the event thread.
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let Some(reason) = ended_reason(event, detail) else {
        return 0;
    };
    // SAFETY: `opaque` is our Context, alive while the callback is
    // registered; `dom` is valid for the callback's duration, and the name
    // it returns belongs to it (not freed here).
    let ctx = unsafe { &*(opaque as *const Context) };
    let name = unsafe { sys::virDomainGetName(dom) };
    if name.is_null() {
        return 0;
    }
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    let mut uuid: [c_char; sys::VIR_UUID_STRING_BUFLEN as usize] =
        [0; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: the buffer is VIR_UUID_STRING_BUFLEN long, as the call needs.
    if unsafe { sys::virDomainGetUUIDString(dom, uuid.as_mut_ptr()) } < 0 {
        return 0;
    }
    let uuid = unsafe { CStr::from_ptr(uuid.as_ptr()) }.to_string_lossy();
    if let Some(node) = super::node_id_of(&ctx.prefix, &name) {
        ctx.watched.ended(node, &uuid, reason);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ends_are_reasons() {
        let stopped = sys::VIR_DOMAIN_EVENT_STOPPED as c_int;
        let destroyed = sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED as c_int;
        assert_eq!(
            ended_reason(stopped, destroyed).as_deref(),
            Some("the VM was destroyed")
        );
        let migrated = sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED as c_int;
        assert_eq!(ended_reason(stopped, migrated), None, "it runs elsewhere");
        let started = sys::VIR_DOMAIN_EVENT_STARTED as c_int;
        assert_eq!(ended_reason(started, 0), None);
        let crashed = sys::VIR_DOMAIN_EVENT_CRASHED as c_int;
        assert!(ended_reason(crashed, 0).is_some());
    }

    #[test]
    fn an_end_is_reported_once_and_only_for_the_vm_known_to_run_the_node() {
        let watched = Watched::default();
        let (sink, mut exits) = tokio::sync::mpsc::unbounded_channel();
        watched.set_sink(sink);
        let node = NodeId(7);
        watched.running(node, "uuid-new".into(), 42);
        watched.ended(node, "uuid-old", "the VM was destroyed".into());
        assert!(exits.try_recv().is_err(), "an earlier VM of the node");
        watched.ended(node, "uuid-new", "the VM was destroyed".into());
        let exit = exits.try_recv().unwrap();
        assert_eq!((exit.node_id, exit.pid), (node, 42));
        watched.ended(node, "uuid-new", "the VM crashed".into());
        assert!(exits.try_recv().is_err(), "reported once");
        // lbd's own destroy is not an end to report.
        watched.running(node, "uuid-3".into(), 43);
        watched.stopping(node);
        watched.ended(node, "uuid-3", "the VM was destroyed".into());
        assert!(exits.try_recv().is_err());
    }
}
