//! `--federation FILE` on `instance create|update` and `--no-federation` on
//! `update` (issue 18). The file is read and parsed as the flags are (like
//! `--cert` and `--backend-ca`), so a typo is a usage error naming the file;
//! lbd validates what it holds (providers, patterns, aggregates), with its codes.

use lbaas::model::federation::FederationSpec;
use lbaas::model::instance::{FederationUpdate, NoFederation};
use serde_json::Value;

/// The `federation` object from `path` (`-`: stdin), as JSON: the object
/// itself, or one holding it under `"federation"` (as `instance info -o
/// json` prints it).
pub fn federation_file(path: &str) -> Result<FederationSpec, String> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| format!("reading {path}: {e}"))?;
    parse(&text).map_err(|e| format!("{path}: {e}"))
}

fn parse(text: &str) -> Result<FederationSpec, String> {
    let mut value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if let Value::Object(map) = &mut value {
        if map.len() == 1 {
            if let Some(inner) = map.remove("federation") {
                value = inner;
            }
        }
    }
    serde_json::from_value(value).map_err(|e| {
        format!("not a federation (providers, resource_paths, aggregate, token_header, search_timeout_ms, negative_ttl_s): {e}")
    })
}

/// `instance update`'s federation flags.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct FederationUpdateArgs {
    /// Replace the federation (routing across providers) with FILE's: the
    /// `federation` object as JSON (`-`: stdin).
    #[arg(long, value_name = "FILE", value_parser = federation_file)]
    pub federation: Option<FederationSpec>,
    /// Remove the federation.
    #[arg(long, conflicts_with = "federation")]
    pub no_federation: bool,
}

impl FederationUpdateArgs {
    /// `federation` of the update; `None` (kept) without either flag.
    pub fn spec(&self) -> Option<FederationUpdate> {
        if self.no_federation {
            return Some(FederationUpdate::Off(NoFederation::None));
        }
        self.federation
            .clone()
            .map(|f| FederationUpdate::On(Box::new(f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_alone_or_under_federation() {
        let bare = r#"{"providers": {"sp1": {"entities": ["10.0.0.5:8776"]}}}"#;
        let spec = parse(bare).unwrap();
        assert_eq!(spec.providers.len(), 1);
        assert_eq!(
            parse(&format!(r#"{{"federation": {bare}}}"#)).unwrap(),
            spec
        );
        let typo = parse(r#"{"providers": {}, "resource_path": []}"#).unwrap_err();
        assert!(typo.contains("resource_path"), "{typo}");
        assert!(parse("providers: {}").unwrap_err().starts_with("not JSON"));
        let missing = federation_file("/nonexistent/fed.json").unwrap_err();
        assert!(
            missing.starts_with("reading /nonexistent/fed.json"),
            "{missing}"
        );
    }

    #[test]
    fn update_flags_make_the_field() {
        assert_eq!(FederationUpdateArgs::default().spec(), None);
        let off = FederationUpdateArgs {
            no_federation: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(off.spec()).unwrap(),
            serde_json::json!("none")
        );
    }
}
