//! Shared by the example binaries: flag parsing helpers and a stderr logger.

#![allow(dead_code)]

use std::path::PathBuf;

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level() && m.target().starts_with("outpost")
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{:<5} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Logs `outpost*` records to stderr at the level in `OUTPOST_LOG` (default `info`).
pub fn init_logger() {
    let level = std::env::var("OUTPOST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Prints `program: message` and exits with status 1.
pub fn die(program: &str, message: impl std::fmt::Display) -> ! {
    eprintln!("{program}: {message}");
    std::process::exit(1);
}

/// Flags as `--name value` pairs; a name may repeat.
pub struct Flags(Vec<(String, String)>);

impl Flags {
    /// Parses the process arguments; `switches` are flags without a value.
    pub fn parse(program: &str, allowed: &[&str], switches: &[&str]) -> Flags {
        Self::parse_from(program, std::env::args().skip(1), allowed, switches)
    }

    /// Parses `args` (without the program name).
    pub fn parse_from(
        program: &str,
        args: impl IntoIterator<Item = String>,
        allowed: &[&str],
        switches: &[&str],
    ) -> Flags {
        let mut out = Vec::new();
        let mut it = args.into_iter();
        while let Some(f) = it.next() {
            let Some(name) = f.strip_prefix("--") else {
                die(program, format!("unexpected argument {f:?}"));
            };
            if switches.contains(&name) {
                out.push((name.to_string(), String::new()));
                continue;
            }
            if !allowed.contains(&name) {
                die(
                    program,
                    format!(
                        "unknown flag --{name} (flags: {})",
                        allowed
                            .iter()
                            .chain(switches)
                            .map(|a| format!("--{a}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                );
            }
            let Some(v) = it.next() else {
                die(program, format!("--{name} needs a value"));
            };
            out.push((name.to_string(), v));
        }
        Flags(out)
    }

    /// The value of a flag that may appear once.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a required flag.
    pub fn need(&self, program: &str, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| die(program, format!("--{name} is required")))
    }

    /// Whether a switch is present.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// Reads the file named by `--config`, returning its text and directory.
    pub fn config(&self, program: &str) -> (String, PathBuf) {
        let path = PathBuf::from(self.need(program, "config"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| die(program, format!("{}: {e}", path.display())));
        let base = path.parent().map(PathBuf::from).unwrap_or_default();
        (text, base)
    }
}
