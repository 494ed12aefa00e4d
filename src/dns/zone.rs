//! lbd's own authoritative DNS server (hickory-server): one in-memory zone with
//! an SOA, served on UDP and TCP. One zone holds every project because the
//! catalog takes no new zones once serving; records change through the shared
//! zone handle.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::rr::rdata::{A, NS, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

use super::{BoxFuture, DnsDriver, DnsError};

/// The zone and its record handle.
pub struct EmbeddedDns {
    origin: Name,
    zone: Arc<InMemoryZoneHandler>,
    ttl: u32,
    serial: AtomicU32,
}

impl EmbeddedDns {
    /// A zone named `zone` (e.g. `lbaas.internal`) whose A records live `ttl` seconds.
    pub fn new(zone: &str, ttl: u32) -> Result<Self, DnsError> {
        let origin = Name::from_str(&format!("{}.", zone.trim_end_matches('.'))).map_err(|e| {
            DnsError::InvalidName {
                name: zone.to_string(),
                reason: e.to_string(),
            }
        })?;
        let serial = 1;
        let mut records = BTreeMap::new();
        let ns_name = origin
            .prepend_label("ns")
            .map_err(|e| DnsError::InvalidName {
                name: zone.into(),
                reason: e.to_string(),
            })?;
        let soa = soa_record(&origin, &ns_name, serial, ttl);
        let mut soa_set = RecordSet::new(origin.clone(), RecordType::SOA, serial);
        soa_set.insert(soa, serial);
        records.insert(
            RrKey::new(LowerName::new(&origin), RecordType::SOA),
            soa_set,
        );
        let mut ns_set = RecordSet::new(origin.clone(), RecordType::NS, serial);
        ns_set.insert(
            Record::from_rdata(origin.clone(), 3600, RData::NS(NS(ns_name))),
            serial,
        );
        records.insert(RrKey::new(LowerName::new(&origin), RecordType::NS), ns_set);
        let handler =
            InMemoryZoneHandler::new(origin.clone(), records, ZoneType::Primary, AxfrPolicy::Deny)
                .map_err(DnsError::Server)?;
        Ok(EmbeddedDns {
            origin,
            zone: Arc::new(handler),
            ttl,
            serial: AtomicU32::new(serial),
        })
    }

    /// Serves the zone on an already-bound UDP socket and TCP listener (same
    /// port) until `shutdown` resolves.
    pub async fn serve(
        &self,
        udp: UdpSocket,
        tcp: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DnsError> {
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = self.zone.clone();
        catalog.upsert(LowerName::new(&self.origin), vec![handler]);
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        shutdown.await;
        server
            .shutdown_gracefully()
            .await
            .map_err(|e| DnsError::Server(e.to_string()))
    }

    fn fqdn(&self, name: &str) -> Result<Name, DnsError> {
        let relative = Name::from_str(name).map_err(|e| DnsError::InvalidName {
            name: name.into(),
            reason: e.to_string(),
        })?;
        relative
            .append_domain(&self.origin)
            .map_err(|e| DnsError::InvalidName {
                name: name.into(),
                reason: e.to_string(),
            })
    }

    /// The addresses `name` (zone-relative) answers now, sorted.
    pub async fn a_records(&self, name: &str) -> Vec<Ipv4Addr> {
        let Ok(fqdn) = self.fqdn(name) else {
            return Vec::new();
        };
        let key = RrKey::new(LowerName::new(&fqdn), RecordType::A);
        let mut addrs: Vec<Ipv4Addr> = self
            .zone
            .records()
            .await
            .get(&key)
            .map(|set| {
                set.records_without_rrsigs()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        addrs.sort_unstable();
        addrs
    }

    /// Bumps the SOA serial so secondaries (and humans with dig) see a change.
    async fn bump_serial(&self) -> u32 {
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        let ns_name = self.origin.prepend_label("ns").expect("validated at start");
        self.zone
            .upsert(soa_record(&self.origin, &ns_name, serial, self.ttl), serial)
            .await;
        serial
    }
}

fn soa_record(origin: &Name, ns: &Name, serial: u32, ttl: u32) -> Record {
    let hostmaster = origin
        .prepend_label("hostmaster")
        .expect("a short label always fits");
    // The SOA minimum is the negative-caching TTL: keep it as short as the A
    // records, so a deleted name is not remembered for long.
    let soa = SOA::new(ns.clone(), hostmaster, serial, 3600, 600, 86400, ttl);
    Record::from_rdata(origin.clone(), ttl, RData::SOA(soa))
}

impl DnsDriver for EmbeddedDns {
    fn set_a_records<'a>(
        &'a self,
        name: &'a str,
        addrs: &'a [Ipv4Addr],
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let fqdn = self.fqdn(name)?;
            let key = RrKey::new(LowerName::new(&fqdn), RecordType::A);
            let mut wanted: Vec<Ipv4Addr> = addrs.to_vec();
            wanted.sort_unstable();
            wanted.dedup();
            if self.a_records(name).await == wanted {
                return Ok(());
            }
            let serial = self.bump_serial().await;
            let mut records = self.zone.records_mut().await;
            if wanted.is_empty() {
                records.remove(&key);
            } else {
                let mut set = RecordSet::with_ttl(fqdn.clone(), RecordType::A, self.ttl);
                for addr in &wanted {
                    set.insert(
                        Record::from_rdata(fqdn.clone(), self.ttl, RData::A(A(*addr))),
                        serial,
                    );
                }
                records.insert(key, Arc::new(set));
            }
            Ok(())
        })
    }

    fn names(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            let records = self.zone.records().await;
            records
                .keys()
                .filter(|k| k.record_type == RecordType::A)
                .filter_map(|k| {
                    let full = Name::from(k.name.clone()).to_ascii();
                    let suffix = format!(".{}", self.origin.to_ascii());
                    full.strip_suffix(&suffix).map(str::to_string)
                })
                .collect()
        })
    }
}
