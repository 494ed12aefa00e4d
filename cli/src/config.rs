//! `~/.config/lbaas/config.toml` (or `$XDG_CONFIG_HOME/lbaas/config.toml`):
//! the lbd URL and token, so neither needs to be typed, and named contexts
//! (`[context.alice]`), one per user or lbd, like kubectl's. Flags and the
//! environment override it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The file. Its top-level `url`/`token` are the default context, so a
/// file written before contexts existed reads as it always did.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub url: Option<String>,
    pub token: Option<String>,
    /// The context used when `--context` (or `LBAAS_CONTEXT`) names none.
    pub current: Option<String>,
    #[serde(default)]
    pub context: BTreeMap<String, Context>,
}

/// One `[context.NAME]` table; a field it leaves out comes from the top level.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub url: Option<String>,
    pub token: Option<String>,
}

/// What the command line (flags and environment, merged by clap) says.
#[derive(Debug, Default, Clone, Copy)]
pub struct Overrides<'a> {
    pub url: Option<&'a str>,
    pub token: Option<&'a str>,
    pub context: Option<&'a str>,
}

/// Where lbctl finds lbd, before the built-in defaults.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub url: Option<String>,
    pub token: Option<String>,
    /// The context in use, when one was chosen.
    pub context: Option<String>,
}

impl ConfigFile {
    /// Flag/env `url`/`token` > the chosen context's > the top level's. A
    /// context that was asked for but is not in the file is an error (a
    /// typo must not quietly fall back to the default context's token).
    pub fn resolve(&self, cli: Overrides<'_>) -> anyhow::Result<Resolved> {
        let chosen = cli.context.or(self.current.as_deref());
        let context = match chosen {
            None => Context::default(),
            Some(name) => self.context.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = self.context.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                anyhow::anyhow!(
                    "no context {name:?} in {} (known: {known})",
                    path().display()
                )
            })?,
        };
        let pick = |flag: Option<&str>, ctx: &Option<String>, top: &Option<String>| {
            flag.map(str::to_string)
                .or_else(|| ctx.clone())
                .or_else(|| top.clone())
        };
        Ok(Resolved {
            url: pick(cli.url, &context.url, &self.url),
            token: pick(cli.token, &context.token, &self.token),
            context: chosen.map(str::to_string),
        })
    }
}

pub fn path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    base.join("lbaas").join("config.toml")
}

/// The config file, or nothing when there is none; a broken file is an error.
pub fn load() -> anyhow::Result<ConfigFile> {
    let path = path();
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_url_and_token_and_refuses_typos() {
        let c: ConfigFile = toml::from_str("url = \"http://h:1\"\ntoken = \"abc\"\n").unwrap();
        assert_eq!(c.url.as_deref(), Some("http://h:1"));
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert!(toml::from_str::<ConfigFile>("tokn = \"x\"").is_err());
        assert!(toml::from_str::<ConfigFile>("[context.a]\ntokn = \"x\"").is_err());
        assert!(toml::from_str::<ConfigFile>("[contexts.a]\ntoken = \"x\"").is_err());
    }

    const FILE: &str = r#"
url = "http://top:1"
token = "top-token"
current = "alice"

[context.alice]
url = "http://alice:2"
token = "alice-token"

[context.bob]
token = "bob-token"
"#;

    fn resolve(text: &str, cli: Overrides<'_>) -> anyhow::Result<Resolved> {
        toml::from_str::<ConfigFile>(text).unwrap().resolve(cli)
    }

    fn resolved(url: &str, token: &str, context: Option<&str>) -> Resolved {
        Resolved {
            url: Some(url.into()),
            token: Some(token.into()),
            context: context.map(str::to_string),
        }
    }

    #[test]
    fn current_picks_a_context_and_context_overrides_current() {
        let none = Overrides::default();
        assert_eq!(
            resolve(FILE, none).unwrap(),
            resolved("http://alice:2", "alice-token", Some("alice"))
        );
        let bob = Overrides {
            context: Some("bob"),
            ..none
        };
        // bob has no url: the top level's.
        assert_eq!(
            resolve(FILE, bob).unwrap(),
            resolved("http://top:1", "bob-token", Some("bob"))
        );
    }

    #[test]
    fn flags_win_over_the_context_and_the_top_level() {
        let cli = Overrides {
            url: Some("http://flag:3"),
            token: Some("flag-token"),
            context: Some("bob"),
        };
        assert_eq!(
            resolve(FILE, cli).unwrap(),
            resolved("http://flag:3", "flag-token", Some("bob"))
        );
        let token_only = Overrides {
            token: Some("flag-token"),
            ..Overrides::default()
        };
        assert_eq!(
            resolve(FILE, token_only).unwrap(),
            resolved("http://alice:2", "flag-token", Some("alice"))
        );
    }

    #[test]
    fn without_contexts_the_top_level_is_used() {
        let old = "url = \"http://top:1\"\ntoken = \"top-token\"\n";
        assert_eq!(
            resolve(old, Overrides::default()).unwrap(),
            resolved("http://top:1", "top-token", None)
        );
        assert_eq!(
            resolve("", Overrides::default()).unwrap(),
            Resolved {
                url: None,
                token: None,
                context: None
            }
        );
    }

    #[test]
    fn an_unknown_context_names_the_known_ones() {
        let cli = Overrides {
            context: Some("carol"),
            ..Overrides::default()
        };
        let e = resolve(FILE, cli).unwrap_err().to_string();
        assert!(
            e.contains("\"carol\"") && e.contains("known: alice, bob"),
            "{e}"
        );
        // `current` naming a missing context is the same error.
        let e = resolve("current = \"x\"", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"x\"") && e.contains("known: none"), "{e}");
    }
}
