//! Local settings over a received settings document, on the paths the document does not
//! lock. Pure functions, no IO.
//!
//! ## The lock convention
//!
//! A received document is an [`outpost_wire::settings::SettingsDocument`]:
//! `{"locked": ["path.a", "path/b/c", ...], "values": {...}}`, each lock a path of object
//! keys joined by `.` or `/`. Locking a path locks everything beneath it. Any other
//! document (no `"locked"` array) is itself the values, and every path is locked: the
//! server wins.
//!
//! A local value (the agent configuration's `local_settings` for the application) is merged
//! into the values object by object: a local object is merged key by key (replacing a
//! received non-object value at its path), and a local leaf (anything but an object:
//! string, number, bool, null, array) at path `P` replaces the value at `P`. Nothing is
//! changed at or beneath a locked path: a local value at `P` is skipped if a locked path
//! equals `P` or lies above it, and a local leaf is also skipped if it would replace a
//! received object that holds a value at a locked path beneath `P`. So every locked path
//! reads in the effective settings exactly as in the received values (present or absent).
//! The empty path `""` locks the whole document. Keys containing `/` or `.` cannot be named
//! by a lock (policy setting paths never contain them).

use outpost_wire::settings::{LOCK_SEPARATORS, SettingsDocument};
use serde_json::{Map, Value};

/// Whether `doc` follows the values-and-locks form, and if so its values and locks.
fn split(doc: &Value) -> Option<(Value, Vec<Vec<String>>)> {
    let d = SettingsDocument::from_locked_form(doc)?;
    let locks = d
        .lock_paths()
        .map(|keys| keys.into_iter().map(str::to_owned).collect())
        .collect();
    Some((d.values, locks))
}

/// Whether a lock at `lock` covers anything at or beneath `path`, or `path` itself.
fn touches(lock: &[String], path: &[String]) -> bool {
    let n = lock.len().min(path.len());
    lock[..n] == path[..n]
}

/// Whether `lock` is `path` or lies above it.
fn covers(lock: &[String], path: &[String]) -> bool {
    lock.len() <= path.len() && lock[..] == path[..lock.len()]
}

fn merge(target: &mut Value, local: &Value, path: &mut Vec<String>, locks: &[Vec<String>]) {
    if locks.iter().any(|l| covers(l, path)) {
        return;
    }
    match local {
        Value::Object(m) => {
            if !target.is_object() {
                // Nothing exists beneath a received leaf, so no locked value can be lost by
                // turning it into an object; locked keys are skipped while merging below.
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in m {
                    path.push(k.clone());
                    match t.get_mut(k) {
                        Some(slot) => merge(slot, v, path, locks),
                        None => {
                            let mut slot = Value::Null;
                            if merge_new(&mut slot, v, path, locks) {
                                t.insert(k.clone(), slot);
                            }
                        }
                    }
                    path.pop();
                }
            }
        }
        leaf => {
            let clobbers = locks.iter().any(|l| {
                l.len() > path.len()
                    && touches(l, path)
                    && get_path(target, &l[path.len()..].join("/")).is_some()
            });
            if !clobbers {
                *target = leaf.clone();
            }
        }
    }
}

/// Merges `local` into a slot absent from the received values; whether anything was set.
fn merge_new(
    slot: &mut Value,
    local: &Value,
    path: &mut Vec<String>,
    locks: &[Vec<String>],
) -> bool {
    if locks.iter().any(|l| covers(l, path)) {
        return false;
    }
    match local {
        Value::Object(_) => {
            *slot = Value::Object(Map::new());
            merge(slot, local, path, locks);
            true
        }
        leaf => {
            *slot = leaf.clone();
            true
        }
    }
}

/// The values of a received document and its locks, as [`effective`] reads them: `None` for
/// the locks means everything is locked.
pub fn values_and_locks(document: &Value) -> (Value, Option<Vec<String>>) {
    match split(document) {
        Some((values, locks)) => (
            values,
            Some(locks.into_iter().map(|l| l.join("/")).collect()),
        ),
        None => (document.clone(), None),
    }
}

/// The effective settings: `local` overlaid onto `document` on the paths it does not lock
/// (see the module documentation for the convention).
///
/// ```
/// use serde_json::json;
/// use outpost_agent::overlay::effective;
///
/// let received = json!({
///     "values": {"proxy": {"host": "p.corp", "port": 8080}, "theme": "dark"},
///     "locked": ["proxy/host"]
/// });
/// let local = json!({"proxy": {"host": "evil", "port": 3128}, "theme": "light"});
/// assert_eq!(
///     effective(&received, Some(&local)),
///     json!({"proxy": {"host": "p.corp", "port": 3128}, "theme": "light"})
/// );
/// // Without a "locked" list the server wins everywhere.
/// assert_eq!(effective(&json!({"theme": "dark"}), Some(&local)), json!({"theme": "dark"}));
/// ```
pub fn effective(document: &Value, local: Option<&Value>) -> Value {
    let Some((mut values, locks)) = split(document) else {
        return document.clone();
    };
    if let Some(local) = local {
        merge(&mut values, local, &mut Vec::new(), &locks);
    }
    values
}

/// The value at a path of keys joined by `/` or `.` (`""` is the root).
pub fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    path.split(LOCK_SEPARATORS)
        .try_fold(v, |cur, k| cur.as_object()?.get(k))
}
