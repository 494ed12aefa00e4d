//! `expected-codes` of an HTTP health check, parsed once where it enters
//! (API validation, or a node's config) so a check only compares numbers.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::ValidationError;

/// HTTP statuses that pass a health check: one status (`204`), a range
/// (`200-399`), or a comma-separated list of both (`200,301-302`), within 100-599.
///
/// On the wire it is the string as written (`#[schemars(with = "String")]`
/// where it is a field), so what a client sent is what it reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExpectedCodes {
    text: String,
    ranges: Vec<RangeInclusive<u16>>,
}

impl ExpectedCodes {
    pub fn contains(&self, status: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&status))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Default for ExpectedCodes {
    fn default() -> Self {
        ExpectedCodes {
            text: "200-399".to_string(),
            ranges: vec![200..=399],
        }
    }
}

fn status(s: &str) -> Option<u16> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
}

fn range(s: &str) -> Option<RangeInclusive<u16>> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (status(lo)?, status(hi)?),
        None => {
            let c = status(s)?;
            (c, c)
        }
    };
    (lo <= hi).then_some(lo..=hi)
}

impl FromStr for ExpectedCodes {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ranges: Option<Vec<_>> = s.split(',').map(range).collect();
        match ranges {
            Some(ranges) => Ok(ExpectedCodes {
                text: s.to_string(),
                ranges,
            }),
            None => Err(ValidationError::InvalidHealthCheck(format!(
                "expected-codes {s:?}: expected a status (204), a range (200-399) or a \
                 comma-separated list of them (200,301-302), within 100-599"
            ))),
        }
    }
}

impl TryFrom<String> for ExpectedCodes {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ExpectedCodes> for String {
    fn from(c: ExpectedCodes) -> String {
        c.text
    }
}

impl fmt::Display for ExpectedCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn codes(s: &str) -> ExpectedCodes {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn one_status_a_range_or_a_list() {
        let one = codes("204");
        assert!(one.contains(204));
        assert!(!one.contains(200) && !one.contains(205));
        let range = codes("200-299");
        assert!(range.contains(200) && range.contains(250) && range.contains(299));
        assert!(!range.contains(199) && !range.contains(300));
        let list = codes("200, 301-302");
        for (status, passes) in [
            (200, true),
            (201, false),
            (301, true),
            (302, true),
            (303, false),
        ] {
            assert_eq!(list.contains(status), passes, "{status}");
        }
        assert!(codes("599").contains(599) && codes("100").contains(100));
    }

    #[test]
    fn the_default_is_200_to_399() {
        let d = ExpectedCodes::default();
        assert_eq!(d, codes("200-399"));
        assert!(d.contains(200) && d.contains(399) && !d.contains(404));
    }

    #[test]
    fn bad_input_is_an_invalid_health_check() {
        for bad in [
            "",
            "99",
            "600",
            "0-200",
            "399-200",
            "200-",
            "-200",
            "abc",
            "200,,300",
            "200-300-400",
            "200,",
            "2OO",
        ] {
            let err = bad.parse::<ExpectedCodes>().unwrap_err();
            assert_eq!(err.code(), "invalid_health_check", "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn the_wire_form_is_the_text_as_written() {
        for s in ["200-399", "204", "200, 301-302"] {
            let c: ExpectedCodes = serde_json::from_value(json!(s)).unwrap();
            assert_eq!(serde_json::to_value(&c).unwrap(), json!(s));
            assert_eq!(c.to_string(), s);
            assert_eq!(c.as_str(), s);
        }
        let err = serde_json::from_value::<ExpectedCodes>(json!("399-200")).unwrap_err();
        assert!(
            err.to_string().contains("expected-codes \"399-200\""),
            "{err}"
        );
        assert!(serde_json::from_value::<ExpectedCodes>(json!(200)).is_err());
    }
}
