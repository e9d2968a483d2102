//! Properties of the local-settings overlay.

use outpost_agent::overlay::{effective, get_path, values_and_locks};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")].prop_map(String::from)
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        "[xyz]{0,3}".prop_map(Value::from),
        Just(json!([1, 2])),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        proptest::collection::btree_map(key(), inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
    })
}

/// An object at the top, as local settings are.
fn object() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(key(), tree(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

fn path() -> impl Strategy<Value = String> {
    proptest::collection::vec(key(), 0..4).prop_map(|v| v.join("/"))
}

/// Every leaf path of `v` (objects are walked, everything else is a leaf).
fn leaves(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(k.clone());
                leaves(c, prefix, out);
                prefix.pop();
            }
        }
        other => out.push((prefix.join("/"), other.clone())),
    }
}

fn related(lock: &str, path: &str) -> bool {
    let l: Vec<&str> = if lock.is_empty() {
        vec![]
    } else {
        lock.split('/').collect()
    };
    let p: Vec<&str> = path.split('/').collect();
    let n = l.len().min(p.len());
    l[..n] == p[..n]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the local settings, a locked path reads the same as in the received values.
    #[test]
    fn locked_paths_keep_the_received_value(
        values in tree(), locks in proptest::collection::vec(path(), 0..4), local in tree()
    ) {
        let doc = json!({"values": values, "locked": locks});
        let eff = effective(&doc, Some(&local));
        for l in &locks {
            prop_assert_eq!(get_path(&eff, l), get_path(&values, l), "lock {}", l);
        }
    }

    /// Every local leaf unrelated to any lock shows up in the result.
    #[test]
    fn unlocked_local_leaves_win(
        values in tree(), locks in proptest::collection::vec(path(), 0..4), local in object()
    ) {
        let doc = json!({"values": values, "locked": locks});
        let eff = effective(&doc, Some(&local));
        let mut out = Vec::new();
        leaves(&local, &mut Vec::new(), &mut out);
        for (p, v) in out {
            if p.is_empty() || locks.iter().any(|l| related(l, &p)) {
                continue;
            }
            prop_assert_eq!(get_path(&eff, &p), Some(&v), "path {}", p);
        }
    }

    /// Without a "locked" list the server wins: the document is returned unchanged.
    #[test]
    fn without_locks_everything_is_locked(doc in tree(), local in tree()) {
        prop_assume!(doc.get("locked").is_none_or(|l| !l.is_array()));
        prop_assert_eq!(effective(&doc, Some(&local)), doc.clone());
        let (v, locks) = values_and_locks(&doc);
        prop_assert_eq!(v, doc);
        prop_assert!(locks.is_none());
    }

    /// No local settings: the values as received. Overlaying twice changes nothing more.
    #[test]
    fn identity_and_idempotence(
        values in tree(), locks in proptest::collection::vec(path(), 0..4), local in tree()
    ) {
        let doc = json!({"values": values.clone(), "locked": locks.clone()});
        prop_assert_eq!(effective(&doc, None), values);
        let once = effective(&doc, Some(&local));
        let again = effective(&json!({"values": once.clone(), "locked": locks}), Some(&local));
        prop_assert_eq!(again, once);
    }

    /// An empty lock list: local settings merged everywhere.
    #[test]
    fn empty_lock_list_takes_every_local_leaf(values in tree(), local in object()) {
        let eff = effective(&json!({"values": values, "locked": []}), Some(&local));
        let mut out = Vec::new();
        leaves(&local, &mut Vec::new(), &mut out);
        for (p, v) in out {
            prop_assert_eq!(get_path(&eff, &p), Some(&v), "path {}", p);
        }
    }
}

#[test]
fn the_documented_convention() {
    let doc = json!({
        "values": {"proxy": {"host": "p.corp", "port": 8080}, "update": {"hour": 3}},
        "locked": ["proxy/host", "update"]
    });
    let local = json!({
        "proxy": {"host": "mine", "port": 3128, "extra": true},
        "update": {"hour": 5},
        "theme": "light"
    });
    assert_eq!(
        effective(&doc, Some(&local)),
        json!({
            "proxy": {"host": "p.corp", "port": 3128, "extra": true},
            "update": {"hour": 3},
            "theme": "light"
        })
    );
    // A local leaf cannot replace an object holding a locked value.
    let local = json!({"proxy": "direct"});
    assert_eq!(effective(&doc, Some(&local))["proxy"]["host"], "p.corp");
    // Dotted paths, as the policy crate writes them, mean the same.
    let dotted = json!({
        "values": {"proxy": {"host": "p.corp", "port": 8080}, "update": {"hour": 3}},
        "locked": ["proxy.host", "update"]
    });
    assert_eq!(
        effective(&dotted, Some(&json!({"proxy": {"host": "x", "port": 1}}))),
        json!({"proxy": {"host": "p.corp", "port": 1}, "update": {"hour": 3}})
    );
    // "" locks the whole document.
    let all = json!({"values": {"a": 1}, "locked": [""]});
    assert_eq!(
        effective(&all, Some(&json!({"a": 2, "b": 3}))),
        json!({"a": 1})
    );
    // A lock on an absent path keeps it absent.
    let absent = json!({"values": {}, "locked": ["x/y"]});
    assert_eq!(
        effective(&absent, Some(&json!({"x": {"y": 1, "z": 2}}))),
        json!({"x": {"z": 2}})
    );
}
