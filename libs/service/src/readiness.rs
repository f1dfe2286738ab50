//! Named readiness checks: each dependency a service needs reports here, and
//! `/readyz` is ready only when all of them are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared, cloneable set of readiness checks.
#[derive(Clone, Default, Debug)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, Result<(), String>>>>,
}

impl Readiness {
    /// Registers `name` as not ready yet.
    pub fn register(&self, name: &str) {
        self.lock().insert(name.to_owned(), Err("starting".to_owned()));
    }

    /// Records the latest outcome of check `name`.
    pub fn set(&self, name: &str, outcome: Result<(), String>) {
        self.lock().insert(name.to_owned(), outcome);
    }

    /// Whether every check passes, with each check's state.
    pub fn report(&self) -> (bool, BTreeMap<String, String>) {
        let checks = self.lock();
        let ready = checks.values().all(Result::is_ok);
        let states = checks
            .iter()
            .map(|(name, outcome)| (name.clone(), outcome.as_ref().err().cloned().unwrap_or_else(|| "ok".into())))
            .collect();
        (ready, states)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Result<(), String>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.checks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let readiness = Readiness::default();
        readiness.register("kafka");
        readiness.register("store");
        assert!(!readiness.report().0);
        readiness.set("kafka", Ok(()));
        assert!(!readiness.report().0);
        readiness.set("store", Ok(()));
        assert!(readiness.report().0);
        readiness.set("kafka", Err("metadata timed out".into()));
        let (ready, states) = readiness.report();
        assert!(!ready);
        assert_eq!(states["kafka"], "metadata timed out");
    }
}
