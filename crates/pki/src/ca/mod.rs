//! Certificate authorities and typed issuance.
//!
//! - [`role`]: what a certificate is for ([`Role`]), written into its subject;
//! - [`profile`]: the validated identity a certificate is issued for ([`CertProfile`]);
//! - [`certificate`]: serials, issued certificates and checked CA certificates;
//! - [`authority`]: one CA, its key and issuance ([`CertificateAuthority`]);
//! - [`crl`]: revocation lists and CRLs;
//! - [`server`]: the Administration Server's server and mobile CAs ([`ServerCa`]);
//! - [`parse`]: reading back what this crate writes into a certificate.

mod authority;
mod certificate;
mod crl;
mod parse;
mod profile;
mod role;
mod server;

pub use authority::CertificateAuthority;
pub use certificate::{CaCertificate, CertInfo, IssuedCert, Serial, SignedCert};
pub use crl::{Crl, Revocation};
pub(crate) use parse::{common_name_of, parse_cert, role_of, san_of, virtual_server_of};
pub use profile::CertProfile;
pub use role::Role;
pub use server::{CaKind, ServerCa};
