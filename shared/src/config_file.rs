//! Reading TOML config files, and the errors both binaries report about
//! them. A file that cannot be read or parsed is one error naming the file,
//! the line and the field (toml's own messages do the latter two); a file
//! that parses is checked whole, and every problem found is reported at
//! once ([`ConfigErrors::Invalid`]), each naming its field by its dotted
//! path, e.g. `sources[1].rate`. Both binaries load their configs through
//! here.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// One problem with a config: the dotted path of the field at fault and
/// what is wrong with it. Displays as `field: message`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything wrong with a config.
#[derive(Debug, Error)]
pub enum ConfigErrors {
    /// The file cannot be read, or is not TOML of the expected shape: one
    /// error, as toml reports it (with the line).
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// The file parsed and these fields are wrong (never empty), in the
    /// order they were checked. Displays one per line.
    #[error("{}", Lines(.0))]
    Invalid(Vec<ConfigError>),
}

struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors::Invalid(vec![e])
    }
}

impl ConfigErrors {
    /// `Ok` when nothing was found, else every problem.
    pub fn check(found: Vec<ConfigError>) -> Result<(), ConfigErrors> {
        if found.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors::Invalid(found))
        }
    }

    /// The invalid fields (none for a file that did not parse).
    pub fn fields(&self) -> &[ConfigError] {
        match self {
            ConfigErrors::File(_) => &[],
            ConfigErrors::Invalid(v) => v,
        }
    }

    /// Adds what a part's own check found to `found` (a config's check
    /// gathers its parts' problems this way, so that it reports them all).
    pub fn gather(checked: Result<(), ConfigErrors>, found: &mut Vec<ConfigError>) {
        match checked {
            Ok(()) => {}
            Err(ConfigErrors::Invalid(v)) => found.extend(v),
            Err(ConfigErrors::File(ConfigFileError::Read { path, source })) => found.push(
                ConfigError::invalid(path.display().to_string(), format!("cannot read: {source}")),
            ),
            Err(ConfigErrors::File(ConfigFileError::Parse { path, message })) => {
                found.push(ConfigError::invalid(path.display().to_string(), message))
            }
        }
    }

    /// Prints every problem to stderr, one per line, each line starting
    /// with `prefix` (e.g. `edge-agent: invalid config: `): what `check`,
    /// `run` and `serve` print before they exit with code 64.
    pub fn eprint(&self, prefix: &str) {
        match self {
            ConfigErrors::File(e) => eprintln!("{prefix}{e}"),
            ConfigErrors::Invalid(v) => {
                for e in v {
                    eprintln!("{prefix}{e}");
                }
            }
        }
    }
}

/// Parses TOML `text`; `origin` names it in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|e| ConfigFileError::Parse {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads and parses the TOML file at `path`.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_listed_one_per_line_with_its_field() {
        let e = ConfigErrors::check(vec![
            ConfigError::invalid(
                "uplink.batch_max_records",
                "must be between 1 and 10000, got 0",
            ),
            ConfigError::invalid("sources[1].rate", "must be a number >= 0"),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "uplink.batch_max_records: must be between 1 and 10000, got 0\n\
             sources[1].rate: must be a number >= 0"
        );
        assert_eq!(e.fields()[1].field, "sources[1].rate");
        assert!(ConfigErrors::check(Vec::new()).is_ok());
    }

    #[test]
    fn a_syntax_error_is_one_error_with_its_line() {
        let e: ConfigErrors = parse_toml::<toml::Table>("a = 1\nb = = 2\n", Path::new("x.toml"))
            .unwrap_err()
            .into();
        let text = e.to_string();
        assert!(
            text.starts_with("x.toml: ") && text.contains("line 2"),
            "{text}"
        );
        assert!(e.fields().is_empty());
    }
}
