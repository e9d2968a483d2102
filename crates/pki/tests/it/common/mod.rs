//! Fixtures and certificate readers shared by the integration tests.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_pki::{PkiConfig, ServerCa};
use x509_parser::prelude::*;

/// 2026-11-21T08:00:00Z: every test runs at fixed, injected times.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_248_000)
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

pub fn ca() -> ServerCa {
    ServerCa::create(PkiConfig::default(), t0()).expect("create CA")
}

pub fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Extended key usages of a certificate: (serverAuth, clientAuth).
pub fn eku(der: &[u8]) -> (bool, bool) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let e = cert
        .extended_key_usage()
        .unwrap()
        .expect("EKU present")
        .value;
    (e.server_auth, e.client_auth)
}

pub fn is_ca(der: &[u8]) -> bool {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.basic_constraints()
        .unwrap()
        .is_some_and(|b| b.value.ca)
}

pub fn dns_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let mut out = Vec::new();
    if let Some(san) = cert.subject_alternative_name().unwrap() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                out.push((*d).to_owned());
            }
        }
    }
    out
}

pub fn san_count(der: &[u8]) -> usize {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map_or(0, |s| s.value.general_names.len())
}

pub fn spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.public_key().raw.to_vec()
}

pub fn issuer(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.issuer().to_string()
}

pub fn subject(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.subject().to_string()
}

pub fn validity(der: &[u8]) -> (i64, i64) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}
