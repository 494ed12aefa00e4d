//! Names of projects and instances become DNS labels, process names and file
//! paths, so they are held to the strict DNS label pattern.

use crate::model::ValidationError;

/// Checks that `name` is a DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    let fail = |reason: &str| {
        Err(ValidationError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
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
    fn users() {
        validate_user("john").unwrap();
        validate_user("j.doe@example").unwrap();
        assert!(validate_user("").is_err());
        assert!(validate_user("a b").is_err());
    }
}
