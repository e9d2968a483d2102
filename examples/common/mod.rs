//! Shared by the example binaries: the log output and reading a configuration file.
//!
//! Log records go to stderr through `tracing-subscriber`: the libraries' `tracing` events,
//! with their spans, and the `log` records of dependencies that use `log`. What is shown is
//! chosen by `OUTPOST_LOG`, else `RUST_LOG`, in `EnvFilter`'s directive syntax (`info`,
//! `outpost_gateway=debug`, `warn,outpost=info`); a bare level in `OUTPOST_LOG`
//! (`OUTPOST_LOG=debug`) applies to the project's own crates only. With neither set,
//! [`DEFAULT_LOG`]: `info` from the project's crates, nothing from the others.

#![allow(dead_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The filter when neither `OUTPOST_LOG` nor `RUST_LOG` is set: `info` and above from every
/// target starting with `outpost` (a directive's target matches by prefix, so this covers
/// `outpost_server`, `outpost_gateway` and the rest), nothing from third-party crates.
pub const DEFAULT_LOG: &str = "outpost=info";

/// Sends log records to stderr, filtered by `OUTPOST_LOG`, else `RUST_LOG`, else
/// [`DEFAULT_LOG`]. Harmless if called again.
pub fn init_logger() {
    init_logger_or(DEFAULT_LOG);
}

/// As [`init_logger`], with `default` (a filter directive) when neither variable is set.
pub fn init_logger_or(default: &str) {
    let filter = match log_filter() {
        None => EnvFilter::new(default),
        Some(Ok(f)) => f,
        Some(Err(reason)) => {
            eprintln!("{reason}; logging with {default:?}");
            EnvFilter::new(default)
        }
    };
    // A second call finds a subscriber installed and changes nothing.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The filter the environment asks for: `None` when it asks for none.
fn log_filter() -> Option<Result<EnvFilter, String>> {
    for var in ["OUTPOST_LOG", "RUST_LOG"] {
        let value = match std::env::var(var) {
            Ok(v) if v.trim().is_empty() => continue,
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => continue,
            Err(std::env::VarError::NotUnicode(v)) => {
                return Some(Err(format!("{var}={v:?} is not UTF-8")));
            }
        };
        // A bare level in OUTPOST_LOG is for the project's crates, not every crate's.
        let directives = match value.trim().parse::<LevelFilter>() {
            Ok(level) if var == "OUTPOST_LOG" => format!("outpost={level}"),
            _ => value.clone(),
        };
        return Some(
            EnvFilter::builder()
                .parse(&directives)
                .map_err(|e| format!("{var}={value:?} is not a log filter ({e})")),
        );
    }
    None
}

/// Reads a configuration file: its text, and the directory its relative paths start from.
pub fn read_config(path: &Path) -> Result<(String, PathBuf), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().map(PathBuf::from).unwrap_or_default();
    Ok((text, base))
}

/// The exit status of a run: success, or status 1 with the failure on stderr as
/// `program: reason`.
pub fn exit_code(program: &str, outcome: Result<(), impl std::fmt::Display>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("{program}: {reason}");
            ExitCode::FAILURE
        }
    }
}
