//! Reading certificates back: DER parsing and the fields this crate writes (role, common
//! name, subjectAltName, virtual server).

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::Role;
use super::profile::VIRTUAL_SERVER_URI_PREFIX;
use crate::error::{CertError, PkiError, Result};

pub(crate) fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| {
        PkiError::Cert(CertError::Malformed {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    })?;
    if !rest.is_empty() {
        return Err(PkiError::Cert(CertError::Malformed {
            what: what.to_owned(),
            reason: format!("{} trailing bytes", rest.len()),
        }));
    }
    Ok(cert)
}

pub(crate) fn role_of(cert: &X509Certificate<'_>) -> Option<Role> {
    cert.subject()
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok())
        .find_map(Role::from_tag)
}

pub(crate) fn common_name_of(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned)
}

/// The virtual server a certificate's subjectAltName binds it to, if any.
pub(crate) fn virtual_server_of(cert: &X509Certificate<'_>) -> Option<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return None;
    };
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix(VIRTUAL_SERVER_URI_PREFIX).map(str::to_owned),
        _ => None,
    })
}

/// The DNS names and IP addresses of a certificate's subjectAltName.
pub(crate) fn san_of(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push((*n).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => {
                        let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
                        ips.push(IpAddr::from(a));
                    }
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        ips.push(IpAddr::from(a));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    (dns, ips)
}
