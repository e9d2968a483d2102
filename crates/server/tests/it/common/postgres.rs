//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` into a temporary
//! directory, the server on a Unix socket in it (no TCP port), stopped and removed on drop.
//! PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user.
//!
//! Without PostgreSQL's server binaries on the machine [`Cluster::start`] returns `None`
//! (the caller says it skipped), unless `OUTPOST_REQUIRE_POSTGRES=1` is set (as CI does), in
//! which case it panics. `OUTPOST_PG_BIN` names the binaries' directory if they are
//! elsewhere than `/usr/lib/postgresql/<version>/bin` or the `PATH`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Server options (`-o` of `pg_ctl start`).
    opts: String,
    /// Run the binaries as the `postgres` user (we are root).
    as_postgres: bool,
}

fn find_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTPOST_PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Cluster {
    /// Starts a cluster for tests (`fsync=off`: a crash of the PostgreSQL processes loses
    /// nothing, a power cut would), or `None` if PostgreSQL is not installed and not
    /// required.
    pub fn start() -> Option<Cluster> {
        Self::start_with(false)
    }

    /// A cluster that flushes every commit to disk, as a deployment does (for benchmarks).
    pub fn start_durable() -> Option<Cluster> {
        Self::start_with(true)
    }

    fn start_with(fsync: bool) -> Option<Cluster> {
        let required = std::env::var("OUTPOST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        let Some(bin) = find_bin() else {
            assert!(
                !required,
                "OUTPOST_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries were found \
                 (install Debian's postgresql package, or set OUTPOST_PG_BIN)"
            );
            eprintln!(
                "PostgreSQL server binaries not found: the PostgreSQL half of this test is \
                 skipped (install Debian's postgresql package to run it)"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("outpost-pg")
            .tempdir()
            .expect("temporary directory");
        let as_postgres = is_root();
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync={} -c max_connections=50",
            dir.path().display(),
            if fsync { "on" } else { "off" }
        );
        let c = Cluster {
            dir,
            bin,
            opts,
            as_postgres,
        };
        if as_postgres {
            c.run("chown", &["-R", "postgres", c.path()]);
        }
        let data = c.data_dir();
        c.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "outpost",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        c.restart();
        Some(c)
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().expect("UTF-8 temporary path")
    }

    fn data_dir(&self) -> String {
        format!("{}/data", self.path())
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when we are root).
    fn pg(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let exe = exe.to_str().expect("UTF-8 path");
        if self.as_postgres {
            let mut all = vec!["-u", "postgres", "--", exe];
            all.extend_from_slice(args);
            self.run("runuser", &all);
        } else {
            self.run(exe, args);
        }
    }

    /// Creates database `name` and returns its URL.
    pub fn database(&self, name: &str) -> String {
        self.pg("createdb", &["-h", self.path(), "-U", "outpost", name]);
        self.url(name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://outpost@localhost/{name}?host={}", self.path())
    }

    /// Stops the server at once (as a crash would), keeping its files.
    pub fn kill(&self) {
        let data = self.data_dir();
        self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// Starts the server (again, after [`kill`](Self::kill)).
    pub fn restart(&self) {
        let data = self.data_dir();
        let log = format!("{}/log", self.path());
        self.pg(
            "pg_ctl",
            &["-D", &data, "-o", &self.opts, "-l", &log, "-w", "start"],
        );
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let exe = self.bin.join("pg_ctl");
        let exe = exe.to_str().unwrap_or("pg_ctl").to_string();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", &exe])
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
