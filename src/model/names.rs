//! Names of projects and instances become DNS labels, process names and file
//! paths, so they are held to the strict DNS label pattern.

use crate::model::ValidationError;

/// Checks that `name` is a DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    let fail = |reason: &str| {
        let reason = match suggestion(name) {
            Some(s) => format!("{reason}; try {s:?}"),
            None => reason.to_string(),
        };
        Err(ValidationError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return fail("must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("only lowercase letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("must not begin or end with '-'");
    }
    Ok(())
}

/// A valid name close to `name` (`"john's project"` → `"johns-project"`):
/// lowercase, apostrophes dropped, every other run of invalid characters
/// one `-`, cut to 63; none when nothing of `name` is left.
fn suggestion(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars().filter(|c| !matches!(c, '\'' | '\u{2019}')) {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').to_string();
    out.truncate(63);
    let out = out.trim_end_matches('-');
    (!out.is_empty() && out != name).then(|| out.to_string())
}

/// Checks a user name: 1 to 64 of `[A-Za-z0-9._@-]`.
pub fn validate_user(user: &str) -> Result<(), ValidationError> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::InvalidName {
            name: user.to_string(),
            reason: "a user is 1 to 64 of letters, digits, '.', '_', '@', '-'".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web", "web-1", "0", &"a".repeat(63)] {
            validate_name(ok).unwrap();
        }
    }

    #[test]
    fn refuses_bad_labels() {
        for bad in [
            "",
            "Web",
            "web_1",
            "-web",
            "web-",
            "we b",
            "wéb",
            &"a".repeat(64),
            "a.b",
        ] {
            let err = validate_name(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_name", "{bad:?}");
        }
    }

    #[test]
    fn a_refused_name_comes_with_a_suggestion() {
        let err = validate_name("john's project").unwrap_err();
        assert_eq!(err.code(), "invalid_name");
        assert!(err.to_string().ends_with(r#"try "johns-project""#), "{err}");
        for (bad, try_) in [
            ("Web", Some("web")),
            ("web_1", Some("web-1")),
            ("-web-", Some("web")),
            ("a.b", Some("a-b")),
            ("wéb", Some("w-b")),
            ("''", None),
            ("", None),
        ] {
            assert_eq!(suggestion(bad).as_deref(), try_, "{bad:?}");
            if let Some(s) = try_ {
                validate_name(s).unwrap();
            }
        }
        assert_eq!(suggestion(&"a".repeat(64)).unwrap().len(), 63);
    }

    #[test]
    fn users() {
        validate_user("john").unwrap();
        validate_user("j.doe@example").unwrap();
        assert!(validate_user("").is_err());
        assert!(validate_user("a b").is_err());
    }
}
