//! PEM persistence (modes, malformed files) and gap-free rotation.

use crate::common;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use outpost_pki::store::{self, files};
use outpost_pki::{
    CaKind, CertError, CrlError, FileError, InputError, IssuedCert, KeyError, PkiConfig, PkiError,
    Rotation, RotationEvent, RotationSchedule, RotationState, ServerCa, Timestamp,
    check_server_certificate,
};

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read_all(mut f: &std::fs::File) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn save_and_load_round_trip_with_private_modes() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = ca();
    let agent = ca.issue_agent("dev-1", t0()).unwrap();
    ca.revoke(&agent.cert_der, t0()).unwrap();
    store::save_server_ca(&mut ca, dir.path(), t0()).unwrap();
    for key in [files::CA_KEY, files::MOBILE_CA_KEY] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let loaded = store::load_server_ca(dir.path(), PkiConfig::default()).unwrap();
    assert_eq!(loaded.server_ca(), ca.server_ca());
    assert_eq!(loaded.mobile_ca(), ca.mobile_ca());
    assert_eq!(
        loaded.authority(CaKind::Server).revocations(),
        ca.authority(CaKind::Server).revocations()
    );
    let gw = loaded
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    check_server_certificate(&gw.cert_der, "gw.example.com", ca.server_ca(), &[], t0()).unwrap();
}

#[test]
fn issued_key_and_chain_round_trip_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let gw = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let key_path = dir.path().join("gw.key");
    let chain_path = dir.path().join("gw.chain.pem");
    store::write_private_key(&key_path, &gw.key_pem()).unwrap();
    store::write_public(&chain_path, &gw.chain_pem()).unwrap();
    let chain = store::read_certificates(&chain_path).unwrap();
    assert_eq!(chain, gw.chain);
    let key = store::read_private_key_der(&key_path).unwrap();
    let back = IssuedCert::from_parts(chain, key).unwrap();
    assert_eq!(back.info, gw.info);
}

#[test]
fn readable_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let a = ca.issue_agent("dev", t0()).unwrap();
    let path = dir.path().join("agent.key");
    store::write_private_key(&path, &a.key_pem()).unwrap();
    store::read_private_key(&path).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        match store::read_private_key(&path) {
            Err(PkiError::File(FileError::KeyTooOpen { path: p, mode: m })) => {
                assert_eq!(p, path);
                assert_eq!(m, mode);
            }
            other => panic!("mode {mode:o}: {other:?}"),
        }
    }
    let msg = store::read_private_key(&path).unwrap_err().to_string();
    assert!(msg.contains("agent.key") && msg.contains("0660"), "{msg}");
    // Writing again tightens the mode of an existing file.
    store::write_private_key(&path, &a.key_pem()).unwrap();
    store::read_private_key(&path).unwrap();
}

#[test]
fn malformed_missing_and_oversized_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bad.key");
    store::write_private_key(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(matches!(
        store::read_private_key(&key),
        Err(PkiError::Key(KeyError::Malformed { .. }))
    ));
    store::write_private_key(&key, "just text").unwrap();
    assert!(matches!(
        store::read_private_key(&key),
        Err(PkiError::Key(KeyError::NoPemBlock { .. }))
    ));
    store::write_private_key(&key, &"A".repeat(store::MAX_KEY_FILE as usize + 1)).unwrap();
    assert!(matches!(
        store::read_private_key(&key),
        Err(PkiError::File(FileError::TooLarge {
            what: "private key",
            ..
        }))
    ));
    let missing = dir.path().join("missing.crt");
    match store::read_certificates(&missing) {
        Err(PkiError::File(FileError::Io { path, .. })) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    let not_pem = dir.path().join("x.crt");
    std::fs::write(&not_pem, "hello").unwrap();
    assert!(matches!(
        store::read_certificates(&not_pem),
        Err(PkiError::File(FileError::MalformedPem { .. }))
    ));
    // A directory whose CA key is readable by others does not load.
    let ca_dir = dir.path().join("ca");
    let mut ca = ca();
    store::save_server_ca(&mut ca, &ca_dir, t0()).unwrap();
    std::fs::set_permissions(
        ca_dir.join(files::CA_KEY),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert!(matches!(
        store::load_server_ca(&ca_dir, PkiConfig::default()),
        Err(PkiError::File(FileError::KeyTooOpen { .. }))
    ));
}

#[test]
fn rotation_states_follow_the_schedule() {
    let s = RotationSchedule::default();
    let base = 1_000 * 86_400;
    let nb = Timestamp::from_unix_seconds(base);
    let na = Timestamp::from_unix_seconds(base + 397 * 86_400);
    let at = |d: i64| Timestamp::from_unix_seconds(base + d * 86_400);
    assert_eq!(s.state(nb, na, at(-1)), RotationState::NotYetValid);
    assert_eq!(s.state(nb, na, at(0)), RotationState::Current);
    assert_eq!(s.state(nb, na, at(306)), RotationState::Current);
    assert_eq!(s.state(nb, na, at(307)), RotationState::ReserveDue);
    assert_eq!(s.state(nb, na, at(395)), RotationState::ReserveDue);
    assert_eq!(s.state(nb, na, at(396)), RotationState::SwitchDue);
    assert_eq!(s.state(nb, na, at(397)), RotationState::SwitchDue);
    assert_eq!(s.state(nb, na, at(398)), RotationState::Expired);
}

#[test]
fn rotation_never_leaves_a_gap_over_three_years() {
    let ca = ca();
    let gw = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let mut rot = Rotation::new(gw, RotationSchedule::from_config(ca.config()));
    let mut reserves = 0;
    let mut switches = 0;
    // Every 6 hours for three years: the active certificate is always valid and names the host.
    for step in 0..(3 * 365 * 4) {
        let now = t0() + std::time::Duration::from_secs(step * 6 * 3600);
        match rot.poll(&ca, now).unwrap() {
            RotationEvent::ReserveIssued => {
                reserves += 1;
                let left = rot.active().info.not_after.unix_seconds()
                    - Timestamp::from_system_time(now).unwrap().unix_seconds();
                assert!(
                    left <= 90 * 86_400 && left > 89 * 86_400,
                    "reserve made {left}s before expiry"
                );
                let reserve = rot.reserve().unwrap();
                check_server_certificate(
                    &reserve.cert_der,
                    "gw.example.com",
                    ca.server_ca(),
                    &[],
                    now,
                )
                .unwrap();
            }
            RotationEvent::Switched => {
                switches += 1;
                let left_after = rot.active().info.not_after.unix_seconds()
                    - Timestamp::from_system_time(now).unwrap().unix_seconds();
                assert!(left_after > 300 * 86_400, "new active lives on");
            }
            _ => {}
        }
        check_server_certificate(
            &rot.active().cert_der,
            "gw.example.com",
            ca.server_ca(),
            &[],
            now,
        )
        .unwrap_or_else(|e| panic!("gap at step {step}: {e}"));
    }
    // 3 years / ~307 days per generation.
    assert_eq!((reserves, switches), (3, 3));
}

#[test]
fn config_loads_from_toml_with_defaults_and_names_bad_fields() {
    let cfg: PkiConfig = toml::from_str(
        "organization = \"Example Corp\"\nleaf_key_algorithm = \"ed25519\"\nleaf_validity_days = 200\n",
    )
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.leaf_validity_days, 200);
    assert_eq!(cfg.leaf_key_algorithm, outpost_pki::KeyAlgorithm::Ed25519);
    assert_eq!(cfg.reserve_before_days, 90);
    let too_long: PkiConfig = toml::from_str("leaf_validity_days = 400\n").unwrap();
    let err = too_long.validate().unwrap_err().to_string();
    assert!(
        err.contains("leaf_validity_days") && err.contains("400"),
        "{err}"
    );
    let unknown = toml::from_str::<PkiConfig>("leaf_validty_days = 30\n").unwrap_err();
    assert!(
        unknown.to_string().contains("leaf_validty_days"),
        "{unknown}"
    );
    let bad_alg = toml::from_str::<PkiConfig>("ca_key_algorithm = \"dsa\"\n").unwrap_err();
    assert!(bad_alg.to_string().contains("dsa"), "{bad_alg}");
    // ServerCa refuses an invalid configuration.
    assert!(matches!(
        outpost_pki::ServerCa::create(too_long, t0()),
        Err(PkiError::Input(InputError::InvalidConfig {
            field: "leaf_validity_days",
            ..
        }))
    ));
}

#[test]
fn writes_replace_the_file_instead_of_rewriting_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let (a, b) = (
        ca.issue_agent("dev-a", t0()).unwrap(),
        ca.issue_agent("dev-b", t0()).unwrap(),
    );
    let key = dir.path().join("agent.key");
    let crt = dir.path().join("agent.crt");
    store::write_private_key(&key, &a.key_pem()).unwrap();
    store::write_public(&crt, &a.cert_pem()).unwrap();
    let (old_key, old_crt) = (
        std::fs::File::open(&key).unwrap(),
        std::fs::File::open(&crt).unwrap(),
    );
    let (key_ino, crt_ino) = (inode(&key), inode(&crt));
    store::write_private_key(&key, &b.key_pem()).unwrap();
    store::write_public(&crt, &b.cert_pem()).unwrap();
    // A new file took the name; a reader of the old one still sees the old bytes whole.
    assert_ne!(inode(&key), key_ino);
    assert_ne!(inode(&crt), crt_ino);
    assert_eq!(read_all(&old_key), a.key_pem());
    assert_eq!(read_all(&old_crt), a.cert_pem());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), b.key_pem());
    assert_eq!(std::fs::read_to_string(&crt).unwrap(), b.cert_pem());
    assert_eq!(mode(&key), 0o600);
    assert_eq!(dir_entries(dir.path()), ["agent.crt", "agent.key"]);
}

#[test]
fn saving_the_ca_replaces_every_file_and_leaves_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = ca();
    store::save_server_ca(&mut ca, dir.path(), t0()).unwrap();
    let key = dir.path().join(files::CA_KEY);
    let old_key = std::fs::File::open(&key).unwrap();
    let before: Vec<u64> = dir_entries(dir.path())
        .iter()
        .map(|n| inode(&dir.path().join(n)))
        .collect();
    store::save_server_ca(&mut ca, dir.path(), t0() + days(1)).unwrap();
    let names = dir_entries(dir.path());
    assert_eq!(
        names,
        [
            files::CA_CRL,
            files::CA_CERT,
            files::CA_KEY,
            files::MOBILE_CA_CRL,
            files::MOBILE_CA_CERT,
            files::MOBILE_CA_KEY,
        ]
    );
    for (name, old) in names.iter().zip(before) {
        assert_ne!(
            inode(&dir.path().join(name)),
            old,
            "{name} rewritten in place"
        );
    }
    assert_eq!(
        read_all(&old_key),
        ca.authority(CaKind::Server).private_key_pem()
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&dir.path().join(files::MOBILE_CA_KEY)), 0o600);
    store::load_server_ca(dir.path(), PkiConfig::default()).unwrap();
}

#[test]
fn a_revocation_rewrites_only_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = ca();
    store::save_server_ca(&mut ca, dir.path(), t0()).unwrap();
    let before: Vec<(String, u64)> = dir_entries(dir.path())
        .into_iter()
        .map(|n| {
            let ino = inode(&dir.path().join(&n));
            (n, ino)
        })
        .collect();
    let phone = ca.issue_mobile("phone-1", t0()).unwrap();
    let (kind, serial, _) = ca.revoke(&phone.cert_der, t0()).unwrap();
    assert_eq!(kind, CaKind::Mobile);
    let path = store::save_crl(&mut ca, kind, dir.path(), t0()).unwrap();
    assert_eq!(path, dir.path().join(files::MOBILE_CA_CRL));
    for (name, ino) in before {
        let changed = inode(&dir.path().join(&name)) != ino;
        assert_eq!(changed, name == files::MOBILE_CA_CRL, "{name}");
    }
    assert_eq!(dir_entries(dir.path()).len(), 6);
    let loaded = store::load_server_ca(dir.path(), PkiConfig::default()).unwrap();
    assert!(loaded.authority(CaKind::Mobile).is_revoked(&serial));
}

#[test]
fn a_ca_without_its_crl_file_does_not_load() {
    for crl in [files::CA_CRL, files::MOBILE_CA_CRL] {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = ca();
        store::save_server_ca(&mut ca, dir.path(), t0()).unwrap();
        let path = dir.path().join(crl);
        std::fs::remove_file(&path).unwrap();
        match store::load_server_ca(dir.path(), PkiConfig::default()) {
            Err(e @ PkiError::Crl(CrlError::Missing { .. })) => {
                let PkiError::Crl(CrlError::Missing { path: p }) = &e else {
                    unreachable!()
                };
                assert_eq!(p, &path);
                assert!(e.to_string().contains(crl), "{e}");
            }
            other => panic!("{crl}: {other:?}"),
        }
    }
}

#[test]
fn rotation_stops_switching_when_the_ca_ends_first() {
    let mut cfg = PkiConfig::default();
    cfg.ca_validity_days = 400;
    let ca = ServerCa::create(cfg, t0()).unwrap();
    let gw = ca
        .issue_gateway(&names(&["gw.example.com"]), &[], t0())
        .unwrap();
    let mut rot = Rotation::new(gw, RotationSchedule::from_config(ca.config()));
    // The first switch still gains time: the new certificate ends with the CA.
    assert_eq!(
        rot.poll(&ca, t0() + days(396)).unwrap(),
        RotationEvent::Switched
    );
    let ca_end = ca.server_ca().not_after();
    assert_eq!(rot.active().info.not_after, ca_end);
    let serial = rot.active().info.serial.clone();
    // In the CA's last day, no certificate can outlive the active one.
    let last_day = ca_end.to_system_time() - std::time::Duration::from_secs(12 * 3600);
    for step in 0..2 {
        let now = last_day + std::time::Duration::from_secs(step * 3600);
        match rot.poll(&ca, now) {
            Err(e @ PkiError::Cert(CertError::CaExpiresFirst { .. })) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("renew the CA") && msg.contains("gw.example.com"),
                    "{msg}"
                );
            }
            other => panic!("poll {step}: {other:?}"),
        }
        assert_eq!(rot.active().info.serial, serial);
        assert!(rot.reserve().is_none());
    }
    // No reserve is made in the reserve window either.
    let mut rot = Rotation::new(
        ca.issue_gateway(&names(&["gw.example.com"]), &[], t0() + days(300))
            .unwrap(),
        RotationSchedule::from_config(ca.config()),
    );
    assert!(matches!(
        rot.poll(&ca, t0() + days(350)),
        Err(PkiError::Cert(CertError::CaExpiresFirst { .. }))
    ));
    assert!(rot.reserve().is_none());
}

#[test]
fn only_write_atomic_temporaries_count_as_stale() {
    use outpost_pki::store::is_atomic_temporary;
    assert!(is_atomic_temporary(".registry.json.0123456789abcdef.tmp"));
    assert!(is_atomic_temporary(".ca.key.ffffffffffffffff.tmp"));
    for name in [
        "registry.json",
        ".registry.json.tmp",
        ".registry.json.0123456789abcde.tmp",
        ".registry.json.0123456789abcdeg.tmp",
        "..0123456789abcdef.tmp",
        ".registry.json.0123456789abcdef.tmp.bak",
    ] {
        assert!(!is_atomic_temporary(name), "{name}");
    }
    // A write leaves no temporary behind, and one left by a crash is removed.
    let dir = tempfile::tempdir().unwrap();
    outpost_pki::store::write_atomic(&dir.path().join("a.json"), b"{}", 0o644).unwrap();
    std::fs::write(dir.path().join(".a.json.00000000000000aa.tmp"), b"{").unwrap();
    assert_eq!(
        outpost_pki::store::remove_stale_temporaries(dir.path()).unwrap(),
        1
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["a.json"]);
}
