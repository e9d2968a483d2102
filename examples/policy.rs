//! Prints a device's effective settings, or one setting's explanation.
//!
//! ```text
//! cargo run --example policy -- explain --state examples/data/policy-state.json \
//!     --device acc-senior-01 [--path endpoint/device_control.flash_drives]
//! ```
//!
//! The state file is JSON, or TOML when its name ends in `.toml`; its format is documented
//! in the `outpost-policy` crate.

use std::path::Path;
use std::process::ExitCode;

use outpost::policy::{StateFormat, render_explain};

const USAGE: &str = "usage: policy explain --state FILE --device ID [--path APPLICATION/PATH]";

struct Args {
    state: String,
    device: String,
    path: Option<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    match args.next().as_deref() {
        Some("explain") => {}
        Some(other) => return Err(format!("unknown command {other:?}; {USAGE}")),
        None => return Err(format!("missing command; {USAGE}")),
    }
    let (mut state, mut device, mut path) = (None, None, None);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--state" => &mut state,
            "--device" => &mut device,
            "--path" => &mut path,
            other => return Err(format!("unknown flag {other:?}; {USAGE}")),
        };
        let value = args
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value; {USAGE}"))?;
        if slot.replace(value).is_some() {
            return Err(format!("flag {flag} given twice"));
        }
    }
    Ok(Args {
        state: state.ok_or_else(|| format!("missing --state; {USAGE}"))?,
        device: device.ok_or_else(|| format!("missing --device; {USAGE}"))?,
        path,
    })
}

/// The largest state file read.
const MAX_STATE_BYTES: u64 = 64 << 20;

fn run() -> Result<String, String> {
    let args = parse(std::env::args().skip(1))?;
    // At most the limit and one byte are read, whatever the file's size says: `--state
    // /dev/zero` is refused after 64 MiB, not read without end.
    let input = outpost::server::store::read_bounded(Path::new(&args.state), MAX_STATE_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|b| b.ok_or_else(|| "no such file".to_string()))
        .map_err(|e| format!("cannot read {:?}: {e}", args.state))?;
    let format = if args.state.ends_with(".toml") {
        StateFormat::Toml
    } else {
        StateFormat::Json
    };
    render_explain(&input, format, &args.device, args.path.as_deref())
        .map_err(|e| format!("{}: {e}", args.state))
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
