//! Drives the outpost CA from the command line and writes standard PEM files.
//!
//! ```text
//! cargo run --example pki -- init --dir D
//! cargo run --example pki -- issue-gateway --dir D --dns NAME [--dns NAME ...] [--ip ADDR ...] --out PREFIX
//! cargo run --example pki -- issue-server --dir D --name CN --dns NAME [--ip ADDR ...] --out PREFIX
//! cargo run --example pki -- issue-agent --dir D --device ID --out PREFIX
//! cargo run --example pki -- issue-mobile --dir D --device ID --out PREFIX
//! cargo run --example pki -- sign-csr --dir D --csr FILE --dns NAME [--dns NAME ...] --out PREFIX
//! cargo run --example pki -- revoke --dir D --cert FILE
//! cargo run --example pki -- verify-gateway --dir D --cert FILE --dns NAME
//! ```
//!
//! `PREFIX.crt` is the certificate, `PREFIX.chain.pem` the certificate followed by its CA,
//! `PREFIX.key` the private key (mode 0600). Any failure exits non-zero with a one-line reason.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use outpost_pki::store::{self, files};
use outpost_pki::{CertChecker, CertProfile, IssuedCert, PkiConfig, ServerCa, SignedCert};

const USAGE: &str = "usage: pki <init|issue-gateway|issue-server|issue-agent|issue-mobile|sign-csr|revoke|verify-gateway> --dir D [flags] (see the example's header for each command's flags)";

/// Parsed `--flag value` pairs.
struct Flags {
    pairs: Vec<(String, String)>,
}

impl Flags {
    fn parse(args: &[String], allowed: &[&str], repeatable: &[&str]) -> Result<Self, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!(
                    "unexpected argument {arg:?} (flags look like --name VALUE)"
                ));
            };
            if !allowed.contains(&name) {
                return Err(format!(
                    "unknown flag --{name} (allowed: --{})",
                    allowed.join(", --")
                ));
            }
            let value = it
                .next()
                .ok_or_else(|| format!("flag --{name} needs a value"))?;
            if !repeatable.contains(&name) && pairs.iter().any(|(n, _)| n == name) {
                return Err(format!("flag --{name} given twice"));
            }
            pairs.push((name.to_owned(), value.clone()));
        }
        Ok(Self { pairs })
    }

    fn one(&self, name: &str) -> Result<&str, String> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("missing required flag --{name}"))
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn ips(&self) -> Result<Vec<IpAddr>, String> {
        self.all("ip")
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| format!("--ip {s:?} is not an IPv4 or IPv6 address"))
            })
            .collect()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("pki: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (cmd, rest) = args.split_first().ok_or_else(|| USAGE.to_owned())?;
    let now = SystemTime::now();
    let e = |e: outpost_pki::PkiError| e.to_string();
    match cmd.as_str() {
        "init" => {
            let f = Flags::parse(rest, &["dir"], &[])?;
            let dir = PathBuf::from(f.one("dir")?);
            if dir.join(files::CA_KEY).exists() {
                return Err(format!(
                    "{} already holds a CA; refusing to overwrite it",
                    dir.display()
                ));
            }
            let mut ca = ServerCa::create(PkiConfig::default(), now).map_err(e)?;
            store::save_server_ca(&mut ca, &dir, now).map_err(e)?;
            println!("server CA: {}", dir.join(files::CA_CERT).display());
            println!("mobile CA: {}", dir.join(files::MOBILE_CA_CERT).display());
            Ok(())
        }
        "issue-gateway" => {
            let f = Flags::parse(rest, &["dir", "dns", "ip", "out"], &["dns", "ip"])?;
            let ca = load(&f)?;
            let cert = ca.issue_gateway(&f.all("dns"), &f.ips()?, now).map_err(e)?;
            write_issued(&cert, f.one("out")?)
        }
        "issue-server" => {
            let f = Flags::parse(rest, &["dir", "name", "dns", "ip", "out"], &["dns", "ip"])?;
            let ca = load(&f)?;
            let cert = ca
                .issue_server(f.one("name")?, &f.all("dns"), &f.ips()?, now)
                .map_err(e)?;
            write_issued(&cert, f.one("out")?)
        }
        "issue-agent" | "issue-mobile" => {
            let f = Flags::parse(rest, &["dir", "device", "out"], &[])?;
            let ca = load(&f)?;
            let device = f.one("device")?;
            let cert = if cmd == "issue-agent" {
                ca.issue_agent(device, now)
            } else {
                ca.issue_mobile(device, now)
            }
            .map_err(e)?;
            write_issued(&cert, f.one("out")?)
        }
        "sign-csr" => {
            let f = Flags::parse(rest, &["dir", "csr", "dns", "ip", "out"], &["dns", "ip"])?;
            let ca = load(&f)?;
            let csr = store::read_csr_file(Path::new(f.one("csr")?)).map_err(e)?;
            let info = outpost_pki::decode_csr(&csr).map_err(e)?;
            let profile = CertProfile::gateway(&f.all("dns"), &f.ips()?).map_err(e)?;
            let cert = ca.sign_decoded_csr(&info, &profile, now).map_err(e)?;
            if !info.requested_names.is_empty() {
                println!(
                    "ignored names requested by the CSR: {}",
                    info.requested_names.join(", ")
                );
            }
            write_signed(&cert, f.one("out")?)
        }
        "revoke" => {
            let f = Flags::parse(rest, &["dir", "cert"], &[])?;
            let mut ca = load(&f)?;
            let path = Path::new(f.one("cert")?);
            let cert = store::read_certificates(path).map_err(e)?;
            let (kind, serial, fresh) = ca.revoke(&cert[0], now).map_err(e)?;
            let dir = PathBuf::from(f.one("dir")?);
            let crl = store::save_crl(&mut ca, kind, &dir, now).map_err(e)?;
            println!(
                "{} serial {serial}; CRL: {}",
                if fresh { "revoked" } else { "already revoked" },
                crl.display()
            );
            Ok(())
        }
        "verify-gateway" => {
            let f = Flags::parse(rest, &["dir", "cert", "dns"], &[])?;
            let dir = PathBuf::from(f.one("dir")?);
            let ca_cert = store::read_ca_certificate(&dir.join(files::CA_CERT)).map_err(e)?;
            let crls = vec![store::read_crl(&dir.join(files::CA_CRL)).map_err(e)?];
            let cert = store::read_certificates(Path::new(f.one("cert")?)).map_err(e)?;
            let host = f.one("dns")?;
            let id = CertChecker::new(&ca_cert, &crls)
                .and_then(|c| c.check_server_chain(&cert, host, now))
                .map_err(e)?;
            println!(
                "OK: {} is signed by {}, names {host}, valid until {}; SHA-256 {}",
                id.subject,
                ca_cert.subject(),
                id.not_after,
                id.fingerprint()
            );
            Ok(())
        }
        other => Err(format!("unknown command {other:?}; {USAGE}")),
    }
}

fn load(f: &Flags) -> Result<ServerCa, String> {
    store::load_server_ca(Path::new(f.one("dir")?), PkiConfig::default()).map_err(|e| e.to_string())
}

fn write_signed(cert: &SignedCert, prefix: &str) -> Result<(), String> {
    let crt = PathBuf::from(format!("{prefix}.crt"));
    let chain = PathBuf::from(format!("{prefix}.chain.pem"));
    store::write_public(&crt, &cert.cert_pem()).map_err(|e| e.to_string())?;
    store::write_public(&chain, &cert.chain_pem()).map_err(|e| e.to_string())?;
    println!(
        "{}: serial {}, valid {} to {}",
        crt.display(),
        cert.info.serial,
        cert.info.not_before,
        cert.info.not_after
    );
    println!("{}", chain.display());
    Ok(())
}

fn write_issued(cert: &IssuedCert, prefix: &str) -> Result<(), String> {
    let key = PathBuf::from(format!("{prefix}.key"));
    store::write_private_key(&key, &cert.key_pem()).map_err(|e| e.to_string())?;
    let signed = SignedCert {
        cert_der: cert.cert_der.clone(),
        chain: cert.chain.clone(),
        info: cert.info.clone(),
    };
    write_signed(&signed, prefix)?;
    println!("{} (mode 0600)", key.display());
    Ok(())
}
