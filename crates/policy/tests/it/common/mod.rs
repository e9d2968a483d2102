//! Helpers shared by the policy integration tests.

use std::collections::BTreeMap;

use outpost_policy::{Resolver, State, Value};

/// Every device's `(path, value, locked)` settings of one application, by device id.
pub type Snapshot = BTreeMap<String, Vec<(String, Value, bool)>>;

/// The [`Snapshot`] of `app` for every device of `s`.
pub fn effective_all(r: &Resolver, s: &State, app: &str) -> Snapshot {
    s.devices
        .iter()
        .map(|d| {
            let e = r.effective(&d.id).expect("device");
            let v = e
                .iter(app)
                .map(|(p, v, l)| (p.to_string(), v.clone(), l))
                .collect();
            (d.id.clone(), v)
        })
        .collect()
}
