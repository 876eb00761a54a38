//! A bounded map with approximate least-recently-used eviction: two generations, the older
//! dropped whole when the newer fills. O(1) per operation, never more than `cap` entries.
use std::{collections::HashMap, hash::Hash};

pub struct GenCache<K, V> {
    half: usize,
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V: Clone> GenCache<K, V> {
    pub fn new(cap: usize) -> Self {
        Self { half: (cap / 2).max(1), young: HashMap::new(), old: HashMap::new() }
    }

    pub fn get(&mut self, k: &K) -> Option<V> {
        if let Some(v) = self.young.get(k) {
            return Some(v.clone());
        }
        let v = self.old.remove(k)?;
        self.insert(k.clone(), v.clone());
        Some(v)
    }

    pub fn insert(&mut self, k: K, v: V) {
        if self.young.len() >= self.half && !self.young.contains_key(&k) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keeps_what_is_used() {
        let mut c = GenCache::new(4);
        for i in 0..100 {
            c.insert(i, i * 10);
            assert!(c.len() <= 4);
            // 0 is read all the time, so it survives every turnover.
            if i > 0 {
                assert_eq!(c.get(&0), Some(0), "after {i}");
            } else {
                c.get(&0);
            }
        }
        assert_eq!(c.get(&1), None);
        assert_eq!(c.get(&99), Some(990));
    }
}
