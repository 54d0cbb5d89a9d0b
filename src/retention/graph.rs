//! References between the manifests of one repository (index children,
//! referrer subjects), what stays reachable from what is kept, and the order
//! deletions must be sent in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::plan::{DeleteReason, ManifestInfo};
use crate::oci::{Digest, is_index};
use crate::plan::referrer_subject;

/// How a manifest came to be kept (for reasons).
#[derive(Clone, Debug)]
pub(super) enum Origin {
    Tag(String),
    Manifest(Digest),
    Untagged,
}

/// References between the manifests of one repository.
pub(super) struct Graph<'a> {
    manifests: &'a HashMap<Digest, ManifestInfo>,
    /// subject -> referrers (by `subject` field, and by `sha256-<hex>` tags).
    referrers: HashMap<Digest, BTreeSet<Digest>>,
}

impl<'a> Graph<'a> {
    pub(super) fn new(
        tags: &BTreeMap<String, Digest>,
        manifests: &'a HashMap<Digest, ManifestInfo>,
    ) -> Self {
        let mut referrers: HashMap<Digest, BTreeSet<Digest>> = HashMap::new();
        for (d, m) in manifests {
            if let Some(s) = &m.subject {
                referrers.entry(s.clone()).or_default().insert(d.clone());
            }
        }
        for (tag, d) in tags {
            if let Some(s) = referrer_subject(tag).and_then(|s| Digest::parse(&s).ok()) {
                if s != *d {
                    referrers.entry(s).or_default().insert(d.clone());
                }
            }
        }
        Graph {
            manifests,
            referrers,
        }
    }

    pub(super) fn children(&self, d: &Digest) -> impl Iterator<Item = &Digest> {
        self.manifests
            .get(d)
            .into_iter()
            .flat_map(|m| m.children.iter().map(|c| &c.digest))
            .filter(move |c| *c != d)
    }

    pub(super) fn referrers(&self, d: &Digest) -> impl Iterator<Item = &Digest> {
        self.referrers.get(d).into_iter().flatten()
    }

    /// An index reachable from a known manifest whose own children are unknown.
    pub(super) fn unknown_index(&self) -> Option<&Digest> {
        self.manifests
            .values()
            .flat_map(|m| m.children.iter())
            .find(|c| is_index(&c.media_type) && !self.manifests.contains_key(&c.digest))
            .map(|c| &c.digest)
    }

    /// Everything kept: the roots, the children of kept indexes, the subjects
    /// of kept referrers, transitively. Maps each digest to what keeps it.
    pub(super) fn closure(&self, roots: Vec<(Digest, Origin)>) -> HashMap<Digest, Origin> {
        let mut keep: HashMap<Digest, Origin> = HashMap::new();
        let mut queue: VecDeque<Digest> = VecDeque::new();
        for (d, origin) in roots {
            if !keep.contains_key(&d) {
                keep.insert(d.clone(), origin);
                queue.push_back(d);
            }
        }
        while let Some(d) = queue.pop_front() {
            let Some(m) = self.manifests.get(&d) else {
                continue;
            };
            let next = m
                .children
                .iter()
                .map(|c| &c.digest)
                .chain(m.subject.as_ref());
            for n in next {
                if !keep.contains_key(n) {
                    keep.insert(n.clone(), Origin::Manifest(d.clone()));
                    queue.push_back(n.clone());
                }
            }
        }
        keep
    }
}

/// Orders `set` so that for every edge (a, b) with both ends in the set, a
/// comes first; ties by digest. `None` on a cycle.
pub(super) fn topological(
    set: &BTreeMap<Digest, DeleteReason>,
    edges: &[(Digest, Digest)],
) -> Option<Vec<Digest>> {
    let mut indegree: BTreeMap<&Digest, usize> = set.keys().map(|d| (d, 0)).collect();
    let mut next: HashMap<&Digest, BTreeSet<&Digest>> = HashMap::new();
    for (a, b) in edges {
        if set.contains_key(a)
            && set.contains_key(b)
            && a != b
            && next.entry(a).or_default().insert(b)
        {
            *indegree.get_mut(b).expect("in set") += 1;
        }
    }
    let mut ready: BTreeSet<&Digest> = indegree
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(d, _)| *d)
        .collect();
    let mut out = Vec::with_capacity(set.len());
    while let Some(d) = ready.pop_first() {
        out.push(d.clone());
        for n in next.get(d).into_iter().flatten() {
            let deg = indegree.get_mut(n).expect("in set");
            *deg -= 1;
            if *deg == 0 {
                ready.insert(n);
            }
        }
    }
    (out.len() == set.len()).then_some(out)
}
