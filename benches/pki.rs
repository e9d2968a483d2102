//! Certificate issuance and verification throughput of outpost-pki on one core.
//!
//! Issuance = fresh ECDSA P-256 key pair + certificate built and signed by the CA + PKCS#8
//! serialisation (what enrolling one device costs). The baseline in the same run is the bare
//! crypto an issuance cannot avoid: one P-256 key generation and one ECDSA signature with
//! aws-lc-rs directly. Verification = `check_server_certificate` (path to the CA, validity,
//! usage, name; with and without a 1,000-entry CRL, the CRL decoded per call or once in a
//! `CertChecker`) against a bare ECDSA verification.
//!
//! `cargo bench --bench pki` runs the criterion groups, then prints issuances per second, the
//! projected time to enrol a 100,000-device fleet, and the ratios to the baselines, from
//! interleaved rounds.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use criterion::{Criterion, Throughput};
use outpost_pki::{
    CaKind, CertChecker, CertProfile, Crl, PkiConfig, ServerCa, check_server_certificate,
};

/// A TBSCertificate of an issued agent certificate is about this long.
const TBS_LEN: usize = 420;

fn baseline_issue(rng: &SystemRandom, msg: &[u8]) -> usize {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng).expect("keygen");
    let ca_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).expect("load");
    ca_key.sign(rng, msg).expect("sign").as_ref().len() + doc.as_ref().len()
}

struct VerifyFixture {
    public_key: Vec<u8>,
    signature: Vec<u8>,
    msg: Vec<u8>,
}

fn verify_fixture() -> VerifyFixture {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).unwrap();
    let msg = vec![0x5a; TBS_LEN];
    let signature = key.sign(&rng, &msg).unwrap().as_ref().to_vec();
    VerifyFixture {
        public_key: key.public_key().as_ref().to_vec(),
        signature,
        msg,
    }
}

fn baseline_verify(f: &VerifyFixture) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &f.public_key)
        .verify(&f.msg, &f.signature)
        .is_ok()
}

fn crl_with(ca: &mut ServerCa, n: usize, now: SystemTime) -> Crl {
    for _ in 0..n {
        let a = ca.issue_agent("revoked-device", now).unwrap();
        ca.revoke(&a.cert_der, now).unwrap();
    }
    ca.crl(CaKind::Server, now).unwrap()
}

fn main() {
    let now = SystemTime::now();
    let mut ca = ServerCa::create(PkiConfig::default(), now).expect("CA");
    let rng = SystemRandom::new();
    let tbs = vec![0xa5u8; TBS_LEN];
    let gw_names: Vec<String> = ["gw.example.com", "dmz.example.com", "gw.corp.example"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let gw = ca.issue_gateway(&gw_names, &[], now).unwrap();
    let crl = crl_with(&mut ca, 1_000, now);
    let vf = verify_fixture();
    // A CSR for the signing-only path.
    let csr_key = outpost_pki::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&csr_key)
        .unwrap()
        .der()
        .to_vec();
    let agent_profile = CertProfile::agent("csr-device").unwrap();

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("pki_issue");
        g.throughput(Throughput::Elements(1));
        g.bench_function("agent_p256", |b| {
            b.iter(|| ca.issue_agent(black_box("device-000042"), now).unwrap())
        });
        g.bench_function("gateway_p256_3names", |b| {
            b.iter(|| ca.issue_gateway(black_box(&gw_names), &[], now).unwrap())
        });
        g.bench_function("sign_csr_p256", |b| {
            b.iter(|| ca.sign_csr(black_box(&csr), &agent_profile, now).unwrap())
        });
        g.bench_function("baseline_keygen_plus_sign", |b| {
            b.iter(|| baseline_issue(&rng, black_box(&tbs)))
        });
        g.finish();
    }
    {
        // RSA for comparison: key generation dominates, so few samples suffice.
        let mut cfg = PkiConfig::default();
        cfg.leaf_key_algorithm = outpost_pki::KeyAlgorithm::Rsa2048;
        let rsa_ca = ServerCa::create(cfg, now).expect("CA");
        let mut g = c.benchmark_group("pki_issue_rsa");
        g.sample_size(10);
        g.throughput(Throughput::Elements(1));
        g.bench_function("agent_rsa2048_signed_by_p256", |b| {
            b.iter(|| rsa_ca.issue_agent(black_box("device-000042"), now).unwrap())
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("pki_verify");
        g.throughput(Throughput::Elements(1));
        g.bench_function("check_server_certificate", |b| {
            b.iter(|| {
                check_server_certificate(
                    black_box(&gw.cert_der),
                    "dmz.example.com",
                    ca.server_ca(),
                    &[],
                    now,
                )
                .unwrap()
            })
        });
        let crls = [crl.clone()];
        g.bench_function("check_server_certificate_crl1000", |b| {
            b.iter(|| {
                check_server_certificate(
                    black_box(&gw.cert_der),
                    "dmz.example.com",
                    ca.server_ca(),
                    &crls,
                    now,
                )
                .unwrap()
            })
        });
        let checker = CertChecker::new(ca.server_ca(), &crls).unwrap();
        g.bench_function("cert_checker_crl1000", |b| {
            b.iter(|| {
                checker
                    .check_server(black_box(&gw.cert_der), "dmz.example.com", now)
                    .unwrap()
            })
        });
        g.bench_function("baseline_ecdsa_verify", |b| {
            b.iter(|| assert!(baseline_verify(black_box(&vf))))
        });
        g.finish();
    }
    c.final_summary();

    // Interleaved rounds for the ratios and the fleet projection.
    let rounds = 5;
    let per_round = 1_000;
    let mut issue = Duration::ZERO;
    let mut base_issue = Duration::ZERO;
    let mut verify = Duration::ZERO;
    let mut base_verify = Duration::ZERO;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            black_box(ca.issue_agent("device-000042", now).unwrap());
        }
        issue += t.elapsed();
        let t = Instant::now();
        for _ in 0..per_round {
            black_box(baseline_issue(&rng, &tbs));
        }
        base_issue += t.elapsed();
        let t = Instant::now();
        for _ in 0..per_round {
            black_box(
                check_server_certificate(&gw.cert_der, "dmz.example.com", ca.server_ca(), &[], now)
                    .unwrap(),
            );
        }
        verify += t.elapsed();
        let t = Instant::now();
        for _ in 0..per_round {
            black_box(baseline_verify(&vf));
        }
        base_verify += t.elapsed();
    }
    let n = f64::from(rounds * per_round);
    let issue_rate = n / issue.as_secs_f64();
    let verify_rate = n / verify.as_secs_f64();
    println!(
        "pki summary ({} interleaved operations each, one core):",
        rounds * per_round
    );
    println!(
        "  issuance (P-256 keygen + sign): {issue_rate:.0}/s; 100,000-device fleet in {:.1} s (goal: >= 3,500/s, < 30 s)",
        100_000.0 / issue_rate
    );
    println!(
        "  issuance time / bare keygen+sign baseline: {:.2}",
        issue.as_secs_f64() / base_issue.as_secs_f64()
    );
    println!(
        "  verification (check_server_certificate): {verify_rate:.0}/s; / bare ECDSA verify baseline: {:.2}",
        verify.as_secs_f64() / base_verify.as_secs_f64()
    );
}
