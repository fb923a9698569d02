//! The bundled configuration file (RFC 4, first part): which socket to listen on, whether
//! guests may connect, and which modules to load at start, in order. Unknown keys are
//! errors, paths are relative to the file, and every error names the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub broker: BrokerSection,
    #[serde(default, rename = "module")]
    pub modules: Vec<ModuleEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// Socket path; the default path when absent.
    pub listen: Option<PathBuf>,
    #[serde(default)]
    pub allow_guests: bool,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame: Option<usize>,
    /// Grace period for a module to finalize on remove, in milliseconds.
    pub grace_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleEntry {
    pub path: PathBuf,
    pub name: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Handed to the module as its configuration table.
    pub config: Option<toml::Table>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl ModuleEntry {
    /// The module's configuration table as msgpack (an empty map when none). TOML dates and
    /// times become strings in RFC 3339 form.
    pub fn config_msgpack(&self) -> Vec<u8> {
        let value = self.config.as_ref().map_or(rmpv::Value::Map(Vec::new()), table_value);
        let mut out = Vec::new();
        // Writing a value to a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &value);
        out
    }
}

fn table_value(t: &toml::Table) -> rmpv::Value {
    rmpv::Value::Map(t.iter().map(|(k, v)| (rmpv::Value::from(k.as_str()), toml_value(v))).collect())
}

fn toml_value(v: &toml::Value) -> rmpv::Value {
    match v {
        toml::Value::String(s) => rmpv::Value::from(s.as_str()),
        toml::Value::Integer(i) => rmpv::Value::from(*i),
        toml::Value::Float(f) => rmpv::Value::from(*f),
        toml::Value::Boolean(b) => rmpv::Value::from(*b),
        toml::Value::Datetime(d) => rmpv::Value::from(d.to_string()),
        toml::Value::Array(a) => rmpv::Value::Array(a.iter().map(toml_value).collect()),
        toml::Value::Table(t) => table_value(t),
    }
}

impl Config {
    /// Read `path`; relative paths inside it are taken relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
            // Absolute, so the socket address and module paths mean the same from anywhere.
            if let Ok(c) = std::fs::canonicalize(&*p).or_else(|_| std::path::absolute(&*p)) {
                *p = c;
            }
        };
        if let Some(l) = config.broker.listen.as_mut() {
            rebase(l);
        }
        for m in &mut config.modules {
            rebase(&mut m.path);
        }
        Ok(config)
    }
}
