//! Groups (seed 000): a rule's `require_groups` against the caller's
//! groups, which come only from the auth decision (the service's answer, or
//! the basic user's or API key's entry), never from the request.

/// Whether `caller` is in every group of `required`.
pub fn has_all(required: &[String], caller: &[String]) -> bool {
    required.iter().all(|g| caller.contains(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_required_group_must_be_held() {
        assert!(has_all(&[], &[]));
        assert!(has_all(&v(&["a"]), &v(&["b", "a"])));
        assert!(has_all(&v(&["a", "b"]), &v(&["b", "a", "c"])));
        assert!(!has_all(&v(&["a", "b"]), &v(&["a"])));
        assert!(!has_all(&v(&["a"]), &[]));
        // Names compare exactly.
        assert!(!has_all(&v(&["Admins"]), &v(&["admins"])));
    }
}
