//! Accounts, passwords, API tokens and sessions.

use std::time::{Duration, Instant, SystemTime};

use outpost_server::{AccountBook, Op, Role, ServerError, SessionConfig, Sessions};

fn book_with(name: &str, role: Role, password: &str) -> AccountBook {
    let mut book = AccountBook::default();
    let op = book
        .create(name, role, password, SystemTime::now())
        .unwrap();
    book.apply(&op);
    book
}

#[test]
fn passwords_are_argon2id_and_checked() {
    let hash = outpost_server::hash_password("correct horse battery").unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let again = outpost_server::hash_password("correct horse battery").unwrap();
    assert_ne!(hash, again, "a random salt each time");
    assert!(outpost_server::verify_password(
        &hash,
        "correct horse battery"
    ));
    assert!(!outpost_server::verify_password(
        &hash,
        "correct horse batterY"
    ));
    assert!(!outpost_server::verify_password("not a hash", "x"));
    for bad in ["short", &"x".repeat(1025)] {
        let e = outpost_server::hash_password(bad).unwrap_err();
        assert!(
            matches!(
                e,
                ServerError::InvalidId {
                    what: "password",
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn the_first_account_is_made_once_and_roles_hold() {
    let mut book = AccountBook::default();
    let op = book
        .bootstrap("admin", "correct horse battery", SystemTime::now())
        .unwrap();
    assert!(matches!(&op, Op::PutAccount(a) if a.role == Role::Administrator));
    book.apply(&op);
    let e = book
        .bootstrap("second", "correct horse battery", SystemTime::now())
        .unwrap_err();
    assert!(e.to_string().contains("accounts exist already"), "{e}");
    let op = book
        .create(
            "watcher",
            Role::Auditor,
            "audit all the things",
            SystemTime::now(),
        )
        .unwrap();
    book.apply(&op);
    assert_eq!(
        book.check_password("watcher", "audit all the things"),
        Some(Role::Auditor)
    );
    assert!(!Role::Auditor.may_write() && Role::Administrator.may_write());
    assert_eq!(book.check_password("nobody", "audit all the things"), None);
    let e = book
        .create(
            "watcher",
            Role::Auditor,
            "audit all the things",
            SystemTime::now(),
        )
        .unwrap_err();
    assert!(matches!(e, ServerError::Duplicate { .. }), "{e}");
    assert!(
        book.create(
            "bad name!",
            Role::Auditor,
            "audit all the things",
            SystemTime::now()
        )
        .is_err()
    );
}

#[test]
fn api_tokens_act_as_their_account_until_revoked() {
    let mut book = book_with("robot", Role::Administrator, "a long enough password");
    let (secret, op) = book
        .issue_api_token("robot", "nightly export", SystemTime::now())
        .unwrap();
    book.apply(&op);
    assert_eq!(secret.len(), 64);
    assert_eq!(
        book.check_api_token(&secret),
        Some(("robot", Role::Administrator))
    );
    assert_eq!(book.check_api_token("0".repeat(64).as_str()), None);
    let Op::PutApiToken(t) = &op else {
        panic!("{op:?}")
    };
    assert_ne!(t.token_sha256, secret, "only its hash is kept");
    let op = book.revoke_api_token(&t.id, SystemTime::now()).unwrap();
    book.apply(&op);
    assert_eq!(book.check_api_token(&secret), None, "revoked");
    assert!(
        book.issue_api_token("ghost", "x", SystemTime::now())
            .is_err()
    );
}

#[test]
fn sessions_expire_close_and_are_bounded() {
    let mut s = Sessions::new(SessionConfig::default());
    let t0 = Instant::now();
    let a = s.open("admin", Role::Administrator, t0).unwrap();
    let b = s.open("admin", Role::Administrator, t0).unwrap();
    assert_ne!(a, b);
    assert_eq!(
        s.check(&a, t0 + Duration::from_secs(3599)),
        Some(("admin", Role::Administrator))
    );
    assert_eq!(s.check(&a, t0 + Duration::from_secs(3600)), None, "expired");
    assert!(s.close(&a));
    assert_eq!(s.check(&a, t0), None, "logged out");
    assert_eq!(s.close_all_of("admin"), 1);
    assert_eq!(s.check(&b, t0), None);

    let mut s = Sessions::new(SessionConfig::default().with_max(2));
    s.open("a", Role::Auditor, t0).unwrap();
    s.open("b", Role::Auditor, t0).unwrap();
    assert!(s.open("c", Role::Auditor, t0).is_err(), "full");
    // Once the others expired there is room again.
    assert!(
        s.open("c", Role::Auditor, t0 + Duration::from_secs(3600))
            .is_ok()
    );
    assert_eq!(s.len(), 1);
}
