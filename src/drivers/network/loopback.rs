//! The embedded default network: every project is a slice of 127.0.0.0/8 and
//! every node its own 127.x.y.z. Linux answers the whole 127/8 on `lo`, so no
//! privileges and no setup are needed, and nothing can leak off the machine.

use ipnet::Ipv4Net;

use super::{NetworkDriver, NetworkError};
use crate::model::ProjectId;

pub struct LoopbackNetwork {
    pool: Ipv4Net,
    prefix: u8,
}

/// Where 127.0.0.1 and friends live; projects stay out of it.
const RESERVED: &str = "127.0.0.0/16";

impl LoopbackNetwork {
    /// `pool` must lie inside 127.0.0.0/8; each project gets a `/prefix` of it.
    pub fn new(pool: Ipv4Net, prefix: u8) -> Result<Self, NetworkError> {
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
        Ok(LoopbackNetwork { pool, prefix })
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

    fn ensure_project_network(
        &self,
        _project_id: ProjectId,
        _subnet: &Ipv4Net,
    ) -> Result<(), NetworkError> {
        Ok(())
    }

    fn remove_project_network(&self, _project_id: ProjectId) -> Result<(), NetworkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_subnets_outside_loopback() {
        let n = LoopbackNetwork::new("127.0.0.0/8".parse().unwrap(), 16).unwrap();
        assert!(n.check_subnet(&"10.0.0.0/24".parse().unwrap()).is_err());
        assert!(
            n.check_subnet(&"127.0.5.0/24".parse().unwrap()).is_err(),
            "reserved range"
        );
        n.check_subnet(&"127.9.0.0/24".parse().unwrap()).unwrap();
        assert!(LoopbackNetwork::new("10.0.0.0/8".parse().unwrap(), 16).is_err());
        assert!(LoopbackNetwork::new("127.5.0.0/16".parse().unwrap(), 8).is_err());
    }
}
