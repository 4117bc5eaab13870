//! The process's logs: always on stderr (stdout carries the ready lines and
//! the commands' own output), filtered and formatted from the environment and
//! `--log-format`.
//!
//! - Filter: `RUST_LOG`, else `EZONE_LOG` (the same syntax, kept as an
//!   alias), else [`DEFAULT_FILTER`]. When both are set `RUST_LOG` wins. A
//!   filter that does not parse is not ignored silently: one line on stderr
//!   says so, and the default is used instead.
//! - Format: `text` (one human-readable line per event) or `json` (one JSON
//!   object per line: `timestamp`, `level`, `target`, `fields` with
//!   `message` and the event's fields, and the spans it happened in).
//! - Colours: in `text`, only when stderr is a terminal and `NO_COLOR` is
//!   unset or empty; never in `json`, nor in a file or a pipe.

use std::ffi::OsString;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter's variable, as the `tracing`/`env_logger` ecosystem names it.
pub const FILTER_ENV: &str = "RUST_LOG";
/// ezone's own name for the filter; [`FILTER_ENV`] wins when both are set.
pub const FILTER_ALIAS_ENV: &str = "EZONE_LOG";
/// The format when `--log-format` is not given.
pub const FORMAT_ENV: &str = "EZONE_LOG_FORMAT";
/// Warnings and errors only.
pub const DEFAULT_FILTER: &str = "warn";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter directives to use and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChoice {
    /// `RUST_LOG`, `EZONE_LOG`, or `None` for the default.
    pub from: Option<&'static str>,
    pub directives: String,
}

/// Picks the filter: `RUST_LOG`, then `EZONE_LOG`, then the default. An
/// empty (or blank) variable counts as unset.
pub fn choose_filter(rust_log: Option<&str>, ezone_log: Option<&str>) -> FilterChoice {
    let set = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    if let Some(directives) = set(rust_log) {
        return FilterChoice {
            from: Some(FILTER_ENV),
            directives,
        };
    }
    if let Some(directives) = set(ezone_log) {
        return FilterChoice {
            from: Some(FILTER_ALIAS_ENV),
            directives,
        };
    }
    FilterChoice {
        from: None,
        directives: DEFAULT_FILTER.to_string(),
    }
}

/// Builds the filter; when the chosen directives do not parse, the default
/// filter and the line to print about it.
pub fn build_filter(choice: &FilterChoice) -> (EnvFilter, Option<String>) {
    match EnvFilter::builder().parse(&choice.directives) {
        Ok(f) => (f, None),
        Err(e) => {
            let from = choice.from.unwrap_or("the default log filter");
            let line = format!(
                "ezone: {from}={:?} is not a valid log filter ({e}); using {DEFAULT_FILTER:?} instead",
                choice.directives
            );
            (EnvFilter::new(DEFAULT_FILTER), Some(line))
        }
    }
}

/// Colours or not: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>).
pub fn use_ansi(stderr_is_terminal: bool, no_color: Option<&OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Installs the process's subscriber (once, first thing in `main`).
pub fn init(format: LogFormat) {
    let choice = choose_filter(var(FILTER_ENV).as_deref(), var(FILTER_ALIAS_ENV).as_deref());
    let (filter, complaint) = build_filter(&choice);
    if let Some(line) = complaint {
        eprintln!("{line}");
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(use_ansi(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_ref(),
            ))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn rust_log_wins_then_ezone_log_then_the_default() {
        let c = choose_filter(Some("debug"), Some("info"));
        assert_eq!((c.from, c.directives.as_str()), (Some("RUST_LOG"), "debug"));
        let c = choose_filter(None, Some("info,ezone_router=debug"));
        assert_eq!(
            (c.from, c.directives.as_str()),
            (Some("EZONE_LOG"), "info,ezone_router=debug")
        );
        let c = choose_filter(None, None);
        assert_eq!((c.from, c.directives.as_str()), (None, "warn"));
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let c = choose_filter(Some(""), Some("info"));
        assert_eq!((c.from, c.directives.as_str()), (Some("EZONE_LOG"), "info"));
        let c = choose_filter(Some("  "), Some(""));
        assert_eq!((c.from, c.directives.as_str()), (None, "warn"));
    }

    #[test]
    fn a_valid_filter_is_used_as_is() {
        let (f, complaint) = build_filter(&choose_filter(Some("info,hyper=warn"), None));
        assert_eq!(complaint, None);
        assert_eq!(f.to_string(), "hyper=warn,info");
    }

    #[test]
    fn an_invalid_filter_is_said_and_replaced_by_the_default() {
        let (f, complaint) = build_filter(&choose_filter(None, Some("ezone_router=loud")));
        let line = complaint.expect("a complaint");
        assert!(
            line.starts_with("ezone: EZONE_LOG=\"ezone_router=loud\" is not a valid log filter ("),
            "{line}"
        );
        assert!(line.ends_with("using \"warn\" instead"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(f.to_string(), "warn");
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_str("text", false), Ok(LogFormat::Text));
        assert!(LogFormat::from_str("logfmt", false).is_err());
        assert_eq!(LogFormat::default(), LogFormat::Text);
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        let set = OsString::from("1");
        let empty = OsString::new();
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(&empty)));
        assert!(!use_ansi(true, Some(&set)));
        assert!(!use_ansi(false, None));
        assert!(!use_ansi(false, Some(&set)));
    }
}
