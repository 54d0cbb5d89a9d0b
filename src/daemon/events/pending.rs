//! Passes waiting to start: a set of (rule, pass) keys, each with the time
//! it becomes due. Events for a key that is already waiting add nothing, so
//! a flood of events costs one entry per key, and the set is capped: past
//! `MAX_KEYS`, a rule's repository passes collapse into one pass over all
//! its repositories.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::matcher::Pass;

/// Events for one key within this window are one pass.
pub(crate) const COALESCE: Duration = Duration::from_millis(500);
/// At most this many keys wait at once.
pub(crate) const MAX_KEYS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub rule: String,
    pub pass: Pass,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    due: BTreeMap<Key, Instant>,
}

impl Pending {
    /// Records an event for `key` seen at `now`; it becomes due `COALESCE`
    /// after the first event not yet taken.
    pub(crate) fn add(&mut self, key: Key, now: Instant) {
        if self.due.contains_key(&key) {
            return;
        }
        let key = if self.due.len() >= MAX_KEYS && matches!(key.pass, Pass::Repo(_)) {
            self.collapse(&key.rule);
            Key {
                rule: key.rule,
                pass: Pass::AllRepos,
            }
        } else {
            key
        };
        self.due.entry(key).or_insert(now + COALESCE);
    }

    /// Drops the rule's repository passes (an all-repositories pass covers them).
    fn collapse(&mut self, rule: &str) {
        self.due
            .retain(|k, _| k.rule != rule || !matches!(k.pass, Pass::Repo(_)));
    }

    /// Takes the due keys that `start` accepts (it claims the rule; `None`
    /// while the rule is running: the key stays and runs after, one more
    /// pass however many events came meanwhile).
    pub(crate) fn take_due<G>(
        &mut self,
        now: Instant,
        mut start: impl FnMut(&Key) -> Option<G>,
    ) -> Vec<(Key, G)> {
        let due: Vec<Key> = self
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut taken = Vec::new();
        // Widest pass first: a normal run covers every repository pass.
        for key in due.into_iter().rev() {
            if let Some(g) = start(&key) {
                self.due.remove(&key);
                taken.push((key, g));
            }
        }
        taken
    }

    /// The next time a key not yet due becomes due.
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        self.due.values().filter(|t| **t > now).min().copied()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rule: &str, repo: &str) -> Key {
        Key {
            rule: rule.into(),
            pass: Pass::Repo(repo.into()),
        }
    }

    #[test]
    fn events_within_the_window_are_one_pass() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            p.add(key("r", "app"), t0 + Duration::from_micros(i));
        }
        assert_eq!(p.len(), 1);
        assert!(p.take_due(t0, |_| Some(())).is_empty(), "not due yet");
        assert_eq!(p.next_due(t0), Some(t0 + COALESCE));
        let taken = p.take_due(t0 + COALESCE, |_| Some(()));
        assert_eq!(taken.len(), 1);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_busy_rule_keeps_its_key_for_one_more_pass() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        p.add(key("r", "app"), t0);
        let later = t0 + COALESCE;
        assert!(p.take_due(later, |_| None::<()>).is_empty());
        assert_eq!(p.len(), 1, "still waiting while the rule runs");
        assert_eq!(p.next_due(later), None, "no busy wake-up for a blocked key");
        p.add(key("r", "app"), later);
        assert_eq!(p.len(), 1, "more events while waiting add nothing");
        assert_eq!(p.take_due(later, |_| Some(())).len(), 1);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_repositories() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            p.add(key("r", &format!("repo{i}")), t0);
        }
        assert!(p.len() <= MAX_KEYS);
        let taken = p.take_due(t0 + COALESCE, |_| Some(()));
        assert!(taken.iter().any(|(k, _)| k.pass == Pass::AllRepos));
    }
}
