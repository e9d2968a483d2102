//! Registry persistence and enrollment.

use std::time::{Duration, SystemTime};

use outpost_pki::{PkiConfig, ServerCa};
use outpost_server::{
    EnrollmentRefusal, GatewayRegistration, Registry, ServerError, enroll, refusal_code,
};
use outpost_wire::messages::{EnrollRequest, RefusalCode};

fn csr(ca_request: bool) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    if ca_request {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn request(device: &str, token: &str, csr: Vec<u8>) -> EnrollRequest {
    EnrollRequest {
        device_id: device.into(),
        csr_der: csr.into(),
        enrollment_token: token.into(),
        group_hint: String::new(),
    }
}

fn refusal(e: ServerError) -> EnrollmentRefusal {
    match e {
        ServerError::EnrollmentRefused { reason, .. } => reason,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[test]
fn enrollment_signs_only_what_the_server_decides() {
    let now = SystemTime::now();
    let ca = ServerCa::create(PkiConfig::default(), now).unwrap();
    let mut reg = Registry::new("server-1").unwrap();
    reg.add_group("hq", "Headquarters", None).unwrap();
    let token = reg
        .issue_token("hq", None, Duration::from_secs(60), now)
        .unwrap();
    let resp = enroll(&mut reg, &ca, &request("laptop-1", &token, csr(false)), now).unwrap();
    // The certificate names the device, not what the CSR asked for, and chains to the CA.
    let info = outpost_pki::PeerIdentity::from_der(&resp.certificate_der).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("laptop-1"));
    assert_eq!(info.role, Some(outpost_pki::Role::Agent));
    assert!(
        ca.authority(outpost_pki::CaKind::Server)
            .signed(&resp.certificate_der)
    );
    assert_eq!(&resp.ca_der[..], &ca.server_ca().der()[..]);
    let d = reg.device("laptop-1").unwrap();
    assert_eq!(d.group, "hq");
    assert_eq!(
        d.cert_sha256,
        info.sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(reg.pending_tokens(), 0);
}

#[test]
fn every_refusal_is_distinct_and_leaves_state_alone() {
    let now = SystemTime::now();
    let ca = ServerCa::create(PkiConfig::default(), now).unwrap();
    let mut reg = Registry::new("server-1").unwrap();
    let bound = reg
        .issue_token("root", Some("pc-1"), Duration::from_secs(60), now)
        .unwrap();
    let short = reg
        .issue_token("root", None, Duration::from_secs(10), now)
        .unwrap();
    let before = reg.clone();

    let e = enroll(
        &mut reg,
        &ca,
        &request("pc-1", "not-a-token", csr(false)),
        now,
    )
    .unwrap_err();
    assert_eq!(refusal_code(&e), RefusalCode::BadEnrollmentToken);
    assert_eq!(refusal(e), EnrollmentRefusal::UnknownToken);
    let e = enroll(&mut reg, &ca, &request("pc-2", &bound, csr(false)), now).unwrap_err();
    assert_eq!(refusal(e), EnrollmentRefusal::OtherDevice("pc-1".into()));
    let later = now + Duration::from_secs(11);
    let e = enroll(&mut reg, &ca, &request("pc-3", &short, csr(false)), later).unwrap_err();
    assert_eq!(refusal(e), EnrollmentRefusal::ExpiredToken);
    let e = enroll(&mut reg, &ca, &request("pc-1", &bound, csr(true)), now).unwrap_err();
    assert_eq!(refusal_code(&e), RefusalCode::BadCsr);
    assert!(matches!(refusal(e), EnrollmentRefusal::BadCsr(_)));
    let e = enroll(
        &mut reg,
        &ca,
        &request("pc-1", &bound, b"garbage".to_vec()),
        now,
    )
    .unwrap_err();
    assert!(matches!(refusal(e), EnrollmentRefusal::BadCsr(_)));
    let e = enroll(&mut reg, &ca, &request("bad id!", &bound, csr(false)), now).unwrap_err();
    assert!(matches!(e, ServerError::InvalidId { .. }), "{e}");
    assert_eq!(reg, before, "refusals change nothing");

    // The bound token still works for its device, once (once the device has connected:
    // until then a lost answer may be asked for again).
    enroll(&mut reg, &ca, &request("pc-1", &bound, csr(false)), now).unwrap();
    reg.touch("pc-1", now, None);
    let e = enroll(&mut reg, &ca, &request("pc-1", &bound, csr(false)), now).unwrap_err();
    assert_eq!(refusal(e), EnrollmentRefusal::UnknownToken, "used up");
    // Without a valid token nobody learns that pc-1 is enrolled; with one, the refusal
    // says so.
    let e = enroll(&mut reg, &ca, &request("pc-1", "guess", csr(false)), now).unwrap_err();
    assert_eq!(refusal(e), EnrollmentRefusal::UnknownToken);
    let fresh = reg
        .issue_token("root", None, Duration::from_secs(60), now)
        .unwrap();
    let e = enroll(&mut reg, &ca, &request("pc-1", &fresh, csr(false)), now).unwrap_err();
    assert_eq!(refusal(e), EnrollmentRefusal::AlreadyEnrolled);
    assert_eq!(reg.purge_expired_tokens(later), 1);
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    assert!(Registry::load(&path).unwrap().is_none());
    let now = SystemTime::now();
    let ca = ServerCa::create(PkiConfig::default(), now).unwrap();
    let mut reg = Registry::new("server-1").unwrap();
    reg.add_group("eu", "Europe", None).unwrap();
    reg.add_group("eu-paris", "Paris", Some("eu")).unwrap();
    let token = reg
        .issue_token("eu-paris", None, Duration::from_secs(60), now)
        .unwrap();
    enroll(&mut reg, &ca, &request("gw-host", &token, csr(false)), now).unwrap();
    reg.register_remote_office_gateway("paris-gw", "gw-host", &[9; 32])
        .unwrap();
    // One certificate binds one gateway.
    assert!(matches!(
        reg.register_remote_office_gateway("lyon-gw", "gw-host", &[9; 32]),
        Err(ServerError::Duplicate { .. })
    ));
    assert_eq!(reg.remote_office_gateway_for(&[9; 32]), Some("paris-gw"));
    assert_eq!(reg.remote_office_gateway_for(&[8; 32]), None);
    reg.register_dmz_gateway(
        "dmz-1",
        "127.0.0.1:13000".parse().unwrap(),
        vec!["gw.example.test".into()],
    )
    .unwrap();
    let spare = reg
        .issue_token("eu", None, Duration::from_secs(60), now)
        .unwrap();
    reg.save(&path).unwrap();

    let back = Registry::load(&path).unwrap().unwrap();
    assert_eq!(back, reg);
    assert_eq!(back.instance_id, "server-1");
    assert!(matches!(
        back.gateways()["paris-gw"],
        GatewayRegistration::RemoteOffice { .. }
    ));
    // The unused token still works after the restart.
    let mut back = back;
    enroll(&mut back, &ca, &request("pc-9", &spare, csr(false)), now).unwrap();
    assert_eq!(back.device("pc-9").unwrap().group, "eu");
    // The token itself is not in the file.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&spare) && !text.contains(&token));
}

#[test]
fn bad_state_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    std::fs::write(&path, b"{\"format\": 1, \"instance_id\": ").unwrap();
    let e = Registry::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("registry.json") && e.contains("not a valid registry"),
        "{e}"
    );
    std::fs::write(&path, b"{\"format\": 9}").unwrap();
    assert!(matches!(
        Registry::load(&path),
        Err(ServerError::UnsupportedFormat { found: 9, .. })
    ));
    // A cycle written by hand.
    let mut reg = Registry::new("s").unwrap();
    reg.add_group("a", "A", None).unwrap();
    reg.add_group("b", "B", Some("a")).unwrap();
    reg.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "\"parent\": \"root\"",
        "\"parent\": \"b\"",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let e = Registry::load(&path).unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn group_tree_rules() {
    let mut reg = Registry::new("s").unwrap();
    reg.add_group("a", "A", None).unwrap();
    reg.add_group("b", "B", Some("a")).unwrap();
    assert!(matches!(
        reg.add_group("a", "A again", None),
        Err(ServerError::Duplicate { .. })
    ));
    assert!(matches!(
        reg.add_group("c", "C", Some("nowhere")),
        Err(ServerError::UnknownGroup(_))
    ));
    assert!(matches!(
        reg.move_group("a", "b"),
        Err(ServerError::Cycle { .. })
    ));
    assert!(matches!(
        reg.move_group("a", "a"),
        Err(ServerError::Cycle { .. })
    ));
    reg.add_group("c", "C", None).unwrap();
    reg.move_group("b", "c").unwrap();
    assert_eq!(reg.groups()["b"].parent.as_deref(), Some("c"));
    assert!(matches!(
        reg.move_device("ghost", "a"),
        Err(ServerError::UnknownDevice(_))
    ));
    assert!(matches!(
        reg.register_dmz_gateway(
            "d",
            "127.0.0.1:1".parse().unwrap(),
            vec!["not a name".into()]
        ),
        Err(ServerError::InvalidId { .. })
    ));
}

#[test]
fn a_token_lifetime_beyond_a_year_is_refused_not_a_panic() {
    let now = SystemTime::now();
    let mut reg = Registry::new("server-1").unwrap();
    for ttl in [
        Duration::MAX,
        outpost_server::MAX_TOKEN_TTL + Duration::from_secs(1),
    ] {
        let e = reg.issue_token("root", None, ttl, now).unwrap_err();
        assert!(
            matches!(e, ServerError::Config(ref m) if m.contains("lifetime")),
            "{e}"
        );
    }
    assert_eq!(reg.pending_tokens(), 0);
    reg.issue_token("root", None, outpost_server::MAX_TOKEN_TTL, now)
        .unwrap();
}

#[test]
fn an_enrollment_whose_answer_was_lost_can_be_made_again_until_the_device_connects() {
    let now = SystemTime::now();
    let ca = ServerCa::create(PkiConfig::default(), now).unwrap();
    let mut reg = Registry::new("server-1").unwrap();
    reg.add_group("hq", "Headquarters", None).unwrap();
    let token = reg
        .issue_token("hq", Some("laptop-1"), Duration::from_secs(60), now)
        .unwrap();
    let first = enroll(&mut reg, &ca, &request("laptop-1", &token, csr(false)), now).unwrap();
    // The answer never arrived: the same token enrolls the device again, and the new
    // certificate replaces the one nobody received.
    let again = enroll(&mut reg, &ca, &request("laptop-1", &token, csr(false)), now).unwrap();
    assert_ne!(first.certificate_der, again.certificate_der);
    let sha = |der: &[u8]| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut fp = [0u8; 32];
        fp.copy_from_slice(d.as_ref());
        fp
    };
    assert!(
        reg.device_by_fingerprint(&sha(&first.certificate_der))
            .is_none()
    );
    assert_eq!(
        reg.device_by_fingerprint(&sha(&again.certificate_der))
            .unwrap()
            .0,
        "laptop-1"
    );
    // Another token, or another device id with this one, is still refused.
    let other = reg
        .issue_token("hq", None, Duration::from_secs(60), now)
        .unwrap();
    assert_eq!(
        refusal(enroll(&mut reg, &ca, &request("laptop-1", &other, csr(false)), now).unwrap_err()),
        EnrollmentRefusal::AlreadyEnrolled
    );
    assert_eq!(
        refusal(enroll(&mut reg, &ca, &request("laptop-2", &token, csr(false)), now).unwrap_err()),
        EnrollmentRefusal::UnknownToken
    );
    // Once the device has connected, the token is spent for good.
    reg.touch("laptop-1", now, None);
    assert_eq!(
        refusal(enroll(&mut reg, &ca, &request("laptop-1", &token, csr(false)), now).unwrap_err()),
        EnrollmentRefusal::UnknownToken
    );
}

#[test]
fn device_ids_follow_the_one_rule_of_the_system() {
    for ok in ["laptop:7", "pc-1.corp_x"] {
        outpost_server::check_device_id(ok).unwrap();
        outpost_wire::DeviceId::check(ok).unwrap();
    }
    for bad in ["", "a/b", "alice@corp", "two words"] {
        let e = outpost_server::check_device_id(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("device id"), "{bad:?}: {e}");
    }
    let long = "d".repeat(65);
    assert!(outpost_server::check_device_id(&long).is_err());
}
