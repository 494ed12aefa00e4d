//! The manager's decisions, without I/O: when a wake starts a backend, how
//! many `min` still needs, which ready backends are idle enough to stop,
//! and where a new backend's address goes.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use crate::model::managed::{is_resource_id, BackendTemplate, Managed};
use crate::model::wake::{ManagedTarget, WakeDemand};

/// Backends of one target, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ready: u32,
    pub starting: u32,
}

impl Counts {
    pub fn live(self) -> u32 {
        self.ready + self.starting
    }
}

/// Whether `demand` calls for one more backend: none is ready or starting,
/// or the requests in flight exceed what the ready and starting ones are
/// meant to carry; never beyond `max`.
pub fn wake_starts_one(m: &Managed, demand: &WakeDemand, counts: Counts) -> bool {
    if counts.live() >= m.max {
        return false;
    }
    counts.live() == 0
        || u64::from(demand.in_flight) > u64::from(m.target_in_flight) * u64::from(counts.live())
}

/// How many backends to start so that `min` run.
pub fn missing_for_min(m: &Managed, counts: Counts) -> u32 {
    m.min.min(m.max).saturating_sub(counts.live())
}

/// Why a wake's target gets no backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRefusal {
    /// The target does not fit the pool (a resource of a pool without
    /// `per_resource`, an unlisted or malformed id, or the reverse): a node
    /// on an older config; it is told the current one anyway.
    NotRouted,
    /// `max_resources` resources have backends already.
    TooManyResources(u32),
}

/// Whether backends of `resource` belong to pool `m`: none for a pool
/// without `per_resource`, a valid (and, with `resources`, listed) id for
/// one with it.
pub fn resource_fits(m: &Managed, resource: Option<&str>) -> bool {
    match (&m.per_resource, resource) {
        (None, None) => true,
        (Some(p), Some(id)) => {
            is_resource_id(id) && p.resources.as_ref().is_none_or(|l| l.contains_key(id))
        }
        _ => false,
    }
}

/// Whether a wake for `target` may start backends, given the resources of
/// the pool that have live backends now (`max_resources` counts those).
pub fn check_target(
    m: &Managed,
    target: &ManagedTarget,
    live_resources: &HashSet<&str>,
) -> Result<(), TargetRefusal> {
    if !resource_fits(m, target.resource.as_deref()) {
        return Err(TargetRefusal::NotRouted);
    }
    match (&m.per_resource, target.resource.as_deref()) {
        (Some(p), Some(id))
            if !live_resources.contains(id) && live_resources.len() >= p.max_resources as usize =>
        {
            Err(TargetRefusal::TooManyResources(p.max_resources))
        }
        _ => Ok(()),
    }
}

/// The template a backend of `resource` runs: the resource's `env` over
/// the template's (placeholders, `{resource}` among them, are filled by the
/// driver).
pub fn template_for(m: &Managed, resource: Option<&str>) -> BackendTemplate {
    let mut template = m.template.clone();
    let spec = resource.and_then(|r| {
        m.per_resource
            .as_ref()
            .and_then(|p| p.resources.as_ref())
            .and_then(|l| l.get(r))
    });
    if let (BackendTemplate::Process(p), Some(spec)) = (&mut template, spec) {
        p.env
            .extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    template
}

/// What the nodes said of one ready backend, summed over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub id: i64,
    /// When it became ready (unix ms): its idle time if it was never used.
    pub ready_at_ms: i64,
    pub open_connections: u64,
    /// The least `idle_ms` any node reported; `None`: no node used it.
    pub idle_ms: Option<u64>,
    /// Every node of the instance answered (otherwise nothing is stopped:
    /// the silent node may be using it).
    pub complete: bool,
}

impl Activity {
    fn idle_for(&self, now_ms: i64) -> Option<u64> {
        if !self.complete || self.open_connections > 0 {
            return None;
        }
        Some(
            self.idle_ms
                .unwrap_or_else(|| (now_ms - self.ready_at_ms).max(0) as u64),
        )
    }
}

/// What a backend was started from: a digest of the pool's template, port
/// and per-resource settings. A backend whose digest is not its pool's
/// current one is replaced (see `tick::replace_stale`).
pub fn template_digest(m: &Managed) -> String {
    use sha2::{Digest, Sha256};
    let what = serde_json::to_vec(&(&m.template, m.port, &m.per_resource)).unwrap_or_default();
    Sha256::digest(&what)
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a backend started from `digest` runs its pool's `current`
/// template. Rows from before digests were recorded count as current: an
/// upgrade of lbd restarts nothing.
pub fn is_current(digest: Option<&str>, current: &str) -> bool {
    digest.is_none_or(|d| d == current)
}

/// The ready backends to stop: idle (nothing open on any node) for
/// `idle_timeout`, longest idle first, keeping `min` of the target's live
/// backends.
pub fn idle_victims(m: &Managed, ready: &[Activity], starting: u32, now_ms: i64) -> Vec<i64> {
    let limit = u64::from(m.idle_timeout_s) * 1000;
    let mut idle: Vec<(u64, i64)> = ready
        .iter()
        .filter_map(|a| {
            a.idle_for(now_ms)
                .filter(|d| *d >= limit)
                .map(|d| (d, a.id))
        })
        .collect();
    idle.sort_unstable_by(|a, b| b.cmp(a));
    let live = ready.len() as u32 + starting;
    let may_stop = live.saturating_sub(m.min) as usize;
    idle.into_iter().take(may_stop).map(|(_, id)| id).collect()
}

/// A backend's address: from the top of the subnet down (nodes take theirs
/// from the bottom up), never the gateway, the broadcast or a taken one.
pub fn backend_address(subnet: &ipnet::Ipv4Net, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let gw = crate::model::allocator::gateway(subnet);
    subnet
        .hosts()
        .rev()
        .find(|a| *a != gw && *a != subnet.broadcast() && !taken.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::managed::{BackendTemplate, ProcessTemplate, QueueLimits, ReadyCheck};
    use crate::model::wake::ManagedTarget;

    fn managed(min: u32, max: u32) -> Managed {
        Managed {
            template: BackendTemplate::Process(ProcessTemplate::default()),
            port: 8000,
            min,
            max,
            target_in_flight: 10,
            idle_timeout_s: 5,
            start_timeout_s: 30,
            ready: ReadyCheck::Tcp,
            queue: QueueLimits::default(),
            per_resource: None,
        }
    }

    fn demand(in_flight: u32) -> WakeDemand {
        WakeDemand {
            target: ManagedTarget {
                pool: "default".into(),
                resource: None,
            },
            queued: 1,
            in_flight,
            ready: 0,
        }
    }

    #[test]
    fn a_wake_starts_the_first_backend_and_more_only_under_load() {
        let m = managed(0, 2);
        let none = Counts::default();
        let one_ready = Counts {
            ready: 1,
            starting: 0,
        };
        let one_starting = Counts {
            ready: 0,
            starting: 1,
        };
        assert!(wake_starts_one(&m, &demand(1), none));
        // One is already on its way: a repeated wake does not start a duplicate.
        assert!(!wake_starts_one(&m, &demand(3), one_starting));
        assert!(!wake_starts_one(&m, &demand(10), one_ready));
        assert!(wake_starts_one(&m, &demand(11), one_ready));
        let two = Counts {
            ready: 2,
            starting: 0,
        };
        assert!(!wake_starts_one(&m, &demand(500), two), "max is 2");
    }

    #[test]
    fn min_is_topped_up() {
        assert_eq!(missing_for_min(&managed(2, 3), Counts::default()), 2);
        let c = Counts {
            ready: 1,
            starting: 1,
        };
        assert_eq!(missing_for_min(&managed(2, 3), c), 0);
        assert_eq!(missing_for_min(&managed(0, 3), Counts::default()), 0);
    }

    fn act(id: i64, open: u64, idle_ms: Option<u64>) -> Activity {
        Activity {
            id,
            ready_at_ms: 0,
            open_connections: open,
            idle_ms,
            complete: true,
        }
    }

    #[test]
    fn only_backends_idle_for_the_timeout_with_nothing_open_stop() {
        let m = managed(0, 4);
        let now = 100_000;
        let ready = [
            act(1, 0, Some(6_000)),
            act(2, 0, Some(4_000)),
            // An open connection (a long download) keeps it, whatever idle_ms says.
            act(3, 1, Some(60_000)),
            // Never used: idle since it became ready.
            act(4, 0, None),
        ];
        let mut v = idle_victims(&m, &ready, 0, now);
        v.sort_unstable();
        assert_eq!(v, vec![1, 4]);
        // A node that did not answer may be using it.
        let unknown = Activity {
            complete: false,
            ..act(5, 0, Some(60_000))
        };
        assert!(idle_victims(&m, &[unknown], 0, now).is_empty());
    }

    #[test]
    fn idle_stops_keep_min() {
        let m = managed(1, 4);
        let ready = [act(1, 0, Some(9_000)), act(2, 0, Some(7_000))];
        assert_eq!(idle_victims(&m, &ready, 0, 50_000), vec![1]);
        assert!(idle_victims(&m, &ready[..1], 0, 50_000).is_empty());
    }

    fn per_resource(listed: bool, max_resources: u32) -> Managed {
        let mut m = managed(0, 2);
        let mut template = ProcessTemplate::default();
        template.env.insert("MODE".into(), "base".into());
        template.env.insert("KEEP".into(), "yes".into());
        m.template = BackendTemplate::Process(template);
        let r1 = crate::model::managed::ResourceSpec {
            env: [("MODE".to_string(), "r1-{resource}".to_string())].into(),
            require_groups: vec![],
        };
        m.per_resource = Some(crate::model::managed::PerResource {
            path_segment: 2,
            groups_segment: None,
            resources: listed.then(|| [("r1".to_string(), r1)].into()),
            max_resources,
        });
        m
    }

    fn target(resource: Option<&str>) -> ManagedTarget {
        ManagedTarget {
            pool: "default".into(),
            resource: resource.map(String::from),
        }
    }

    #[test]
    fn a_resource_env_goes_over_the_templates() {
        let m = per_resource(true, 10);
        let BackendTemplate::Process(p) = template_for(&m, Some("r1")) else {
            panic!("a process")
        };
        assert_eq!(p.env["MODE"], "r1-{resource}");
        assert_eq!(p.env["KEEP"], "yes");
        let BackendTemplate::Process(p) = template_for(&m, None) else {
            panic!("a process")
        };
        assert_eq!(p.env["MODE"], "base");
    }

    #[test]
    fn targets_must_fit_the_pool_and_max_resources() {
        let none = HashSet::new();
        let plain = managed(0, 2);
        assert_eq!(check_target(&plain, &target(None), &none), Ok(()));
        assert_eq!(
            check_target(&plain, &target(Some("r1")), &none),
            Err(TargetRefusal::NotRouted)
        );
        let listed = per_resource(true, 10);
        assert_eq!(check_target(&listed, &target(Some("r1")), &none), Ok(()));
        for bad in [None, Some("r2"), Some("R1")] {
            assert_eq!(
                check_target(&listed, &target(bad), &none),
                Err(TargetRefusal::NotRouted)
            );
        }
        let open = per_resource(false, 2);
        let live: HashSet<&str> = ["a", "b"].into();
        assert_eq!(check_target(&open, &target(Some("a")), &live), Ok(()));
        assert_eq!(
            check_target(&open, &target(Some("c")), &live),
            Err(TargetRefusal::TooManyResources(2))
        );
    }

    #[test]
    fn backend_addresses_come_from_the_top_and_skip_taken_ones() {
        let subnet: ipnet::Ipv4Net = "127.9.0.0/29".parse().unwrap();
        let mut taken = HashSet::new();
        let a = backend_address(&subnet, &taken).unwrap();
        taken.insert(a);
        let b = backend_address(&subnet, &taken).unwrap();
        assert!(a > b);
        assert_ne!(a, subnet.broadcast());
        assert_ne!(a, crate::model::allocator::gateway(&subnet));
    }
}
