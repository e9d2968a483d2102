//! The one resolution rule for one setting of one device, used both to resolve results
//! (without recording) and to explain a value (recording every candidate).

use std::collections::HashSet;
use std::sync::Arc;

use super::chain::{Chain, PathLayers};
use super::compile::{AppInfo, GroupInfo};
use super::mask::mask_has;
use crate::explain::{AppValues, Candidate, LossReason, Outcome, Source};
use crate::value::Value;

/// Records candidates when explaining; does nothing when resolving fast.
struct Recorder {
    cands: Option<Vec<Candidate>>,
    winner: Option<usize>,
}

impl Recorder {
    fn on(&self) -> bool {
        self.cands.is_some()
    }
    fn push(&mut self, source: Source, value: &Value, outcome: Outcome) -> Option<usize> {
        let c = self.cands.as_mut()?;
        c.push(Candidate {
            source,
            value: value.clone(),
            outcome,
        });
        Some(c.len() - 1)
    }
    /// Pushes a new winner; the previous winner loses with `Overridden { by: source }`.
    fn win(&mut self, source: Source, value: &Value) {
        let Some(c) = self.cands.as_mut() else {
            return;
        };
        if let Some(w) = self.winner {
            c[w].outcome = Outcome::Lost(LossReason::Overridden { by: source.clone() });
        }
        c.push(Candidate {
            source,
            value: value.clone(),
            outcome: Outcome::Won,
        });
        self.winner = Some(c.len() - 1);
    }
    fn winner_source(&self) -> Source {
        match (&self.cands, self.winner) {
            (Some(c), Some(w)) => c[w].source.clone(),
            _ => Source::Default,
        }
    }
}

struct PathCtx<'a> {
    groups: &'a [GroupInfo],
    chain: &'a Chain,
    default: &'a Arc<Value>,
    merge: bool,
    mask: &'a [u64],
}

impl<'a> PathCtx<'a> {
    /// The context of path `i` of `app`.
    fn new(
        groups: &'a [GroupInfo],
        app: &'a AppInfo,
        chain: &'a Chain,
        mask: &'a [u64],
        i: usize,
    ) -> Self {
        PathCtx {
            groups,
            chain,
            default: &app.defaults[i],
            merge: app.specs[i].merge,
            mask,
        }
    }

    fn policy_source(&self, level: usize, locked: bool) -> Source {
        let rec = &self.chain.levels[level];
        Source::Policy {
            policy: rec.original.id.clone(),
            group: self.groups[rec.group].id.clone(),
            locked,
        }
    }
    fn profile_source(&self, idx: usize, level: usize) -> Source {
        let rec = &self.chain.levels[level];
        Source::Profile {
            profile: self.chain.set.profiles[idx].name.clone(),
            policy: rec.original.id.clone(),
            group: self.groups[rec.group].id.clone(),
            rank: idx + 1,
        }
    }
    fn inactive_reason(&self, idx: usize) -> LossReason {
        if self.chain.set.profiles[idx].enabled {
            LossReason::ConditionNotMet
        } else {
            LossReason::ProfileDisabled
        }
    }

    /// The one resolution rule, used by both `effective` and `explain`.
    /// Returns (value, locked, winner source when recording).
    fn resolve(
        &self,
        layers: &PathLayers,
        local: Option<&Arc<Value>>,
        rec: &mut Recorder,
    ) -> (Arc<Value>, bool, Source) {
        if self.merge {
            return self.resolve_merge(layers, local, rec);
        }
        let mut value: &Arc<Value> = self.default;
        rec.win(Source::Default, value);
        let mut lock_level: Option<usize> = None;
        for (level, v, locked) in &layers.policy {
            if let Some(j) = lock_level {
                if rec.on() {
                    let src = self.policy_source(*level, *locked);
                    let by = self.policy_source(j, true);
                    rec.push(src, v, Outcome::Lost(LossReason::Locked { by }));
                }
                continue;
            }
            value = v;
            if rec.on() {
                rec.win(self.policy_source(*level, *locked), v);
            }
            if *locked {
                lock_level = Some(*level);
            }
        }
        let mut profile_won: Option<usize> = None;
        for (idx, level, v) in &layers.profile {
            let active = mask_has(self.mask, *idx);
            if !rec.on() {
                if !active || profile_won.is_some() || lock_level.is_some_and(|j| j < *level) {
                    continue;
                }
                value = v;
                profile_won = Some(*idx);
                continue;
            }
            let src = self.profile_source(*idx, *level);
            if !active {
                rec.push(src, v, Outcome::Lost(self.inactive_reason(*idx)));
            } else if let Some(w) = profile_won {
                let by = rec.winner_source();
                let reason = if w == *idx {
                    LossReason::ShadowedByAncestorProfile { by }
                } else {
                    LossReason::LowerPriority { winner: by }
                };
                rec.push(src, v, Outcome::Lost(reason));
            } else if let Some(j) = lock_level.filter(|j| *j < *level) {
                let by = self.policy_source(j, true);
                rec.push(src, v, Outcome::Lost(LossReason::Locked { by }));
            } else {
                value = v;
                profile_won = Some(*idx);
                rec.win(src, v);
            }
        }
        let locked = profile_won.is_some() || lock_level.is_some();
        if let Some(v) = local {
            if locked {
                if rec.on() {
                    let by = rec.winner_source();
                    rec.push(Source::Local, v, Outcome::Lost(LossReason::Locked { by }));
                }
            } else {
                value = v;
                rec.win(Source::Local, v);
            }
        }
        let src = rec.winner_source();
        (value.clone(), locked, src)
    }

    /// Merged lists: every policy layer and every active profile adds the items it does not
    /// already contain; the local value adds its items when the setting is not locked.
    fn resolve_merge(
        &self,
        layers: &PathLayers,
        local: Option<&Arc<Value>>,
        rec: &mut Recorder,
    ) -> (Arc<Value>, bool, Source) {
        // The merged items in order, and the set of them, so each addition is one lookup
        // rather than a scan of the list (long lists would make the merge quadratic).
        let mut items: Option<(Vec<Value>, HashSet<&Value>)> = None;
        let mut contributors = 0usize;
        let mut single: Option<Source> = None;
        fn add<'v>(items: &mut Option<(Vec<Value>, HashSet<&'v Value>)>, v: &'v Value) {
            let (list, seen) = items.get_or_insert_with(Default::default);
            let new = match v {
                Value::List(l) => l.as_slice(),
                other => std::slice::from_ref(other),
            };
            for it in new {
                if seen.insert(it) {
                    list.push(it.clone());
                }
            }
        }
        let default_idx = rec.push(Source::Default, self.default, Outcome::Won);
        let mut locked = false;
        for (level, v, l) in &layers.policy {
            add(&mut items, v);
            contributors += 1;
            locked |= *l;
            if rec.on() {
                let src = self.policy_source(*level, *l);
                single = Some(src.clone());
                rec.push(src, v, Outcome::Contributed);
            }
        }
        for (idx, level, v) in &layers.profile {
            let active = mask_has(self.mask, *idx);
            if active {
                add(&mut items, v);
                contributors += 1;
                locked = true;
            }
            if rec.on() {
                let src = self.profile_source(*idx, *level);
                if active {
                    single = Some(src.clone());
                    rec.push(src, v, Outcome::Contributed);
                } else {
                    rec.push(src, v, Outcome::Lost(self.inactive_reason(*idx)));
                }
            }
        }
        let mut local_lost = None;
        if let Some(v) = local {
            if locked {
                local_lost = Some(v);
            } else {
                add(&mut items, v);
                contributors += 1;
                single = Some(Source::Local);
                rec.push(Source::Local, v, Outcome::Contributed);
            }
        }
        let (value, source) = match items {
            None => (self.default.clone(), Source::Default),
            Some((list, _)) => {
                let source = if contributors == 1 {
                    single.unwrap_or(Source::Merged)
                } else {
                    Source::Merged
                };
                (Arc::new(Value::List(list)), source)
            }
        };
        if let Some(c) = rec.cands.as_mut() {
            if let Some(v) = local_lost {
                c.push(Candidate {
                    source: Source::Local,
                    value: Value::clone(v),
                    outcome: Outcome::Lost(LossReason::Locked { by: Source::Merged }),
                });
            }
            if let Some(d) = default_idx
                && contributors > 0
            {
                c[d].outcome = Outcome::Lost(LossReason::Overridden { by: source.clone() });
            }
            // A single contributor is the winner rather than a contributor.
            if contributors == 1 {
                for cand in c.iter_mut() {
                    if cand.outcome == Outcome::Contributed {
                        cand.outcome = Outcome::Won;
                    }
                }
            }
        }
        (value, locked, source)
    }
}

/// The value and lock of path `i` of `app` from `layers` (its chain's layers for that path)
/// and the device's local value, without recording an explanation.
fn resolve_value(
    groups: &[GroupInfo],
    app: &AppInfo,
    chain: &Chain,
    mask: &[u64],
    i: usize,
    layers: &PathLayers,
    local: Option<&Arc<Value>>,
) -> (Arc<Value>, bool) {
    let ctx = PathCtx::new(groups, app, chain, mask, i);
    let mut rec = Recorder {
        cands: None,
        winner: None,
    };
    let (v, l, _) = ctx.resolve(layers, local, &mut rec);
    (v, l)
}

/// Every path of `app` resolved for a device with active profiles `mask` and local values
/// `local` (by path index, ascending), without recording an explanation.
pub(super) fn resolve_app(
    groups: &[GroupInfo],
    app: &AppInfo,
    chain: &Chain,
    mask: &[u64],
    local: &[(usize, Arc<Value>)],
) -> AppValues {
    let mut values = Vec::with_capacity(app.specs.len());
    let mut locked = Vec::with_capacity(app.specs.len());
    let mut li = 0;
    for i in 0..app.specs.len() {
        while li < local.len() && local[li].0 < i {
            li += 1;
        }
        let lv = local.get(li).filter(|(p, _)| *p == i).map(|(_, v)| v);
        let (v, l) = resolve_value(groups, app, chain, mask, i, &chain.by_path[i], lv);
        values.push(v);
        locked.push(l);
    }
    AppValues { values, locked }
}

/// The value, lock and source of path `i` of `app`, with every candidate and its outcome.
pub(super) fn explain_value(
    groups: &[GroupInfo],
    app: &AppInfo,
    chain: &Chain,
    mask: &[u64],
    i: usize,
    local: Option<&Arc<Value>>,
) -> (Arc<Value>, bool, Source, Vec<Candidate>) {
    let ctx = PathCtx::new(groups, app, chain, mask, i);
    let mut rec = Recorder {
        cands: Some(Vec::new()),
        winner: None,
    };
    let (value, locked, source) = ctx.resolve(&chain.by_path[i], local, &mut rec);
    (value, locked, source, rec.cands.unwrap_or_default())
}

/// Re-resolves the `dirty` paths of `base` (a result for this chain's previous version with
/// the same mask and local values); `None` when none of them changed.
pub(super) fn patch(
    groups: &[GroupInfo],
    app: &AppInfo,
    chain: &Chain,
    mask: &[u64],
    base: &AppValues,
    dirty: &[usize],
    local: &[(usize, Arc<Value>)],
) -> Option<AppValues> {
    let mut fresh: Vec<(usize, Arc<Value>, bool)> = Vec::new();
    for &i in dirty {
        let (Some(_), Some(layers)) = (app.specs.get(i), chain.by_path.get(i)) else {
            continue;
        };
        let lv = local.iter().find(|(p, _)| *p == i).map(|(_, v)| v);
        let (v, l) = resolve_value(groups, app, chain, mask, i, layers, lv);
        if base.values.get(i) != Some(&v) || base.locked.get(i) != Some(&l) {
            fresh.push((i, v, l));
        }
    }
    if fresh.is_empty() {
        return None;
    }
    let mut out = base.clone();
    for (i, v, l) in fresh {
        if let (Some(slot_v), Some(slot_l)) = (out.values.get_mut(i), out.locked.get_mut(i)) {
            *slot_v = v;
            *slot_l = l;
        }
    }
    Some(out)
}
