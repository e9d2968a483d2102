//! Prints a device's effective settings, or one setting's explanation.
//!
//! ```text
//! cargo run --example policy -- explain --state examples/data/policy-state.json \
//!     --device acc-senior-01 [--path endpoint/device_control.flash_drives]
//! cargo run --example policy -- explain --help
//! ```
//!
//! The state file is JSON, or TOML when its name ends in `.toml`; its format is documented
//! in the `outpost-policy` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost::policy::{StateFormat, render_explain};

/// Resolve policies and profiles for one device, offline, from a state file.
#[derive(Parser)]
#[command(name = "policy", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a device's effective settings, or with --path where one setting comes from.
    Explain {
        /// The state file: groups, devices, policies and profiles (JSON, or TOML for a
        /// name ending in `.toml`).
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// The device to resolve.
        #[arg(long, value_name = "ID")]
        device: String,
        /// One setting, `APPLICATION/PATH`: explain its value instead.
        #[arg(long, value_name = "APPLICATION/PATH")]
        path: Option<String>,
    },
}

/// The largest state file read.
const MAX_STATE_BYTES: u64 = 64 << 20;

fn run() -> Result<String, String> {
    let Cmd::Explain {
        state,
        device,
        path,
    } = Cli::parse().cmd;
    // At most the limit and one byte are read, whatever the file's size says: `--state
    // /dev/zero` is refused after 64 MiB, not read without end.
    let input = outpost::server::store::read_bounded(&state, MAX_STATE_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|b| b.ok_or_else(|| "no such file".to_string()))
        .map_err(|e| format!("cannot read {}: {e}", state.display()))?;
    let format = if state.extension().is_some_and(|e| e == "toml") {
        StateFormat::Toml
    } else {
        StateFormat::Json
    };
    render_explain(&input, format, &device, path.as_deref())
        .map_err(|e| format!("{}: {e}", state.display()))
}

fn main() -> ExitCode {
    match run() {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("policy: {reason}");
            ExitCode::FAILURE
        }
    }
}
