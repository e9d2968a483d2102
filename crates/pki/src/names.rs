//! Validation of the names that go into certificates: DNS names, IP addresses and device
//! identities.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::error::{InputError, NameError, PkiError, Result};

/// Longest DNS name accepted (RFC 1035 §2.3.4, without the trailing dot).
pub const MAX_DNS_NAME_LEN: usize = 253;
/// Longest DNS label accepted (RFC 1035 §2.3.4).
pub const MAX_DNS_LABEL_LEN: usize = 63;
/// Longest device identity accepted (it becomes the certificate's common name, at most 64).
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Most subject alternative names one certificate may carry.
pub const MAX_SAN_ENTRIES: usize = 100;

/// Checks that `name` is a host name a certificate may carry (RFC 1123 syntax) and returns
/// it in lower case.
///
/// Rules: 1 to 253 characters, dot-separated labels of 1 to 63 letters, digits and hyphens,
/// no label starting or ending with a hyphen, the last label not all digits (that would be an
/// IP address: give those as addresses), no wildcards, no trailing dot.
///
/// # Errors
/// [`NameError::InvalidDnsName`] naming the value and the rule it breaks.
///
/// ```
/// assert_eq!(outpost_pki::validate_dns_name("GW1.Example.com").unwrap(), "gw1.example.com");
/// assert!(outpost_pki::validate_dns_name("gw_1.example.com").is_err());
/// ```
pub fn validate_dns_name(name: &str) -> Result<String> {
    let bad = |reason| {
        PkiError::Name(NameError::InvalidDnsName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(bad("longer than 253 characters"));
    }
    if name.ends_with('.') {
        return Err(bad("trailing dot"));
    }
    if name.contains('*') {
        return Err(bad("wildcards are not issued"));
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > MAX_DNS_LABEL_LEN {
            return Err(bad("label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("label starts or ends with '-'"));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "last label is numeric (give IP addresses as addresses)",
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Checks a device identity (an agent's or a mobile device's): 1 to 64 characters of
/// letters, digits and `-`, `_`, `.`, `:`, `@`.
///
/// # Errors
/// [`NameError::InvalidIdentity`] naming the value and the rule it breaks.
pub fn validate_device_id(id: &str) -> Result<()> {
    Ok(validate_identity("device id", id)?)
}

/// Checks an identity (a device id, a common name, ...; `what` names it in the error).
pub(crate) fn validate_identity(what: &'static str, value: &str) -> Result<(), NameError> {
    let bad = |reason| NameError::InvalidIdentity {
        what,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("empty"));
    }
    if value.len() > MAX_DEVICE_ID_LEN {
        return Err(bad("longer than 64 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b' '))
    {
        return Err(bad("only letters, digits, space and - _ . : @ are allowed"));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(bad("leading or trailing space"));
    }
    Ok(())
}

/// Validates a set of DNS names and IP addresses for one certificate: every name valid, no
/// duplicates (names compare case-insensitively), at most [`MAX_SAN_ENTRIES`] entries.
/// Returns the names in lower case, in the order given.
pub(crate) fn validate_san_set(
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<(Vec<String>, Vec<IpAddr>)> {
    if dns_names.len().saturating_add(ips.len()) > MAX_SAN_ENTRIES {
        return Err(PkiError::Input(InputError::InvalidConfig {
            field: "subject alternative names",
            value: (dns_names.len() + ips.len()).to_string(),
            reason: format!("names and addresses given, at most {MAX_SAN_ENTRIES} allowed"),
        }));
    }
    let mut seen = BTreeSet::new();
    let mut names = Vec::with_capacity(dns_names.len());
    for n in dns_names {
        let v = validate_dns_name(n)?;
        if !seen.insert(v.clone()) {
            return Err(PkiError::Name(NameError::Duplicate { name: n.clone() }));
        }
        names.push(v);
    }
    let mut seen_ip = BTreeSet::new();
    for ip in ips {
        if !seen_ip.insert(*ip) {
            return Err(PkiError::Name(NameError::Duplicate {
                name: ip.to_string(),
            }));
        }
    }
    Ok((names, ips.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "gw",
            "gw-1.example.com",
            "a.b.c.d.e",
            "xn--bcher-kva.example",
            "1a.example",
        ] {
            assert!(validate_dns_name(n).is_ok(), "{n}");
        }
        let long_label = "a".repeat(63);
        assert!(validate_dns_name(&format!("{long_label}.example")).is_ok());
    }

    #[test]
    fn refuses_bad_names_with_reason() {
        let cases = [
            ("", "empty"),
            ("gw..example", "empty label"),
            ("-gw.example", "label starts or ends with '-'"),
            ("gw-.example", "label starts or ends with '-'"),
            (
                "gw_1.example",
                "only letters, digits, '-' and '.' are allowed",
            ),
            (
                "gw example",
                "only letters, digits, '-' and '.' are allowed",
            ),
            ("*.example.com", "wildcards are not issued"),
            ("gw.example.", "trailing dot"),
            (
                "10.0.0.1",
                "last label is numeric (give IP addresses as addresses)",
            ),
            (
                "gw.ex\u{e4}mple",
                "only letters, digits, '-' and '.' are allowed",
            ),
        ];
        for (name, why) in cases {
            match validate_dns_name(name) {
                Err(PkiError::Name(NameError::InvalidDnsName { name: n, reason })) => {
                    assert_eq!(n, name);
                    assert_eq!(reason, why, "{name}");
                }
                other => panic!("{name:?} gave {other:?}"),
            }
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(validate_dns_name(&long).is_err());
        let too_long = vec!["abcdefghi"; 26].join(".");
        assert!(too_long.len() > 253);
        assert!(validate_dns_name(&too_long).is_err());
    }

    #[test]
    fn san_set_refuses_duplicates() {
        let names = vec!["gw.example".to_owned(), "GW.example".to_owned()];
        let err = validate_san_set(&names, &[]).unwrap_err();
        assert!(
            matches!(err, PkiError::Name(NameError::Duplicate { name }) if name == "GW.example")
        );
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(validate_san_set(&[], &[ip, ip]).is_err());
    }

    #[test]
    fn device_ids() {
        assert!(validate_device_id("host-42.corp:7f3a").is_ok());
        assert!(validate_device_id("").is_err());
        assert!(validate_device_id(&"x".repeat(65)).is_err());
        let err = validate_device_id("a/b").unwrap_err().to_string();
        assert!(err.contains("\"a/b\""), "{err}");
    }
}
