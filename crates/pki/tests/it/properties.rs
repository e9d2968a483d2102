//! Property tests: gateway names, the CRL codec, serial and name codecs, and the CSR decoder
//! on arbitrary input; plus the replay of the fuzz corpus.

use crate::common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use common::*;
use outpost_pki::{
    CaKind, CertificateAuthority, PkiError, Serial, ServerCa, VerifyError,
    check_server_certificate, validate_dns_name,
};
use proptest::prelude::*;

fn shared_ca() -> &'static ServerCa {
    static CA: OnceLock<ServerCa> = OnceLock::new();
    CA.get_or_init(ca)
}

/// One DNS label: starts with a letter (so the last label is never numeric).
fn label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,8}[a-z0-9])?"
}

fn dns_name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any set of valid DNS names given for a gateway appears exactly in its SAN, and the
    /// certificate verifies for each of them and for no other name.
    #[test]
    fn gateway_san_is_exactly_the_given_names(
        set in prop::collection::btree_set(dns_name(), 1..6),
        others in prop::collection::vec(dns_name(), 1..4),
    ) {
        let ca = shared_ca();
        let given: Vec<String> = set.iter().cloned().collect();
        let gw = ca.issue_gateway(&given, &[], t0()).unwrap();
        prop_assert_eq!(dns_sans(&gw.cert_der), given.clone());
        prop_assert_eq!(san_count(&gw.cert_der), given.len());
        for name in &given {
            prop_assert!(check_server_certificate(&gw.cert_der, name, ca.server_ca(), &[], t0()).is_ok());
        }
        // Names near the given ones and unrelated names all fail.
        let mut probes: Vec<String> = others;
        for name in &given {
            probes.push(format!("x{name}"));
            probes.push(format!("a.{name}"));
            if let Some((_, parent)) = name.split_once('.') {
                probes.push(parent.to_owned());
            }
        }
        for probe in probes.iter().filter(|p| !set.contains(*p)) {
            let r = check_server_certificate(&gw.cert_der, probe, ca.server_ca(), &[], t0());
            let is_mismatch = matches!(r, Err(PkiError::Verify(VerifyError::NameMismatch { .. })));
            prop_assert!(is_mismatch, "{} accepted for {:?}: {:?}", probe, given, r);
        }
    }

    /// A name is accepted exactly when it follows the documented rules; never a panic.
    #[test]
    fn dns_validation_matches_the_rules(s in "[a-zA-Z0-9.*_ -]{0,70}") {
        let ok = validate_dns_name(&s).is_ok();
        let labels: Vec<&str> = s.split('.').collect();
        let rules = !s.is_empty()
            && s.len() <= 253
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
            && !labels.last().unwrap().bytes().all(|b| b.is_ascii_digit());
        prop_assert_eq!(ok, rules, "{:?}", s);
        if ok {
            prop_assert_eq!(validate_dns_name(&s).unwrap(), s.to_ascii_lowercase());
        }
    }

    /// Serial numbers round-trip through their hex form.
    #[test]
    fn serial_hex_round_trip(bytes in prop::collection::vec(any::<u8>(), 1..21)) {
        match Serial::from_bytes(&bytes) {
            Ok(s) => {
                prop_assert_eq!(Serial::from_hex(&s.to_string()).unwrap(), s.clone());
                let start = bytes.iter().position(|b| *b != 0).unwrap();
                prop_assert_eq!(s.as_bytes(), &bytes[start..]);
            }
            Err(_) => prop_assert!(bytes.iter().all(|b| *b == 0)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// CRL codec: any set of revoked serials survives CRL encoding and decoding exactly.
    #[test]
    fn crl_round_trip(serials in prop::collection::btree_set(prop::collection::vec(any::<u8>(), 1..20), 0..20)) {
        let mut ca = ca();
        let mut expected = BTreeSet::new();
        for bytes in &serials {
            if let Ok(s) = Serial::from_bytes(bytes) {
                ca.authority_mut(CaKind::Server).revoke(s.clone(), t0()).unwrap();
                expected.insert(s);
            }
        }
        let crl = ca.crl(CaKind::Server, t0()).unwrap();
        let root = ca.authority(CaKind::Server);
        let mut loaded = CertificateAuthority::from_pem(&root.certificate().to_pem(), &root.private_key_pem()).unwrap();
        loaded.load_crl(&crl).unwrap();
        let got: BTreeSet<Serial> = loaded.revocations().iter().map(|r| r.serial.clone()).collect();
        prop_assert_eq!(got, expected);
        // And through PEM text.
        let again = outpost_pki::Crl::from_pem(&crl.to_pem()).unwrap();
        prop_assert_eq!(again, crl);
    }
}
