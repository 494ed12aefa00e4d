//! Address arithmetic: carving project subnets out of a pool and node
//! addresses out of a subnet. Pure functions, so they are tested exhaustively.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Whether two networks share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first `/prefix` inside `pool` that overlaps nothing in `taken`.
pub fn allocate_subnet(pool: Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    free_subnets(pool, prefix, taken).next()
}

/// Every `/prefix` inside `pool` that overlaps nothing in `taken`, lowest
/// first (the network driver then skips those other lbds hold).
pub fn free_subnets<'a>(
    pool: Ipv4Net,
    prefix: u8,
    taken: &'a [Ipv4Net],
) -> impl Iterator<Item = Ipv4Net> + 'a {
    pool.subnets(prefix)
        .into_iter()
        .flatten()
        .filter(move |candidate| !taken.iter().any(|t| overlaps(candidate, t)))
}

/// The subnet's gateway: its first host address. Nodes never get it, so a
/// driver can give it to the host side of the project network.
pub fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The lowest address of `subnet` usable for a node that is not in `taken`:
/// not the network, gateway or broadcast address.
pub fn allocate_node_address(subnet: &Ipv4Net, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let gw = gateway(subnet);
    subnet
        .hosts()
        .find(|a| *a != gw && *a != subnet.broadcast() && !taken.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_skip_taken_and_overlapping() {
        let pool = net("127.0.0.0/8");
        let taken = [
            net("127.0.0.0/16"),
            net("127.1.0.0/16"),
            net("127.2.5.0/24"),
        ];
        assert_eq!(allocate_subnet(pool, 16, &taken), Some(net("127.3.0.0/16")));
        assert_eq!(allocate_subnet(pool, 16, &[]), Some(net("127.0.0.0/16")));
        let free: Vec<_> = free_subnets(net("127.0.0.0/14"), 16, &taken).collect();
        assert_eq!(free, vec![net("127.3.0.0/16")]);
    }

    #[test]
    fn pool_exhaustion_is_none() {
        let pool = net("10.0.0.0/23");
        let taken = [net("10.0.0.0/24"), net("10.0.1.0/24")];
        assert_eq!(allocate_subnet(pool, 24, &taken), None);
        assert_eq!(
            allocate_subnet(pool, 22, &[]),
            None,
            "prefix shorter than the pool"
        );
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(!overlaps(&net("10.1.0.0/16"), &net("10.2.0.0/16")));
    }

    #[test]
    fn node_addresses_skip_gateway_and_taken() {
        let s = net("127.1.0.0/24");
        assert_eq!(gateway(&s), Ipv4Addr::new(127, 1, 0, 1));
        let mut taken = HashSet::new();
        assert_eq!(
            allocate_node_address(&s, &taken),
            Some(Ipv4Addr::new(127, 1, 0, 2))
        );
        taken.insert(Ipv4Addr::new(127, 1, 0, 2));
        assert_eq!(
            allocate_node_address(&s, &taken),
            Some(Ipv4Addr::new(127, 1, 0, 3))
        );
        // A /30 holds exactly one node; then it is full.
        let tiny = net("10.0.0.0/30");
        let first = allocate_node_address(&tiny, &HashSet::new()).unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(allocate_node_address(&tiny, &HashSet::from([first])), None);
    }
}
