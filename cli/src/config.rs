//! `~/.config/lbaas/config.toml` (or `$XDG_CONFIG_HOME/lbaas/config.toml`):
//! the lbd URL and token, so neither needs to be typed. Flags and the
//! environment override it.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub url: Option<String>,
    pub token: Option<String>,
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
    }
}
