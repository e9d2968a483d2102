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
//! cargo run --example pki -- issue-gateway --help
//! ```
//!
//! `PREFIX.crt` is the certificate, `PREFIX.chain.pem` the certificate followed by its CA,
//! `PREFIX.key` the private key (mode 0600). Any failure exits non-zero with a one-line reason.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use outpost_pki::store::{self, files};
use outpost_pki::{CertChecker, CertProfile, IssuedCert, PkiConfig, ServerCa, SignedCert};

/// Drive the outpost CA from the command line; writes standard PEM files.
#[derive(Parser)]
#[command(name = "pki", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The CA's directory (`ca.key`, `ca.crt`, the CRLs, the mobile CA).
#[derive(clap::Args)]
struct Dir {
    /// The CA's directory.
    #[arg(long, value_name = "D")]
    dir: PathBuf,
}

/// Where an issued certificate goes.
#[derive(clap::Args)]
struct Out {
    /// Writes PREFIX.crt, PREFIX.chain.pem (and PREFIX.key, mode 0600, for a new key).
    #[arg(long, value_name = "PREFIX")]
    out: String,
}

/// The names a gateway or server certificate carries.
#[derive(clap::Args)]
struct Names {
    /// A DNS name (repeat for more).
    #[arg(long = "dns", value_name = "NAME", required = true)]
    dns: Vec<String>,
    /// An IP address (repeat for more).
    #[arg(long = "ip", value_name = "ADDR")]
    ip: Vec<IpAddr>,
}

/// A device certificate to issue.
#[derive(clap::Args)]
struct DeviceCert {
    #[command(flatten)]
    dir: Dir,
    /// The device id.
    #[arg(long, value_name = "ID")]
    device: String,
    #[command(flatten)]
    out: Out,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a server CA and a mobile CA in --dir (refuses to overwrite one).
    Init(Dir),
    /// Issue a gateway certificate with the given DNS names (and IPs) embedded.
    IssueGateway {
        #[command(flatten)]
        dir: Dir,
        #[command(flatten)]
        names: Names,
        #[command(flatten)]
        out: Out,
    },
    /// Issue a server certificate.
    IssueServer {
        #[command(flatten)]
        dir: Dir,
        /// The certificate's common name.
        #[arg(long, value_name = "CN")]
        name: String,
        #[command(flatten)]
        names: Names,
        #[command(flatten)]
        out: Out,
    },
    /// Issue a device (agent) certificate.
    IssueAgent(DeviceCert),
    /// Issue a mobile device certificate (from the mobile CA).
    IssueMobile(DeviceCert),
    /// Sign a gateway's CSR with the given names (names the CSR asks for are ignored).
    SignCsr {
        #[command(flatten)]
        dir: Dir,
        /// The certificate signing request (PEM or DER).
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        #[command(flatten)]
        names: Names,
        #[command(flatten)]
        out: Out,
    },
    /// Revoke a certificate and write the new CRL.
    Revoke {
        #[command(flatten)]
        dir: Dir,
        /// The certificate (or chain; its first certificate is revoked).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
    /// Check a gateway certificate chain against the CA, its CRL and a DNS name.
    VerifyGateway {
        #[command(flatten)]
        dir: Dir,
        /// The certificate chain to check.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The name the gateway must carry.
        #[arg(long, value_name = "NAME")]
        dns: String,
    },
}

fn main() -> ExitCode {
    common::exit_code("pki", run(Cli::parse().cmd))
}

fn run(cmd: Cmd) -> Result<(), String> {
    let now = SystemTime::now();
    let e = |e: outpost_pki::PkiError| e.to_string();
    match cmd {
        Cmd::Init(Dir { dir }) => {
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
        Cmd::IssueGateway { dir, names, out } => {
            let ca = load(&dir)?;
            let cert = ca.issue_gateway(&names.dns, &names.ip, now).map_err(e)?;
            write_issued(&cert, &out.out)
        }
        Cmd::IssueServer {
            dir,
            name,
            names,
            out,
        } => {
            let ca = load(&dir)?;
            let cert = ca
                .issue_server(&name, &names.dns, &names.ip, now)
                .map_err(e)?;
            write_issued(&cert, &out.out)
        }
        Cmd::IssueAgent(d) => {
            let cert = load(&d.dir)?.issue_agent(&d.device, now).map_err(e)?;
            write_issued(&cert, &d.out.out)
        }
        Cmd::IssueMobile(d) => {
            let cert = load(&d.dir)?.issue_mobile(&d.device, now).map_err(e)?;
            write_issued(&cert, &d.out.out)
        }
        Cmd::SignCsr {
            dir,
            csr,
            names,
            out,
        } => {
            let ca = load(&dir)?;
            let csr = store::read_csr_file(&csr).map_err(e)?;
            let info = outpost_pki::decode_csr(&csr).map_err(e)?;
            let profile = CertProfile::gateway(&names.dns, &names.ip).map_err(e)?;
            let cert = ca.sign_decoded_csr(&info, &profile, now).map_err(e)?;
            if !info.requested_names.is_empty() {
                println!(
                    "ignored names requested by the CSR: {}",
                    info.requested_names.join(", ")
                );
            }
            write_signed(&cert, &out.out)
        }
        Cmd::Revoke { dir, cert } => {
            let mut ca = load(&dir)?;
            let certs = store::read_certificates(&cert).map_err(e)?;
            let (kind, serial, fresh) = ca.revoke(&certs[0], now).map_err(e)?;
            let crl = store::save_crl(&mut ca, kind, &dir.dir, now).map_err(e)?;
            println!(
                "{} serial {serial}; CRL: {}",
                if fresh { "revoked" } else { "already revoked" },
                crl.display()
            );
            Ok(())
        }
        Cmd::VerifyGateway { dir, cert, dns } => {
            let dir = dir.dir;
            let ca_cert = store::read_ca_certificate(&dir.join(files::CA_CERT)).map_err(e)?;
            let crls = vec![store::read_crl(&dir.join(files::CA_CRL)).map_err(e)?];
            let cert = store::read_certificates(&cert).map_err(e)?;
            let id = CertChecker::new(&ca_cert, &crls)
                .and_then(|c| c.check_server_chain(&cert, &dns, now))
                .map_err(e)?;
            println!(
                "OK: {} is signed by {}, names {dns}, valid until {}; SHA-256 {}",
                id.subject,
                ca_cert.subject(),
                id.not_after,
                id.fingerprint()
            );
            Ok(())
        }
    }
}

fn load(d: &Dir) -> Result<ServerCa, String> {
    store::load_server_ca(&d.dir, PkiConfig::default()).map_err(|e| e.to_string())
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
