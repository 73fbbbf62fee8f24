//! Bounded label sets: which threads and processes are labelled of their own.

use std::collections::HashMap;

use super::LINGER_NS;

/// The ids (pids, or tgids) that get labels of their own: at most `cap`
/// at a time, chosen by activity; the rest are "other". An id that leaves
/// the set (or exits) lingers, still exported but no longer updated, and is
/// removed after LINGER_NS; at most `cap` ids linger.
#[derive(Debug)]
pub struct Bounded {
    cap: usize,
    labelled: HashMap<u32, ()>,
    lingering: HashMap<u32, u64>,
    activity: HashMap<u32, u64>,
}

impl Bounded {
    pub fn new(cap: usize) -> Self {
        Bounded {
            cap,
            labelled: HashMap::new(),
            lingering: HashMap::new(),
            activity: HashMap::new(),
        }
    }

    /// Whether `id` is labelled; admits it while there is room.
    pub fn admit(&mut self, id: u32) -> bool {
        if self.labelled.contains_key(&id) {
            return true;
        }
        if self.labelled.len() < self.cap {
            self.lingering.remove(&id);
            self.labelled.insert(id, ());
            return true;
        }
        false
    }

    pub fn note(&mut self, id: u32, amount: u64) {
        *self.activity.entry(id).or_default() += amount.max(1);
    }

    pub fn labelled_len(&self) -> usize {
        self.labelled.len()
    }

    /// Re-rank by the activity seen since the last call; returns the ids
    /// whose series must go now.
    pub fn rebalance(&mut self, now: u64, alive: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut ranked: Vec<(u32, u64)> = self.activity.drain().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<u32> = ranked.iter().take(self.cap).map(|r| r.0).collect();
        // the most active first; labelled ones keep the remaining places
        let mut keep: Vec<u32> = want.clone();
        let mut rest: Vec<u32> = self
            .labelled
            .keys()
            .copied()
            .filter(|id| !want.contains(id))
            .collect();
        rest.sort_unstable();
        keep.extend(rest);
        keep.retain(|&id| alive(id));
        keep.truncate(self.cap);
        for id in self.labelled.keys().copied().collect::<Vec<_>>() {
            if !keep.contains(&id) {
                self.labelled.remove(&id);
                self.lingering.insert(id, now);
            }
        }
        for id in keep {
            self.lingering.remove(&id);
            self.labelled.insert(id, ());
        }
        let mut gone: Vec<u32> = self
            .lingering
            .iter()
            .filter(|(_, &since)| now.saturating_sub(since) >= LINGER_NS)
            .map(|(&id, _)| id)
            .collect();
        // bound the lingering set too: the oldest go first
        let mut by_age: Vec<(u32, u64)> = self
            .lingering
            .iter()
            .filter(|(id, _)| !gone.contains(id))
            .map(|(&id, &t)| (id, t))
            .collect();
        by_age.sort_by_key(|&(id, t)| (t, id));
        let excess = by_age.len().saturating_sub(self.cap);
        gone.extend(by_age[..excess].iter().map(|r| r.0));
        for id in &gone {
            self.lingering.remove(id);
        }
        gone.sort_unstable();
        gone
    }
}
