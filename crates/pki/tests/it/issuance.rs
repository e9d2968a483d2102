//! Every issuance path, and every way a certificate or request is refused.

use crate::common;

use std::net::IpAddr;

use common::*;
use outpost_pki::{
    CaCertificate, CaKind, CertError, CertProfile, CertificateAuthority, CrlError,
    CsrCaRequestPolicy, CsrError, KeyAlgorithm, KeyError, NameError, PeerIdentity, PkiConfig,
    PkiError, Role, ServerCa, VerifyError, check_client_certificate, check_server_certificate,
    decode_csr,
};

#[test]
fn server_certificate_has_server_and_client_auth() {
    let ca = ca();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let s = ca
        .issue_server("admin-server", &names(&["ksc.corp.example"]), &[ip], t0())
        .unwrap();
    assert_eq!(eku(&s.cert_der), (true, true));
    assert!(!is_ca(&s.cert_der));
    assert_eq!(s.info.profile.role(), Role::Server);
    assert!(subject(&s.cert_der).contains("OU=outpost-server"));
    assert!(subject(&s.cert_der).contains("CN=admin-server"));
    assert_eq!(issuer(&s.cert_der), ca.server_ca().subject());
    assert_eq!(s.chain.len(), 2);
    assert_eq!(&s.chain[1], ca.server_ca().der());
    check_server_certificate(&s.cert_der, "ksc.corp.example", ca.server_ca(), &[], t0()).unwrap();
    check_server_certificate(&s.cert_der, "127.0.0.1", ca.server_ca(), &[], t0()).unwrap();
    check_client_certificate(&s.cert_der, ca.server_ca(), &[], t0()).unwrap();
    // Lifetime: 397 days from now, started 300 s early for clock skew.
    let (nb, na) = validity(&s.cert_der);
    let now = 1_795_248_000i64;
    assert_eq!(nb, now - 300);
    assert_eq!(na, now + 397 * 86_400);
    assert_eq!(s.info.not_after.unix_seconds(), na);
}

#[test]
fn gateway_certificate_embeds_every_name_and_address() {
    let ca = ca();
    let ips: Vec<IpAddr> = vec![
        "192.0.2.10".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ];
    let gw = ca
        .issue_gateway(
            &names(&["GW.Example.com", "dmz-gw.example.net"]),
            &ips,
            t0(),
        )
        .unwrap();
    assert_eq!(
        dns_sans(&gw.cert_der),
        ["gw.example.com", "dmz-gw.example.net"]
    );
    assert_eq!(san_count(&gw.cert_der), 4);
    assert_eq!(eku(&gw.cert_der), (true, true));
    assert!(subject(&gw.cert_der).contains("OU=outpost-gateway"));
    for host in [
        "gw.example.com",
        "GW.EXAMPLE.COM",
        "dmz-gw.example.net",
        "192.0.2.10",
        "2001:db8::1",
    ] {
        check_server_certificate(&gw.cert_der, host, ca.server_ca(), &[], t0())
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    // The profile reads back from the certificate.
    let back = CertProfile::from_certificate(&gw.cert_der).unwrap();
    assert_eq!(back, gw.info.profile);
}

#[test]
fn agent_certificate_is_client_only_and_bound_to_device() {
    let ca = ca();
    let a = ca.issue_agent("device-7f3a", t0()).unwrap();
    assert_eq!(eku(&a.cert_der), (false, true));
    assert_eq!(san_count(&a.cert_der), 0);
    let id = check_client_certificate(&a.cert_der, ca.server_ca(), &[], t0()).unwrap();
    assert_eq!(id.common_name.as_deref(), Some("device-7f3a"));
    assert_eq!(id.role, Some(Role::Agent));
    // Not usable as a TLS server certificate.
    let err = check_server_certificate(&a.cert_der, "device-7f3a", ca.server_ca(), &[], t0())
        .unwrap_err();
    assert!(
        matches!(err, PkiError::Verify(VerifyError::WrongUsage { .. })),
        "{err}"
    );
}

#[test]
fn mobile_certificate_comes_from_the_mobile_ca() {
    let ca = ca();
    let m = ca.issue_mobile("phone-0042", t0()).unwrap();
    assert_eq!(issuer(&m.cert_der), ca.mobile_ca().subject());
    assert_eq!(eku(&m.cert_der), (false, true));
    check_client_certificate(&m.cert_der, ca.mobile_ca(), &[], t0()).unwrap();
    let err = check_client_certificate(&m.cert_der, ca.server_ca(), &[], t0()).unwrap_err();
    assert!(
        matches!(err, PkiError::Verify(VerifyError::WrongIssuer { .. })),
        "{err}"
    );
}

#[test]
fn every_key_algorithm_issues_and_verifies() {
    for (ca_alg, leaf_alg) in [
        (KeyAlgorithm::EcdsaP384, KeyAlgorithm::EcdsaP256),
        (KeyAlgorithm::Ed25519, KeyAlgorithm::Ed25519),
        (KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa2048),
        (KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa3072),
    ] {
        let mut cfg = PkiConfig::default();
        cfg.ca_key_algorithm = ca_alg;
        cfg.leaf_key_algorithm = leaf_alg;
        let ca = ServerCa::create(cfg, t0()).unwrap();
        let gw = ca
            .issue_gateway(&names(&["gw.example.com"]), &[], t0())
            .unwrap();
        check_server_certificate(&gw.cert_der, "gw.example.com", ca.server_ca(), &[], t0())
            .unwrap_or_else(|e| panic!("{ca_alg}/{leaf_alg}: {e}"));
    }
}

#[test]
fn leaf_lifetime_is_capped_at_the_ca_lifetime() {
    let mut cfg = PkiConfig::default();
    cfg.ca_validity_days = 30;
    let ca = ServerCa::create(cfg, t0()).unwrap();
    let a = ca.issue_agent("dev", t0()).unwrap();
    assert_eq!(a.info.not_after, ca.server_ca().not_after());
    // Never starts before the CA either.
    assert_eq!(a.info.not_before, ca.server_ca().not_before());
    // After the CA expired nothing is issued.
    let err = ca.issue_agent("dev", t0() + days(31)).unwrap_err();
    assert!(
        matches!(err, PkiError::Cert(CertError::CaNotValid { .. })),
        "{err}"
    );
}

#[test]
fn ca_round_trips_through_pem_and_keeps_issuing() {
    let ca = ca();
    let root = ca.authority(CaKind::Server);
    let loaded =
        CertificateAuthority::from_pem(&root.certificate().to_pem(), &root.private_key_pem())
            .unwrap();
    assert_eq!(loaded.certificate(), root.certificate());
    let mobile = ca.authority(CaKind::Mobile);
    let loaded_mobile =
        CertificateAuthority::from_pem(&mobile.certificate().to_pem(), &mobile.private_key_pem())
            .unwrap();
    let again = ServerCa::from_parts(PkiConfig::default(), loaded, loaded_mobile).unwrap();
    let gw = again
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    // Verifies against the original CA certificate.
    check_server_certificate(&gw.cert_der, "gw.example.com", ca.server_ca(), &[], t0()).unwrap();
}

#[test]
fn issued_cert_reads_back_from_parts() {
    let ca = ca();
    let gw = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let back =
        outpost_pki::IssuedCert::from_parts(gw.chain.clone(), gw.key_der.clone_key()).unwrap();
    assert_eq!(back.info, gw.info);
    let other = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let err = outpost_pki::IssuedCert::from_parts(gw.chain.clone(), other.key_der.clone_key())
        .unwrap_err();
    assert!(
        matches!(err, PkiError::Key(KeyError::Mismatch { .. })),
        "{err}"
    );
}

#[test]
fn peer_identity_fingerprint_is_sha256_of_der() {
    let ca = ca();
    let a = ca.issue_agent("dev-1", t0()).unwrap();
    let id = PeerIdentity::from_der(&a.cert_der).unwrap();
    let digest = aws_lc_rs_digest(&a.cert_der);
    assert_eq!(id.sha256, digest);
    assert_eq!(id.fingerprint().len(), 32 * 3 - 1);
    assert_eq!(id.serial, a.info.serial);
    // Two certificates never share a fingerprint or a serial.
    let b = ca.issue_agent("dev-1", t0()).unwrap();
    let id_b = PeerIdentity::from_der(&b.cert_der).unwrap();
    assert_ne!(id.sha256, id_b.sha256);
    assert_ne!(id.serial, id_b.serial);
}

fn aws_lc_rs_digest(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut a = [0u8; 32];
    a.copy_from_slice(d.as_ref());
    a
}

// ---- CSR signing -------------------------------------------------------------------------

fn rcgen_csr(ca_request: bool, sans: &[&str]) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "requester-chosen");
    if ca_request {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let csr = params.serialize_request(&key).unwrap();
    (csr.der().to_vec(), key)
}

#[test]
fn csr_gets_only_what_the_server_decides() {
    let ca = ca();
    let (csr, key) = rcgen_csr(false, &["evil.example.com", "gw.example.com"]);
    let profile = CertProfile::gateway(&names(&["gw.example.com"]), &[]).unwrap();
    let signed = ca.sign_csr(&csr, &profile, t0()).unwrap();
    assert_eq!(dns_sans(&signed.cert_der), ["gw.example.com"]);
    assert!(!is_ca(&signed.cert_der));
    assert!(!subject(&signed.cert_der).contains("requester-chosen"));
    assert_eq!(
        spki(&signed.cert_der),
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
    let err = check_server_certificate(
        &signed.cert_der,
        "evil.example.com",
        ca.server_ca(),
        &[],
        t0(),
    )
    .unwrap_err();
    assert!(
        matches!(err, PkiError::Verify(VerifyError::NameMismatch { .. })),
        "{err}"
    );
    check_server_certificate(
        &signed.cert_der,
        "gw.example.com",
        ca.server_ca(),
        &[],
        t0(),
    )
    .unwrap();
    let info = decode_csr(&csr).unwrap();
    assert_eq!(
        info.requested_names,
        ["DNS:evil.example.com", "DNS:gw.example.com"]
    );
}

#[test]
fn csr_asking_for_ca_rights_is_refused_or_gets_none() {
    let (csr, _) = rcgen_csr(true, &["gw.example.com"]);
    let profile = CertProfile::gateway(&names(&["gw.example.com"]), &[]).unwrap();
    let ca = ca();
    let err = ca.sign_csr(&csr, &profile, t0()).unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::Csr(CsrError::RequestsCa {
                what: "basicConstraints CA:TRUE",
                ..
            })
        ),
        "{err}"
    );
    let mut cfg = PkiConfig::default();
    cfg.csr_ca_request = CsrCaRequestPolicy::Ignore;
    let lenient = ServerCa::create(cfg, t0()).unwrap();
    let signed = lenient.sign_csr(&csr, &profile, t0()).unwrap();
    assert!(!is_ca(&signed.cert_der));
    // It cannot be used as a trust anchor.
    let err = CaCertificate::from_der(signed.cert_der.clone()).unwrap_err();
    assert!(
        matches!(err, PkiError::Cert(CertError::NotACa { .. })),
        "{err}"
    );
}

#[test]
fn openssl_csrs_from_the_corpus_sign_correctly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/pki_csr");
    let ca = ca();
    let profile = CertProfile::agent("csr-device").unwrap();
    for file in [
        "valid_p256_san.pem",
        "valid_rsa2048.der",
        "valid_ed25519.pem",
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let signed = ca
            .sign_csr(&bytes, &profile, t0())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            spki(&signed.cert_der),
            decode_csr(&bytes).unwrap().spki_der,
            "{file}"
        );
        assert_eq!(san_count(&signed.cert_der), 0, "{file}");
        check_client_certificate(&signed.cert_der, ca.server_ca(), &[], t0()).unwrap();
    }
    let asks_ca = std::fs::read(dir.join("asks_ca.pem")).unwrap();
    assert!(matches!(
        ca.sign_csr(&asks_ca, &profile, t0()),
        Err(PkiError::Csr(CsrError::RequestsCa { .. }))
    ));
    let weak = std::fs::read(dir.join("rsa1024_too_small.pem")).unwrap();
    assert!(matches!(
        decode_csr(&weak),
        Err(PkiError::Key(KeyError::RsaTooSmall { bits: 1024 }))
    ));
    let bad_sig = std::fs::read(dir.join("bad_signature.der")).unwrap();
    assert!(matches!(
        decode_csr(&bad_sig),
        Err(PkiError::Csr(CsrError::BadSignature { .. }))
    ));
}

#[test]
fn oversized_csr_is_refused_before_parsing() {
    let big = vec![0x30u8; outpost_pki::MAX_CSR_LEN + 1];
    assert!(matches!(
        decode_csr(&big),
        Err(PkiError::Csr(CsrError::TooLarge { len, .. })) if len == outpost_pki::MAX_CSR_LEN + 1
    ));
}

// ---- Rejections --------------------------------------------------------------------------

#[test]
fn wrong_ca_is_refused() {
    let ca_a = ca();
    let ca_b = ca(); // same names, different keys
    let gw = ca_a
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let err = check_server_certificate(&gw.cert_der, "gw.example.com", ca_b.server_ca(), &[], t0())
        .unwrap_err();
    assert!(
        matches!(err, PkiError::Verify(VerifyError::WrongIssuer { .. })),
        "{err}"
    );
    let err = check_server_certificate(&gw.cert_der, "gw.example.com", ca_a.mobile_ca(), &[], t0())
        .unwrap_err();
    assert!(
        matches!(err, PkiError::Verify(VerifyError::WrongIssuer { .. })),
        "{err}"
    );
}

#[test]
fn name_not_in_certificate_is_refused() {
    let ca = ca();
    let gw = ca
        .issue_gateway(
            &names(&["gw.example.com"]),
            &["192.0.2.1".parse().unwrap()],
            t0(),
        )
        .unwrap();
    for host in [
        "other.example.com",
        "example.com",
        "x.gw.example.com",
        "192.0.2.2",
    ] {
        match check_server_certificate(&gw.cert_der, host, ca.server_ca(), &[], t0()) {
            Err(PkiError::Verify(VerifyError::NameMismatch { host: h, names, .. })) => {
                assert_eq!(h, host);
                assert_eq!(names, ["gw.example.com", "192.0.2.1"]);
            }
            other => panic!("{host}: {other:?}"),
        }
    }
    let err =
        check_server_certificate(&gw.cert_der, "bad host!", ca.server_ca(), &[], t0()).unwrap_err();
    assert!(
        matches!(err, PkiError::Name(NameError::InvalidHost { .. })),
        "{err}"
    );
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let ca = ca();
    let gw = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let check =
        |t| check_server_certificate(&gw.cert_der, "gw.example.com", ca.server_ca(), &[], t);
    check(t0() + days(396)).unwrap();
    match check(t0() + days(398)) {
        Err(PkiError::Verify(VerifyError::Expired { not_after, .. })) => {
            assert_eq!(not_after, gw.info.not_after)
        }
        other => panic!("{other:?}"),
    }
    match check(t0() - days(1)) {
        Err(PkiError::Verify(VerifyError::NotYetValid { not_before, .. })) => {
            assert_eq!(not_before, gw.info.not_before)
        }
        other => panic!("{other:?}"),
    }
    // A certificate issued ahead of time for a later start is not valid yet either.
    let later = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0() + days(10))
        .unwrap();
    let err =
        check_server_certificate(&later.cert_der, "gw.example.com", ca.server_ca(), &[], t0())
            .unwrap_err();
    assert!(
        matches!(err, PkiError::Verify(VerifyError::NotYetValid { .. })),
        "{err}"
    );
}

#[test]
fn revoked_is_refused_and_others_are_not() {
    let mut ca = ca();
    let gw = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let keep = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let agent = ca.issue_agent("dev-9", t0()).unwrap();
    let mobile = ca.issue_mobile("phone-9", t0()).unwrap();
    let (kind, serial, fresh) = ca.revoke(&gw.cert_der, t0()).unwrap();
    assert_eq!((kind, fresh), (CaKind::Server, true));
    assert_eq!(serial, gw.info.serial);
    assert!(
        !ca.revoke(&gw.cert_der, t0()).unwrap().2,
        "second revocation is a no-op"
    );
    ca.revoke(&agent.cert_der, t0()).unwrap();
    assert_eq!(ca.revoke(&mobile.cert_der, t0()).unwrap().0, CaKind::Mobile);
    let crl = ca.crl(CaKind::Server, t0()).unwrap();
    let mcrl = ca.crl(CaKind::Mobile, t0()).unwrap();
    let crls = [crl.clone(), mcrl.clone()];
    match check_server_certificate(&gw.cert_der, "gw.example.com", ca.server_ca(), &crls, t0()) {
        Err(PkiError::Verify(VerifyError::Revoked { serial, .. })) => {
            assert_eq!(serial, gw.info.serial.to_string())
        }
        other => panic!("{other:?}"),
    }
    check_server_certificate(
        &keep.cert_der,
        "gw.example.com",
        ca.server_ca(),
        &crls,
        t0(),
    )
    .unwrap();
    assert!(matches!(
        check_client_certificate(&agent.cert_der, ca.server_ca(), &crls, t0()),
        Err(PkiError::Verify(VerifyError::Revoked { .. }))
    ));
    assert!(matches!(
        check_client_certificate(&mobile.cert_der, ca.mobile_ca(), &crls, t0()),
        Err(PkiError::Verify(VerifyError::Revoked { .. }))
    ));
    // The CRL restores the revocation list into a freshly loaded CA.
    let root = ca.authority(CaKind::Server);
    let mut loaded =
        CertificateAuthority::from_pem(&root.certificate().to_pem(), &root.private_key_pem())
            .unwrap();
    loaded.load_crl(&crl).unwrap();
    assert_eq!(loaded.revocations(), root.revocations());
    // A CRL signed by another CA is refused.
    let err = loaded.load_crl(&mcrl).unwrap_err();
    assert!(
        matches!(err, PkiError::Crl(CrlError::Malformed { .. })),
        "{err}"
    );
    // A certificate from a foreign CA cannot be revoked here.
    let foreign = common::ca().issue_agent("x", t0()).unwrap();
    assert!(matches!(
        ca.revoke(&foreign.cert_der, t0()),
        Err(PkiError::Verify(VerifyError::WrongIssuer { .. }))
    ));
}

#[test]
fn ca_false_certificate_cannot_be_an_issuer() {
    let ca = ca();
    let gw = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let err = CaCertificate::from_pem(&gw.cert_pem()).unwrap_err();
    assert!(
        matches!(err, PkiError::Cert(CertError::NotACa { .. })),
        "{err}"
    );
    let err = CertificateAuthority::from_pem(&gw.cert_pem(), &gw.key_pem()).unwrap_err();
    assert!(
        matches!(err, PkiError::Cert(CertError::NotACa { .. })),
        "{err}"
    );
    // A certificate signed by the CA:false gateway key does not chain to the server CA.
    let gw_key = rcgen::KeyPair::try_from(gw.key_der.secret_pkcs8_der()).unwrap();
    let fake_issuer = rcgen::Issuer::from_ca_cert_der(&gw.cert_der, gw_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["victim.example.com".to_owned()]).unwrap();
    params.not_before = time_of(t0() - days(1));
    params.not_after = time_of(t0() + days(30));
    let forged = params.signed_by(&leaf_key, &fake_issuer).unwrap();
    let err = check_server_certificate(
        forged.der(),
        "victim.example.com",
        ca.server_ca(),
        &[],
        t0(),
    )
    .unwrap_err();
    assert!(
        matches!(err, PkiError::Verify(VerifyError::WrongIssuer { .. })),
        "{err}"
    );
    // Sent with the gateway certificate as intermediate, the chain is refused because that
    // intermediate is not a CA.
    let checker = outpost_pki::CertChecker::new(ca.server_ca(), &[]).unwrap();
    let chain = [forged.der().clone(), gw.cert_der.clone()];
    let err = checker
        .check_server_chain(&chain, "victim.example.com", t0())
        .unwrap_err();
    assert!(
        matches!(err, PkiError::Verify(VerifyError::IssuerNotCa { .. })),
        "{err}"
    );
    // The chain an issued certificate carries (certificate, CA) verifies as a chain.
    checker
        .check_server_chain(&gw.chain, "gw.example.com", t0())
        .unwrap();
    assert!(matches!(
        checker.check_server_chain(&[], "gw.example.com", t0()),
        Err(PkiError::Cert(CertError::Malformed { .. }))
    ));
}

fn time_of(t: std::time::SystemTime) -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::from(t)
}

#[test]
fn key_that_does_not_match_the_ca_is_refused() {
    let ca = ca();
    let root = ca.authority(CaKind::Server);
    let mobile = ca.authority(CaKind::Mobile);
    let err =
        CertificateAuthority::from_pem(&root.certificate().to_pem(), &mobile.private_key_pem())
            .unwrap_err();
    assert!(
        matches!(err, PkiError::Key(KeyError::Mismatch { .. })),
        "{err}"
    );
    let err =
        CertificateAuthority::from_pem(&root.certificate().to_pem(), "not a key").unwrap_err();
    assert!(
        matches!(err, PkiError::Key(KeyError::Malformed { .. })),
        "{err}"
    );
}

#[test]
fn invalid_dns_name_is_refused_by_name() {
    let ca = ca();
    for bad in [
        "gw_1.example.com",
        "*.example.com",
        "",
        "-gw.example.com",
        "10.1.2.3",
        "gw..example",
    ] {
        match ca.issue_gateway(&names(&["ok.example.com", bad]), &[], t0()) {
            Err(PkiError::Name(NameError::InvalidDnsName { name, .. })) => assert_eq!(name, bad),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(matches!(
        ca.issue_gateway(&[], &[], t0()),
        Err(PkiError::Name(NameError::NoNames { role: "gateway" }))
    ));
    let msg = ca
        .issue_gateway(&names(&["gw_1.example.com"]), &[], t0())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("\"gw_1.example.com\""), "{msg}");
}

#[test]
fn invalid_device_ids_are_refused() {
    let ca = ca();
    // The one rule of a device id everywhere: `laptop:7` is one, `alice@corp` is not.
    assert!(ca.issue_agent("laptop:7", t0()).is_ok());
    for bad in [
        "",
        "a/b",
        "x\ny",
        "alice@corp",
        "two words",
        &"d".repeat(65),
    ] {
        assert!(
            matches!(
                ca.issue_agent(bad, t0()),
                Err(PkiError::Name(NameError::InvalidDeviceId(_)))
            ),
            "{bad:?}"
        );
        assert!(ca.issue_mobile(bad, t0()).is_err());
    }
}

#[test]
fn messages_signed_with_an_identity_verify_only_with_its_certificate() {
    let now = std::time::SystemTime::now();
    for alg in [
        outpost_pki::KeyAlgorithm::EcdsaP256,
        outpost_pki::KeyAlgorithm::Ed25519,
    ] {
        let mut cfg = outpost_pki::PkiConfig::default();
        cfg.leaf_key_algorithm = alg;
        let ca = outpost_pki::ServerCa::create(cfg, now).unwrap();
        let server = ca
            .issue_server("server-1", &["server.example".into()], &[], now)
            .unwrap();
        let other = ca
            .issue_server("server-2", &["server.example".into()], &[], now)
            .unwrap();
        let sig = outpost_pki::sign_with(&server, b"sync now 42").unwrap();
        outpost_pki::verify_signature(&server.cert_der, b"sync now 42", &sig).unwrap();
        let e = outpost_pki::verify_signature(&other.cert_der, b"sync now 42", &sig).unwrap_err();
        assert!(
            matches!(
                e,
                outpost_pki::PkiError::Key(outpost_pki::KeyError::BadSignature { .. })
            ),
            "{e}"
        );
        let mut tampered = sig.clone();
        tampered[10] ^= 1;
        assert!(
            outpost_pki::verify_signature(&server.cert_der, b"sync now 42", &tampered).is_err()
        );
        assert!(outpost_pki::verify_signature(b"not a certificate", b"x", &sig).is_err());
    }
}

#[test]
fn p384_and_rsa_signatures_verify_and_tampered_data_is_refused() {
    for alg in [KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa2048] {
        let mut cfg = PkiConfig::default();
        cfg.leaf_key_algorithm = alg;
        let ca = ServerCa::create(cfg, t0()).unwrap();
        let agent = ca.issue_agent("device-1", t0()).unwrap();
        let sig = outpost_pki::sign_with(&agent, b"sync now 42").unwrap();
        outpost_pki::verify_signature(&agent.cert_der, b"sync now 42", &sig)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        match outpost_pki::verify_signature(&agent.cert_der, b"sync now 43", &sig) {
            Err(PkiError::Key(KeyError::BadSignature { subject })) => {
                assert!(subject.contains("device-1"), "{alg}: {subject}")
            }
            other => panic!("{alg}: tampered data: {other:?}"),
        }
    }
}

#[test]
fn long_gateway_name_stays_out_of_the_common_name() {
    let ca = ca();
    // 100 characters: a valid DNS name, longer than X.520's 64-character common name.
    let long = format!("{}.{}.example", "a".repeat(60), "b".repeat(31));
    assert_eq!(long.len(), 100);
    let cn_of = |der: &[u8]| PeerIdentity::from_der(der).unwrap().common_name;
    let gw = ca
        .issue_gateway(std::slice::from_ref(&long), &[], t0())
        .unwrap();
    let cn = cn_of(&gw.cert_der);
    assert!(cn.as_ref().is_none_or(|cn| cn.len() <= 64), "{cn:?}");
    // No address to fall back on: the fixed name.
    assert_eq!(cn.as_deref(), Some("outpost-gateway"));
    let id = PeerIdentity::from_der(&gw.cert_der).unwrap();
    assert_eq!(id.role, Some(Role::Gateway));
    check_server_certificate(&gw.cert_der, &long, ca.server_ca(), &[], t0()).unwrap();
    assert_eq!(
        CertProfile::from_certificate(&gw.cert_der).unwrap(),
        gw.info.profile
    );
    // A shorter name that follows becomes the common name; an address does if there is none.
    let gw = ca
        .issue_gateway(&[long.clone(), "gw.example.com".to_owned()], &[], t0())
        .unwrap();
    assert_eq!(cn_of(&gw.cert_der).as_deref(), Some("gw.example.com"));
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let gw = ca
        .issue_gateway(std::slice::from_ref(&long), &[ip], t0())
        .unwrap();
    assert_eq!(cn_of(&gw.cert_der).as_deref(), Some("192.0.2.10"));
    check_server_certificate(&gw.cert_der, &long, ca.server_ca(), &[], t0()).unwrap();
}

#[test]
fn a_device_certificate_bound_to_a_virtual_server_names_it_and_still_verifies() {
    let ca = ca();
    let profile = CertProfile::agent("laptop-7")
        .unwrap()
        .in_virtual_server("acme")
        .unwrap();
    let c = ca.issue(&profile, t0()).unwrap();
    let id = PeerIdentity::from_der(&c.cert_der).unwrap();
    assert_eq!(id.virtual_server.as_deref(), Some("acme"));
    assert_eq!(id.common_name.as_deref(), Some("laptop-7"));
    let back = CertProfile::from_certificate(&c.cert_der).unwrap();
    assert_eq!(back, profile);
    assert_eq!(back.virtual_server(), Some("acme"));
    check_client_certificate(&c.cert_der, ca.server_ca(), &[], t0()).unwrap();
    // A certificate of the main server names none.
    let main = ca.issue_agent("laptop-7", t0()).unwrap();
    assert_eq!(
        PeerIdentity::from_der(&main.cert_der)
            .unwrap()
            .virtual_server,
        None
    );
    // Only device profiles are bound, and the id follows the identity rule.
    let gw = CertProfile::gateway(&names(&["gw.example"]), &[]).unwrap();
    assert!(matches!(
        gw.in_virtual_server("acme"),
        Err(PkiError::Name(NameError::InvalidIdentity { .. }))
    ));
    assert!(matches!(
        CertProfile::agent("x").unwrap().in_virtual_server("bad id"),
        Err(PkiError::Name(NameError::InvalidIdentity { .. }))
    ));
}
