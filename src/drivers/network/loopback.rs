//! The embedded default network: every project is a slice of 127.0.0.0/8 and
//! every node its own 127.x.y.z. Linux answers the whole 127/8 on `lo`, so no
//! privileges and no setup are needed, and nothing can leak off the machine.
//!
//! 127/8 is shared by everything on the host, other lbds included, so each
//! project's range is claimed on the host (see `claims.rs`) while the
//! project exists, and a new range is also refused while a socket is bound
//! in it (the nodes of an lbd that is down keep serving without its locks).

use ipnet::Ipv4Net;

use super::claims::{SocketCheck, SubnetClaims};
use super::{NetworkDriver, NetworkError};
use crate::model::ProjectId;

pub struct LoopbackNetwork {
    pool: Ipv4Net,
    prefix: u8,
    claims: SubnetClaims,
}

/// Where 127.0.0.1 and friends live; projects stay out of it.
const RESERVED: &str = "127.0.0.0/16";

impl LoopbackNetwork {
    /// `pool` must lie inside 127.0.0.0/8; each project gets a `/prefix` of
    /// it, claimed in `claims`.
    pub fn new(pool: Ipv4Net, prefix: u8, claims: SubnetClaims) -> Result<Self, NetworkError> {
        let lo: Ipv4Net = "127.0.0.0/8".parse().expect("constant");
        if !lo.contains(&pool) {
            return Err(NetworkError::Unusable {
                subnet: pool,
                reason: "the loopback pool must be inside 127.0.0.0/8".into(),
            });
        }
        if prefix < pool.prefix_len() || prefix > 30 {
            return Err(NetworkError::Unusable {
                subnet: pool,
                reason: format!(
                    "project prefix /{prefix} must be between /{} and /30",
                    pool.prefix_len()
                ),
            });
        }
        Ok(LoopbackNetwork {
            pool,
            prefix,
            claims,
        })
    }
}

impl NetworkDriver for LoopbackNetwork {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn pool(&self) -> (Ipv4Net, u8) {
        (self.pool, self.prefix)
    }

    fn check_subnet(&self, subnet: &Ipv4Net) -> Result<(), NetworkError> {
        let lo: Ipv4Net = "127.0.0.0/8".parse().expect("constant");
        if !lo.contains(subnet) {
            return Err(NetworkError::Unusable {
                subnet: *subnet,
                reason: "the loopback network driver only serves subnets inside 127.0.0.0/8 (use --network netns for others)".into(),
            });
        }
        if self
            .reserved()
            .iter()
            .any(|r| crate::model::allocator::overlaps(r, subnet))
        {
            return Err(NetworkError::Unusable {
                subnet: *subnet,
                reason: format!("overlaps {RESERVED}, kept for the host"),
            });
        }
        Ok(())
    }

    fn reserved(&self) -> Vec<Ipv4Net> {
        vec![RESERVED.parse().expect("constant")]
    }

    fn claim_subnet(&self, subnet: &Ipv4Net) -> Result<(), NetworkError> {
        self.claims.claim_new(*subnet, SocketCheck::Refuse)
    }

    fn claim_free_subnet(
        &self,
        candidates: &mut dyn Iterator<Item = Ipv4Net>,
    ) -> Result<Option<Ipv4Net>, NetworkError> {
        self.claims.claim_first(candidates, SocketCheck::Refuse)
    }

    fn reclaim_subnet(&self, subnet: &Ipv4Net) -> Result<(), NetworkError> {
        self.claims.reclaim(*subnet)
    }

    fn release_subnet(&self, subnet: &Ipv4Net) {
        self.claims.release(subnet)
    }

    fn ensure_project_network(
        &self,
        _project_id: ProjectId,
        subnet: &Ipv4Net,
    ) -> Result<(), NetworkError> {
        self.claims.reclaim(*subnet)
    }

    fn remove_project_network(&self, _project_id: ProjectId) -> Result<(), NetworkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(tag: &str) -> (SubnetClaims, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("lbaas-loopback-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (SubnetClaims::open(Some(&dir)).unwrap(), dir)
    }

    #[test]
    fn refuses_subnets_outside_loopback() {
        let (c, dir) = claims("subnets");
        let n = LoopbackNetwork::new("127.0.0.0/8".parse().unwrap(), 16, c).unwrap();
        assert!(n.check_subnet(&"10.0.0.0/24".parse().unwrap()).is_err());
        assert!(
            n.check_subnet(&"127.0.5.0/24".parse().unwrap()).is_err(),
            "reserved range"
        );
        n.check_subnet(&"127.9.0.0/24".parse().unwrap()).unwrap();
        let c = || SubnetClaims::open(Some(&dir)).unwrap();
        assert!(LoopbackNetwork::new("10.0.0.0/8".parse().unwrap(), 16, c()).is_err());
        assert!(LoopbackNetwork::new("127.5.0.0/16".parse().unwrap(), 8, c()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_drivers_on_one_lock_dir_allocate_apart_and_stored_projects_keep_theirs() {
        let (ca, dir) = claims("two");
        let pool: Ipv4Net = "127.100.0.0/16".parse().unwrap();
        let a = LoopbackNetwork::new(pool, 24, ca).unwrap();
        let b = LoopbackNetwork::new(pool, 24, SubnetClaims::open(Some(&dir)).unwrap()).unwrap();
        let first = a
            .claim_free_subnet(&mut pool.subnets(24).unwrap())
            .unwrap()
            .unwrap();
        let second = b
            .claim_free_subnet(&mut pool.subnets(24).unwrap())
            .unwrap()
            .unwrap();
        assert_ne!(first, second);
        let err = b.claim_subnet(&first).unwrap_err();
        assert!(matches!(err, NetworkError::InUse { .. }), "{err}");
        // A's reconciler keeps holding it; B's finds it held.
        a.ensure_project_network(ProjectId(1), &first).unwrap();
        assert!(b.ensure_project_network(ProjectId(1), &first).is_err());
        a.release_subnet(&first);
        b.claim_subnet(&first).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
