//! The sticky routing flags of `instance create` and `instance update`:
//! they set `backend.sticky` (lbd validates the values, with its codes).

use lbaas::model::sticky::{NoSticky, StickyRule, StickySpec};

/// Sticky routing of the default pool: a signed cookie or a consistent hash.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct StickyArgs {
    /// Pin each client to one backend with a signed cookie of this name.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["sticky_hash", "no_sticky"])]
    pub sticky_cookie: Option<String>,
    /// Lifetime of the sticky cookie in seconds [default: 3600].
    #[arg(long, value_name = "SECONDS", requires = "sticky_cookie")]
    pub sticky_ttl: Option<i64>,
    /// Pin by consistent hash of client_ip or header:<Name>.
    #[arg(long, value_name = "KEY", conflicts_with = "no_sticky")]
    pub sticky_hash: Option<String>,
    /// No sticky routing (on update: removes it).
    #[arg(long)]
    pub no_sticky: bool,
}

impl StickyArgs {
    /// `backend.sticky`; `None` when no sticky flag was given.
    pub fn spec(&self) -> Option<StickySpec> {
        let StickyArgs {
            sticky_cookie,
            sticky_ttl,
            sticky_hash,
            no_sticky,
        } = self;
        if *no_sticky {
            return Some(StickySpec::Off(NoSticky::None));
        }
        if sticky_cookie.is_none() && sticky_hash.is_none() {
            return None;
        }
        Some(StickySpec::On(StickyRule {
            cookie: sticky_cookie.clone(),
            ttl: *sticky_ttl,
            hash: sticky_hash.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_the_spec() {
        assert_eq!(StickyArgs::default().spec(), None);
        let off = StickyArgs {
            no_sticky: true,
            ..Default::default()
        };
        assert_eq!(off.spec(), Some(StickySpec::Off(NoSticky::None)));
        let cookie = StickyArgs {
            sticky_cookie: Some("s".into()),
            sticky_ttl: Some(60),
            ..Default::default()
        };
        let Some(StickySpec::On(rule)) = cookie.spec() else {
            panic!("a cookie spec")
        };
        assert_eq!((rule.cookie.as_deref(), rule.ttl), (Some("s"), Some(60)));
        let hash = StickyArgs {
            sticky_hash: Some("header:X-User".into()),
            ..Default::default()
        };
        let Some(StickySpec::On(rule)) = hash.spec() else {
            panic!("a hash spec")
        };
        assert_eq!(rule.hash.as_deref(), Some("header:X-User"));
    }
}
