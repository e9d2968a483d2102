//! Keys and certificates on disk, as PEM.
//!
//! Every file is written atomically (a temporary file beside it, synced, renamed over the
//! target, then the directory synced). Private keys are written with mode 0600 and refused on
//! load if the group or others may access them. Every file is size-checked before it is read.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::ca::{CaCertificate, CaKind, CertificateAuthority, Crl, ServerCa};
use crate::config::PkiConfig;
use crate::error::{CertError, CrlError, FileError, KeyError, PkiError, Result};
use crate::pem_util::all_pem_blocks;

/// Largest key file accepted (an RSA-4096 PKCS#8 PEM is about 3.3 KiB).
pub const MAX_KEY_FILE: u64 = 64 * 1024;
/// Largest certificate (or chain) file accepted.
pub const MAX_CERT_FILE: u64 = 1024 * 1024;
/// Largest CRL file accepted (room for about a million revoked serials).
pub const MAX_CRL_FILE: u64 = 64 * 1024 * 1024;

/// File names used by [`save_server_ca`] and [`load_server_ca`] inside the CA directory.
pub mod files {
    /// Server CA certificate.
    pub const CA_CERT: &str = "ca.crt";
    /// Server CA private key (mode 0600).
    pub const CA_KEY: &str = "ca.key";
    /// Server CA revocation list.
    pub const CA_CRL: &str = "ca.crl";
    /// Mobile CA certificate.
    pub const MOBILE_CA_CERT: &str = "mobile-ca.crt";
    /// Mobile CA private key (mode 0600).
    pub const MOBILE_CA_KEY: &str = "mobile-ca.key";
    /// Mobile CA revocation list.
    pub const MOBILE_CA_CRL: &str = "mobile-ca.crl";
}

/// Writes a private key PEM with mode 0600, atomically: the key goes to a temporary file
/// in the same directory, created with mode 0600, which is synced and then renamed over
/// `path` (the directory is synced too). A crash or a full disk leaves either the old file
/// or the new one, never a truncated key.
///
/// # Errors
/// [`FileError::Io`] naming the path.
pub fn write_private_key(path: &Path, pem: &str) -> Result<()> {
    write_atomic(path, pem.as_bytes(), 0o600)
}

/// Writes a public file (certificate, chain or CRL) with mode 0644 (less the umask),
/// atomically as [`write_private_key`] does.
///
/// # Errors
/// [`FileError::Io`] naming the path.
pub fn write_public(path: &Path, pem: &str) -> Result<()> {
    write_atomic(path, pem.as_bytes(), 0o644)
}

/// Temporary files beside the target, `.<name>.<random>.tmp`; a few attempts in case a
/// name is taken (for example by a file left behind by a crash).
fn create_temp(dir: &Path, name: &str, mode: u32) -> Result<(PathBuf, fs::File)> {
    let mut attempt = 0;
    loop {
        let mut suffix = [0u8; 8];
        aws_lc_rs::rand::fill(&mut suffix).map_err(|_| {
            PkiError::Cert(CertError::Generation {
                what: "temporary file name",
                source: rcgen::Error::RingUnspecified,
            })
        })?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        match opts.open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                attempt += 1;
            }
            Err(e) => return Err(PkiError::io("create", &tmp)(e)),
        }
    }
}

/// Whether `file_name` is a temporary file [`write_atomic`] makes (`.NAME.<16 hex>.tmp`).
pub fn is_atomic_temporary(file_name: &str) -> bool {
    let Some(rest) = file_name
        .strip_prefix('.')
        .and_then(|r| r.strip_suffix(".tmp"))
    else {
        return false;
    };
    match rest.rsplit_once('.') {
        Some((name, suffix)) => {
            !name.is_empty() && suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Removes the temporary files that writes interrupted by a crash left in `dir` (see
/// [`write_atomic`]) and returns how many. Call it only while no other process writes to
/// `dir` (the server holds its data directory's lock when it does).
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(PkiError::io("list", dir))? {
        let entry = entry.map_err(PkiError::io("list", dir))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(is_atomic_temporary)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            let path = entry.path();
            fs::remove_file(&path).map_err(PkiError::io("remove", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Replaces `path` with `data` atomically: a temporary file beside it, created with
/// `mode` (on Unix), written and synced, renamed over `path`, then the directory synced.
/// A crash or a full disk leaves the old file or the new one, never a torn one. The
/// workspace's state files (registry, settings, epochs) are written this way too.
///
/// # Errors
/// [`FileError::Io`] naming the file and the step that failed.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            PkiError::io("write", path)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path names no file",
            ))
        })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (tmp, mut f) = create_temp(dir, &name, mode)?;
    let written = (|| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if mode & 0o077 == 0 {
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(PkiError::io("set permissions of", &tmp))?;
            }
        }
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(PkiError::io("write", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(PkiError::io("rename into", path))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(PkiError::io("sync directory", dir))?;
    Ok(())
}

/// Reads `path`, refusing a file over `max` bytes before reading it, and reading at most
/// `max + 1` bytes of one that grows meanwhile: the one bounded read of the workspace (the
/// server's state files and the agent's configuration and settings read through it too).
///
/// # Errors
/// [`FileError::Io`] (open, stat or read) or [`FileError::TooLarge`] naming `what`, each
/// naming the path.
pub fn read_bounded(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>> {
    let f = fs::File::open(path).map_err(PkiError::io("open", path))?;
    let len = f.metadata().map_err(PkiError::io("stat", path))?.len();
    let too_large = |len: u64| {
        PkiError::File(FileError::TooLarge {
            path: path.to_path_buf(),
            len,
            max,
            what,
        })
    };
    if len > max {
        return Err(too_large(len));
    }
    let mut buf = Vec::new();
    // `take` also bounds a file that grows while it is read.
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(PkiError::io("read", path))?;
    if buf.len() as u64 > max {
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}

fn read_bounded_text(path: &Path, max: u64, what: &'static str) -> Result<String> {
    String::from_utf8(read_bounded(path, max, what)?).map_err(|e| {
        PkiError::io("read", path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })
}

/// Reads a private key file, refusing one the group or others may access and one that does
/// not hold a well-formed key.
///
/// # Errors
/// [`FileError::KeyTooOpen`], [`FileError::TooLarge`], [`KeyError::Malformed`] or
/// [`FileError::Io`], each naming the path.
pub fn read_private_key(path: &Path) -> Result<KeyPair> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(PkiError::io("stat", path))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PkiError::File(FileError::KeyTooOpen {
                path: path.to_path_buf(),
                mode,
            }));
        }
    }
    let text = read_bounded_text(path, MAX_KEY_FILE, "private key")?;
    if !text.contains("-----BEGIN") {
        return Err(PkiError::Key(KeyError::NoPemBlock {
            what: path.display().to_string(),
        }));
    }
    KeyPair::from_pem(&text).map_err(|source| {
        PkiError::Key(KeyError::Malformed {
            what: path.display().to_string(),
            source,
        })
    })
}

/// Reads a private key file as PKCS#8 DER (for [`crate::IssuedCert::from_parts`] and rustls).
///
/// # Errors
/// As [`read_private_key`].
pub fn read_private_key_der(path: &Path) -> Result<PrivatePkcs8KeyDer<'static>> {
    let key = read_private_key(path)?;
    Ok(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// Reads every `CERTIFICATE` block of a PEM file, in order (a chain file reads as a chain).
///
/// # Errors
/// [`FileError::MalformedPem`] if there is none, [`FileError::TooLarge`] or [`FileError::Io`].
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let text = read_bounded_text(path, MAX_CERT_FILE, "certificate")?;
    parse_certificates(&text, path)
}

/// Every `CERTIFICATE` block of PEM text held in memory, in order; `origin` names where the
/// text came from in an error (a file, or a request's field).
///
/// # Errors
/// [`FileError::MalformedPem`] if there is none or a block is malformed.
pub fn parse_certificates(text: &str, origin: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |reason: String| {
        PkiError::File(FileError::MalformedPem {
            path: origin.to_path_buf(),
            what: "CERTIFICATE",
            reason,
        })
    };
    let blocks = all_pem_blocks(text, "CERTIFICATE").map_err(bad)?;
    if blocks.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    Ok(blocks.into_iter().map(CertificateDer::from).collect())
}

/// Reads a CA certificate file and checks that it is a CA.
///
/// # Errors
/// As [`read_certificates`] and [`CaCertificate::from_der`].
pub fn read_ca_certificate(path: &Path) -> Result<CaCertificate> {
    let first = read_certificates(path)?.into_iter().next().ok_or_else(|| {
        PkiError::File(FileError::MalformedPem {
            path: path.to_path_buf(),
            what: "CERTIFICATE",
            reason: "empty".to_owned(),
        })
    })?;
    CaCertificate::from_der(first)
}

/// Reads a CRL PEM file.
///
/// # Errors
/// [`FileError::MalformedPem`], [`FileError::TooLarge`] or [`FileError::Io`].
pub fn read_crl(path: &Path) -> Result<Crl> {
    let text = read_bounded_text(path, MAX_CRL_FILE, "CRL")?;
    let der = all_pem_blocks(&text, "X509 CRL")
        .map_err(|reason| {
            PkiError::File(FileError::MalformedPem {
                path: path.to_path_buf(),
                what: "X509 CRL",
                reason,
            })
        })?
        .into_iter()
        .next()
        .ok_or_else(|| {
            PkiError::File(FileError::MalformedPem {
                path: path.to_path_buf(),
                what: "X509 CRL",
                reason: "no X509 CRL block".to_owned(),
            })
        })?;
    Ok(Crl::from_der(der))
}

/// Reads a CSR file (PEM or DER), bounded by [`crate::MAX_CSR_LEN`].
///
/// # Errors
/// [`FileError::TooLarge`] or [`FileError::Io`].
pub fn read_csr_file(path: &Path) -> Result<Vec<u8>> {
    read_bounded(path, crate::csr::MAX_CSR_LEN as u64, "CSR")
}

fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The files of one CA inside the CA directory: (certificate, key, CRL).
fn files_of(kind: CaKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        CaKind::Mobile => (
            files::MOBILE_CA_CERT,
            files::MOBILE_CA_KEY,
            files::MOBILE_CA_CRL,
        ),
        CaKind::Server => (files::CA_CERT, files::CA_KEY, files::CA_CRL),
    }
}

/// What a set of files looked like (modification time and length of each; `None` for one
/// that cannot be read), to notice when one of them is rewritten: every write here replaces
/// a file by renaming a new one over it, which changes both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamps(Vec<Option<(SystemTime, u64)>>);

impl FileStamps {
    /// The stamps of `files` now.
    pub fn of(files: &[PathBuf]) -> Self {
        FileStamps(
            files
                .iter()
                .map(|f| {
                    let m = fs::metadata(f).ok()?;
                    Some((m.modified().ok()?, m.len()))
                })
                .collect(),
        )
    }

    /// Whether a file readable in `earlier` cannot be read now.
    pub fn lost_since(&self, earlier: &FileStamps) -> bool {
        earlier
            .0
            .iter()
            .zip(&self.0)
            .any(|(was, is)| was.is_some() && is.is_none())
    }
}

/// Writes both CAs (certificates, keys with mode 0600, fresh CRLs) into `dir`, creating it.
/// Each file is replaced atomically (see [`write_private_key`]).
///
/// # Errors
/// [`FileError::Io`] naming the path, or a CRL signing failure.
pub fn save_server_ca(ca: &mut ServerCa, dir: &Path, now: SystemTime) -> Result<()> {
    fs::create_dir_all(dir).map_err(PkiError::io("create directory", dir))?;
    for kind in [CaKind::Server, CaKind::Mobile] {
        let (cert, key, crl) = files_of(kind);
        let list = ca.crl(kind, now)?;
        let auth = ca.authority(kind);
        write_private_key(&join(dir, key), &auth.private_key_pem())?;
        write_public(&join(dir, cert), &auth.certificate().to_pem())?;
        write_public(&join(dir, crl), &list.to_pem())?;
    }
    Ok(())
}

/// Writes a fresh CRL of one CA into the CA directory `dir` (the file [`save_server_ca`]
/// wrote for it), atomically, and returns its path. This is all a revocation changes on
/// disk: keys and certificates are left alone.
///
/// # Errors
/// [`FileError::Io`] naming the path, or a CRL signing failure.
pub fn save_crl(ca: &mut ServerCa, kind: CaKind, dir: &Path, now: SystemTime) -> Result<PathBuf> {
    let list = ca.crl(kind, now)?;
    let path = join(dir, files_of(kind).2);
    write_public(&path, &list.to_pem())?;
    Ok(path)
}

/// A server's state directory from nothing: both CAs ([`save_server_ca`]) and a server
/// certificate for `dns_names` as `server.chain.pem` and `server.key` (0600). Returns the CA.
///
/// # Errors
/// As [`save_server_ca`] and [`ServerCa::issue_server`].
pub fn init_server_dir(
    dir: &Path,
    common_name: &str,
    dns_names: &[String],
    now: SystemTime,
) -> Result<ServerCa> {
    let mut ca = ServerCa::create(PkiConfig::default(), now)?;
    save_server_ca(&mut ca, dir, now)?;
    let server = ca.issue_server(common_name, dns_names, &[], now)?;
    write_public(&dir.join("server.chain.pem"), &server.chain_pem())?;
    write_private_key(&dir.join("server.key"), &server.key_pem())?;
    Ok(ca)
}

/// Loads both CAs from `dir` (as written by [`save_server_ca`]), restoring their revocation
/// lists from the CRL files. A CA whose CRL file is missing is refused: loading it would
/// forget every revocation.
///
/// # Errors
/// Any read error naming the file, [`CrlError::Missing`], [`CertError::NotACa`],
/// [`KeyError::Mismatch`], [`CrlError::Malformed`] or
/// [`InputError::InvalidConfig`](crate::InputError::InvalidConfig).
pub fn load_server_ca(dir: &Path, config: PkiConfig) -> Result<ServerCa> {
    let load = |kind: CaKind| -> Result<CertificateAuthority> {
        let (cert, key, crl) = files_of(kind);
        let cert = read_ca_certificate(&join(dir, cert))?;
        let key = read_private_key(&join(dir, key))?;
        let mut auth = CertificateAuthority::from_parts(cert, key)?;
        let crl_path = join(dir, crl);
        let list = match read_crl(&crl_path) {
            Err(PkiError::File(FileError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(PkiError::Crl(CrlError::Missing { path: crl_path }));
            }
            other => other?,
        };
        auth.load_crl(&list)?;
        Ok(auth)
    };
    let root = load(CaKind::Server)?;
    let mobile = load(CaKind::Mobile)?;
    ServerCa::from_parts(config, root, mobile)
}
