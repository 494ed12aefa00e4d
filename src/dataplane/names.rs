//! Host-name backends (`NodeConfig.named_backends`): the node resolves
//! each name (hickory-resolver, async, on the node's runtime) with the
//! system's resolver or lbd's `--resolver`, makes every A/AAAA answer a
//! member of the pool that lists the name (the default pool, or a named
//! pool's `named_members`), and resolves it again when the answer's TTL
//! runs out (clamped to 1..300 s). A changed answer re-prepares the config
//! in force, as a `PUT /managed` does: requests in flight keep theirs, so
//! members come and go without a connection dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::sync::watch;

use crate::api::backend_guard::is_host_address;
use crate::model::node::NameStatus;
use crate::model::{BackendMember, HostPort, MemberState, NameGuard, NamedMember, NodeConfig};

/// The shortest and longest time between two resolutions of a name.
pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// How long one resolution may take (it is retried at `MIN_TTL` after).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What one name resolved to last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub addresses: Vec<SocketAddr>,
    pub error: Option<String>,
    pub next: Duration,
    /// The DNS server failed (no answer, SERVFAIL), as opposed to saying
    /// the name has no addresses: the last addresses are kept meanwhile.
    pub transient: bool,
}

/// A running resolution loop; dropping `stop` ends it.
struct Entry {
    answer: Answer,
    _stop: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// The DNS server the loops use (`None`: the system's); a change
    /// restarts them all.
    server: Option<SocketAddr>,
    entries: BTreeMap<HostPort, Entry>,
    /// What lbd refuses as a backend, applied to every answer.
    guard: Option<NameGuard>,
}

impl State {
    /// The addresses of `name`'s answer that may be members, and why the
    /// others may not.
    fn usable(&self, name: &HostPort) -> (Vec<SocketAddr>, Vec<String>) {
        let Some(entry) = self.entries.get(name) else {
            return Default::default();
        };
        let (mut addresses, mut refused) = (Vec::new(), Vec::new());
        for a in &entry.answer.addresses {
            match self
                .guard
                .as_ref()
                .and_then(|g| g.refusal(*a, is_host_address))
            {
                Some(why) => refused.push(why),
                None => addresses.push(*a),
            }
        }
        (addresses, refused)
    }
}

/// The node's host names and their answers.
#[derive(Default)]
pub struct Names {
    state: Mutex<State>,
}

/// Called with the node when an answer changed (it re-prepares the config).
pub type OnChange = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

impl Names {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the loops those of `config`: new names are resolved once
    /// here (so a new node serves them at once), then again at their TTL;
    /// names no longer listed stop. `on_change` runs after a later answer
    /// differs from the one before.
    pub async fn sync(self: &Arc<Self>, config: &NodeConfig, on_change: OnChange) {
        let mut wanted: Vec<HostPort> = config.host_names().map(|m| m.address.clone()).collect();
        wanted.sort();
        wanted.dedup();
        let new: Vec<HostPort> = {
            let mut state = self.lock();
            if state.server != config.resolver {
                state.entries.clear();
                state.server = config.resolver;
            }
            state.guard = config.name_guard.clone();
            state.entries.retain(|name, _| wanted.contains(name));
            wanted
                .iter()
                .filter(|n| !state.entries.contains_key(*n))
                .cloned()
                .collect()
        };
        if new.is_empty() {
            return;
        }
        let resolver = match resolver(config.resolver) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                // No resolver at all: every new name is down with the reason.
                let answer = Answer {
                    error: Some(e),
                    next: MAX_TTL,
                    ..Answer::default()
                };
                let mut state = self.lock();
                for name in new {
                    let (stop, _) = watch::channel(false);
                    state.entries.insert(
                        name,
                        Entry {
                            answer: answer.clone(),
                            _stop: stop,
                        },
                    );
                }
                return;
            }
        };
        let first = futures_util::future::join_all(new.iter().map(|n| resolve(&resolver, n))).await;
        let mut state = self.lock();
        for (name, answer) in new.into_iter().zip(first) {
            let (stop, stop_rx) = watch::channel(false);
            let next = answer.next;
            state.entries.insert(
                name.clone(),
                Entry {
                    answer,
                    _stop: stop,
                },
            );
            tokio::spawn(resolve_loop(
                Arc::downgrade(self),
                name,
                resolver.clone(),
                next,
                stop_rx,
                on_change.clone(),
            ));
        }
    }

    /// `config` with every resolved address of its names added to the
    /// members of the pool that lists the name (an address listed already,
    /// or by an earlier name, once).
    pub fn merge(&self, mut config: NodeConfig) -> NodeConfig {
        if config.host_names().next().is_none() {
            return config;
        }
        let state = self.lock();
        // A name that points back at this node's own listener would loop.
        let listen = config.listen;
        let answers = |m: &NamedMember| -> Vec<SocketAddr> {
            let (usable, _) = state.usable(&m.address);
            usable.into_iter().filter(|a| *a != listen).collect()
        };
        let resolved = |names: &[NamedMember]| -> Vec<(NamedMember, Vec<SocketAddr>)> {
            names.iter().map(|m| (m.clone(), answers(m))).collect()
        };
        merge_answers(&mut config.backends, &resolved(&config.named_backends));
        for pool in config.policy.pools.values_mut() {
            let named = resolved(&pool.named_members);
            merge_answers(&mut pool.members, &named);
        }
        config
    }

    /// What each name resolved to, for `GET /status`.
    pub fn status(&self) -> Vec<NameStatus> {
        let state = self.lock();
        state
            .entries
            .iter()
            .map(|(name, e)| {
                let (addresses, refused) = state.usable(name);
                let refused = (!refused.is_empty())
                    .then(|| format!("not used: {} (refused as a backend)", refused.join("; ")));
                let error = match (e.answer.error.clone(), refused) {
                    (Some(e), Some(r)) => Some(format!("{e}; {r}")),
                    (e, r) => e.or(r),
                };
                NameStatus {
                    name: name.to_string(),
                    state: if addresses.is_empty() {
                        MemberState::Down
                    } else {
                        MemberState::Up
                    },
                    addresses,
                    error,
                    next_resolve_s: e.answer.next.as_secs() as u32,
                }
            })
            .collect()
    }

    /// Stores a new answer; true when the members change. While the DNS
    /// server fails, the name keeps the addresses of its last answer (a
    /// DNS outage is not a backend outage), with the error shown.
    fn store(&self, name: &HostPort, mut answer: Answer) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(name) else {
            return false;
        };
        if answer.transient && answer.addresses.is_empty() {
            answer.addresses = entry.answer.addresses.clone();
        }
        let changed = entry.answer.addresses != answer.addresses;
        entry.answer = answer;
        changed
    }
}

/// Adds each name's addresses as members of its weight, skipping any
/// address that is a member already.
fn merge_answers(backends: &mut Vec<BackendMember>, named: &[(NamedMember, Vec<SocketAddr>)]) {
    for (member, addresses) in named {
        for address in addresses {
            if !backends.iter().any(|b| b.address == *address) {
                backends.push(BackendMember {
                    address: *address,
                    weight: member.weight,
                });
            }
        }
    }
}

/// Resolves `name` again whenever its answer expires, until `stop` ends.
async fn resolve_loop(
    names: Weak<Names>,
    name: HostPort,
    resolver: Arc<TokioResolver>,
    mut next: Duration,
    mut stop: watch::Receiver<bool>,
    on_change: OnChange,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            // The sender went: the name is no longer listed.
            _ = stop.changed() => return,
        }
        let answer = resolve(&resolver, &name).await;
        next = answer.next;
        let Some(names) = names.upgrade() else { return };
        if stop.has_changed().is_err() {
            return;
        }
        if names.store(&name, answer) {
            tracing::info!(name = %name, "named backend changed");
            on_change().await;
        }
    }
}

/// One resolution. An error keeps no members when the name has no
/// records (NXDOMAIN, no A/AAAA), and is retried after `MIN_TTL`.
async fn resolve(resolver: &TokioResolver, name: &HostPort) -> Answer {
    let started = Instant::now();
    let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(name.host())).await;
    match lookup {
        Ok(Ok(lookup)) => {
            let mut addresses: Vec<SocketAddr> = lookup
                .iter()
                .filter(|ip| usable(*ip))
                .map(|ip| SocketAddr::new(ip, name.port()))
                .collect();
            addresses.sort_unstable();
            addresses.dedup();
            let ttl = lookup.valid_until().saturating_duration_since(started);
            let error = addresses
                .is_empty()
                .then(|| format!("{}: no usable A/AAAA records", name.host()));
            Answer {
                addresses,
                error,
                next: clamp_ttl(ttl),
                transient: false,
            }
        }
        Ok(Err(e)) => Answer {
            addresses: Vec::new(),
            error: Some(format!("{} does not resolve: {e}", name.host())),
            next: MIN_TTL,
            transient: !says_no_addresses(&e),
        },
        Err(_) => Answer {
            addresses: Vec::new(),
            error: Some(format!(
                "{} does not resolve: no answer within {} s",
                name.host(),
                LOOKUP_TIMEOUT.as_secs()
            )),
            next: MIN_TTL,
            transient: true,
        },
    }
}

/// Whether the DNS server said the name has no addresses (NXDOMAIN, or no
/// A/AAAA records: NOERROR without answers), rather than failing (SERVFAIL,
/// REFUSED, no answer) while it may still have them.
fn says_no_addresses(e: &hickory_resolver::net::NetError) -> bool {
    use hickory_resolver::net::{DnsError, NetError, NoRecords};
    use hickory_resolver::proto::op::ResponseCode;
    matches!(
        e,
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }))
    )
}

/// An answer a node may connect to: not unspecified, multicast or
/// link-local (cloud metadata services live there; lbd refuses such
/// addresses as entities too).
fn usable(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    !(ip.is_unspecified() || ip.is_multicast() || link_local)
}

pub fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.clamp(MIN_TTL, MAX_TTL)
}

/// A resolver on `server`, or on the system's configuration. No cache:
/// each resolution asks, so a change is seen at the TTL.
fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("no DNS configuration (/etc/resolv.conf): {e}"))?,
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = LOOKUP_TIMEOUT;
    opts.attempts = 1;
    builder.build().map_err(|e| format!("resolver: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(s: &str, weight: u32) -> NamedMember {
        NamedMember {
            address: s.parse().unwrap(),
            weight,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_become_members_once_with_their_weight() {
        let mut backends = vec![BackendMember {
            address: addr("127.0.0.1:80"),
            weight: 1,
        }];
        merge_answers(
            &mut backends,
            &[
                (
                    named("a.test:80", 2),
                    vec![addr("127.0.0.1:80"), addr("127.0.0.2:80")],
                ),
                (named("b.test:80", 3), vec![addr("127.0.0.2:80")]),
                (named("c.test:80", 1), vec![]),
            ],
        );
        let got: Vec<(String, u32)> = backends
            .iter()
            .map(|b| (b.address.to_string(), b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:80".to_string(), 1),
                ("127.0.0.2:80".to_string(), 2)
            ]
        );
    }

    #[test]
    fn ttls_are_clamped_and_odd_answers_dropped() {
        assert_eq!(clamp_ttl(Duration::ZERO), MIN_TTL);
        assert_eq!(clamp_ttl(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(clamp_ttl(Duration::from_secs(86_400)), MAX_TTL);
        for bad in [
            "0.0.0.0",
            "169.254.169.254",
            "fe80::1",
            "224.0.0.1",
            "::ffff:169.254.1.1",
        ] {
            assert!(!usable(bad.parse().unwrap()), "{bad}");
        }
        for ok in ["127.0.0.1", "10.0.0.1", "::1"] {
            assert!(usable(ok.parse().unwrap()), "{ok}");
        }
    }

    #[test]
    fn a_failing_dns_server_keeps_the_last_addresses_no_records_clear_them() {
        let names = Names::default();
        let name: HostPort = "app.test:80".parse().unwrap();
        let (stop, _) = watch::channel(false);
        let resolved = Answer {
            addresses: vec![addr("127.0.0.1:80")],
            next: MIN_TTL,
            ..Answer::default()
        };
        names.lock().entries.insert(
            name.clone(),
            Entry {
                answer: resolved.clone(),
                _stop: stop,
            },
        );
        let failed = |transient| Answer {
            error: Some("app.test does not resolve: ...".into()),
            next: MIN_TTL,
            transient,
            ..Answer::default()
        };
        assert!(!names.store(&name, failed(true)), "kept: no change");
        let s = &names.status()[0];
        assert_eq!(s.addresses, [addr("127.0.0.1:80")]);
        assert!(s.error.is_some());
        assert!(names.store(&name, failed(false)), "NXDOMAIN: members go");
        assert_eq!(names.status()[0].state, MemberState::Down);
        assert!(names.store(&name, resolved));
        assert_eq!(names.status()[0].error, None);
    }

    #[tokio::test]
    async fn localhost_resolves_and_a_missing_name_is_down_with_the_reason() {
        let names = Arc::new(Names::default());
        let mut config: NodeConfig = serde_json::from_value(serde_json::json!({
            "version": 1, "traffic_type": "tcp", "listen": "127.0.0.1:1",
            "algorithm": "round_robin", "backends": [],
            "named_backends": [{"address": "localhost:7", "weight": 1},
                               {"address": "nothing.invalid:7", "weight": 1}],
            "health_check": {"protocol": "TCP", "port": 0, "request-path": "/",
                "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}}
        }))
        .unwrap();
        let noop: OnChange = Arc::new(|| Box::pin(async {}));
        names.sync(&config, noop.clone()).await;
        let status = names.status();
        let localhost = status.iter().find(|s| s.name == "localhost:7").unwrap();
        assert_eq!(localhost.state, MemberState::Up, "{status:?}");
        assert!(localhost.addresses.contains(&addr("127.0.0.1:7")));
        let missing = status
            .iter()
            .find(|s| s.name == "nothing.invalid:7")
            .unwrap();
        assert_eq!(missing.state, MemberState::Down);
        assert!(missing.addresses.is_empty());
        assert!(
            missing
                .error
                .as_deref()
                .unwrap()
                .contains("nothing.invalid does not resolve"),
            "{missing:?}"
        );
        let merged = names.merge(config.clone());
        assert!(merged
            .backends
            .iter()
            .any(|b| b.address == addr("127.0.0.1:7")));
        // A name no longer listed is forgotten.
        config.named_backends.truncate(1);
        names.sync(&config, noop).await;
        assert_eq!(names.status().len(), 1);
    }
}
