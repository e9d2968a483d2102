//! The fuzz targets' entry points (`fuzz/fuzz_targets/policy_state.rs`, built with `--cfg fuzzing`),
//! and the replay of their seed corpus in this crate's unit tests.

use crate::{PolicyError, Resolver, State};

/// Loads a state document from untrusted bytes (JSON, or TOML when it is not JSON), builds a
/// resolver and explains every setting of the first devices. Never panics on any input; used
/// by the fuzz target and the corpus replay test. Returns `(explained, agreed)`: how many
/// settings were explained and for how many the explanation's value equals the effective
/// value (the two must be equal).
pub fn state(data: &[u8]) -> Result<(usize, usize), PolicyError> {
    let state = match State::from_json(data) {
        Ok(s) => s,
        Err(json_err) => match std::str::from_utf8(data) {
            Ok(text) => State::from_toml(text).map_err(|_| json_err)?,
            Err(_) => return Err(json_err),
        },
    };
    let resolver = Resolver::new(&state)?;
    let mut n = 0;
    let mut agreed = 0;
    for d in state.devices.iter().take(8) {
        let eff = resolver.effective(&d.id)?;
        for s in &state.schemas {
            for path in s.settings.keys() {
                let why = resolver.explain(&d.id, &s.app, path)?;
                n += 1;
                if eff.get(&s.app, path) == Some(&why.value)
                    && eff.is_locked(&s.app, path) == Some(why.locked)
                {
                    agreed += 1;
                }
            }
            let _ = eff.app_json(&s.app);
        }
    }
    Ok((n, agreed))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_state_corpus_replays_and_explain_agrees() {
        let corpus = outpost_testkit::corpus("policy_state");
        assert!(corpus.len() >= 3, "corpus has {} files", corpus.len());
        let mut explained = 0;
        for (name, data) in &corpus {
            if let Ok((n, agreed)) = super::state(data) {
                assert_eq!(n, agreed, "{name}");
                explained += n;
            }
        }
        assert!(explained > 0, "no corpus file resolved");
    }
}
