//! Logs: to stderr, as text or as JSON lines, filtered by a level
//! (`--log-level`, else `RUST_LOG`, else `info`) that a reload can change.

use std::str::FromStr;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z  INFO target: message key=value` lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is neither `text` nor `json`")),
        }
    }
}

/// Checks a level: `info`, `debug`, or `RUST_LOG`-style directives such as
/// `info,swimlock::agent=debug`.
pub fn parse_level(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("`{level}` is not a log level like info, debug or warn,swimlock=debug ({e})"))
}

/// Changes the level of the installed logger.
#[derive(Clone, Debug)]
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl Logging {
    /// Sets a new level (see [`parse_level`]).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = parse_level(level)?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the process's logger. `level` wins over `RUST_LOG`; a bad
/// `RUST_LOG` falls back to `info`. `None` when a logger was already
/// installed (embedded use, tests).
pub fn init(format: LogFormat, level: Option<&str>) -> Option<Logging> {
    let filter = match level {
        Some(level) => parse_level(level).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let output = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry().with(filter).with(output).try_init().ok()?;
    Some(Logging { filter: handle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_levels() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("`xml`"));
        assert!(parse_level("debug").is_ok());
        assert!(parse_level("info,swimlock::agent=debug").is_ok());
        assert!(parse_level("loud=").is_err() || parse_level("[").is_err());
    }
}
