//! Indexes for RabbitMQ-style topic wildcards (`*` one dot-segment, `#`
//! zero or more), so the cost of a lookup grows with what it matches, not
//! with everything stored.
//!
//! * [`PatternIndex`]: wildcard *subscriptions*, looked up by a published
//!   topic name. A segment trie like NATS's sublist or RabbitMQ's topic
//!   exchange (literal children, a `*` child, a `#` child) with a bounded
//!   match cache. Lookups take a read lock; a cache hit does not allocate.
//! * [`NameIndex`]: plain topic *names* (the retained store's
//!   destinations), looked up by a wildcard pattern.
//!
//! Both give exactly the answers of [`pattern_matches`] run over every
//! entry (a proptest below checks it). Walks are iterative with a visited
//! set of (node, segment) pairs, so a hostile pattern like `#.#.#.#.x` or a
//! very long name cannot blow up the time or the stack.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, RwLock,
    },
};

use dashmap::DashMap;

#[cfg(doc)]
use crate::router::pattern_matches;

type Hasher = foldhash::fast::RandomState;
type Map<V> = std::collections::HashMap<Box<str>, V, Hasher>;

/// Published topic names whose match lists are cached, at most.
pub const MATCH_CACHE_MAX: usize = 4096;

/// How a node hangs off its parent.
#[derive(Debug, Clone)]
enum Edge {
    Root,
    Literal(Box<str>),
    Star,
    Hash,
}

#[derive(Debug)]
struct Node<T> {
    literal: Map<u32>,
    star: Option<u32>,
    hash: Option<u32>,
    values: Vec<T>,
    parent: u32,
    edge: Edge,
}

impl<T> Node<T> {
    fn new(parent: u32, edge: Edge) -> Self {
        Node {
            literal: Map::default(),
            star: None,
            hash: None,
            values: Vec::new(),
            parent,
            edge,
        }
    }

    fn is_unused(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.values.is_empty()
    }
}

/// The trie itself, an arena of nodes (index 0 is the root).
#[derive(Debug)]
struct Trie<T> {
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    /// Stored values per pattern, for listing.
    patterns: Map<usize>,
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::new(0, Edge::Root)],
            free: Vec::new(),
            patterns: Map::default(),
        }
    }
}

impl<T> Trie<T> {
    fn alloc(&mut self, parent: u32, edge: Edge) -> u32 {
        let node = Node::new(parent, edge);
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// The node for `pattern`, created if `create`.
    fn find(&mut self, pattern: &str, create: bool) -> Option<u32> {
        let mut at = 0u32;
        for seg in pattern.split('.') {
            let node = &self.nodes[at as usize];
            let next = match seg {
                "*" => node.star,
                "#" => node.hash,
                _ => node.literal.get(seg).copied(),
            };
            at = match next {
                Some(n) => n,
                None if create => {
                    let edge = match seg {
                        "*" => Edge::Star,
                        "#" => Edge::Hash,
                        _ => Edge::Literal(seg.into()),
                    };
                    let n = self.alloc(at, edge.clone());
                    let node = &mut self.nodes[at as usize];
                    match edge {
                        Edge::Star => node.star = Some(n),
                        Edge::Hash => node.hash = Some(n),
                        Edge::Literal(s) => {
                            node.literal.insert(s, n);
                        }
                        Edge::Root => {}
                    }
                    n
                }
                None => return None,
            };
        }
        Some(at)
    }

    /// Frees `at` and its ancestors while they hold nothing.
    fn prune(&mut self, mut at: u32) {
        while at != 0 && self.nodes[at as usize].is_unused() {
            let node = &self.nodes[at as usize];
            let parent = node.parent;
            let edge = std::mem::replace(&mut self.nodes[at as usize].edge, Edge::Root);
            let p = &mut self.nodes[parent as usize];
            match edge {
                Edge::Star => p.star = None,
                Edge::Hash => p.hash = None,
                Edge::Literal(s) => {
                    p.literal.remove(&s);
                }
                Edge::Root => {}
            }
            self.free.push(at);
            at = parent;
        }
    }
}

/// Wildcard subscriptions by pattern (`order.*`, `order.#`), looked up by
/// a published topic name.
///
/// A lookup first asks the match cache (topic → shared list of matching
/// values, stamped with the index's generation); on a miss it walks the
/// trie under a read lock and caches the result. Every insert or removal
/// bumps the generation, so a stale cached list is never used. The cache
/// holds at most [`MATCH_CACHE_MAX`] topics; when full, half is dropped.
#[derive(Debug)]
pub struct PatternIndex<T> {
    trie: RwLock<Trie<T>>,
    generation: AtomicU64,
    len: AtomicUsize,
    cache: DashMap<Box<str>, (u64, Arc<[T]>), Hasher>,
    cache_max: usize,
}

impl<T: Clone> Default for PatternIndex<T> {
    fn default() -> Self {
        Self::with_cache_max(MATCH_CACHE_MAX)
    }
}

impl<T: Clone> PatternIndex<T> {
    /// An empty index caching at most `cache_max` topics' match lists
    /// (0: no cache).
    pub fn with_cache_max(cache_max: usize) -> Self {
        PatternIndex {
            trie: RwLock::new(Trie::default()),
            generation: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            cache: DashMap::with_hasher(Hasher::default()),
            cache_max,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Trie<T>> {
        self.trie.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Values stored, over all patterns.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether nothing is stored (publishers skip the lookup then).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `value` under `pattern` (a dot-separated topic pattern).
    pub fn insert(&self, pattern: &str, value: T) {
        let mut trie = self.write();
        if let Some(at) = trie.find(pattern, true) {
            trie.nodes[at as usize].values.push(value);
            *trie.patterns.entry(pattern.into()).or_default() += 1;
            self.len.fetch_add(1, Relaxed);
        }
        self.generation.fetch_add(1, Relaxed);
        drop(trie);
        self.cache.clear();
    }

    /// Removes the first value under `pattern` for which `is` holds;
    /// whether one was found.
    pub fn remove(&self, pattern: &str, is: impl Fn(&T) -> bool) -> bool {
        let mut trie = self.write();
        let Some(at) = trie.find(pattern, false) else {
            return false;
        };
        let values = &mut trie.nodes[at as usize].values;
        let Some(pos) = values.iter().position(is) else {
            return false;
        };
        values.remove(pos);
        if let Some(n) = trie.patterns.get_mut(pattern) {
            *n -= 1;
            if *n == 0 {
                trie.patterns.remove(pattern);
            }
        }
        trie.prune(at);
        self.len.fetch_sub(1, Relaxed);
        self.generation.fetch_add(1, Relaxed);
        drop(trie);
        self.cache.clear();
        true
    }

    /// Every value whose pattern matches `topic` (once per stored value).
    pub fn matches(&self, topic: &str) -> Arc<[T]> {
        let generation = self.generation.load(Relaxed);
        if let Some(hit) = self.cache.get(topic) {
            if hit.0 == generation {
                return hit.1.clone();
            }
        }
        let (generation, found) = {
            let trie = self.trie.read().unwrap_or_else(|e| e.into_inner());
            // Read under the lock: the list below is exactly this generation's.
            let generation = self.generation.load(Relaxed);
            let mut found = Vec::new();
            for at in matching_nodes(&trie, topic) {
                found.extend(trie.nodes[at as usize].values.iter().cloned());
            }
            (generation, Arc::<[T]>::from(found))
        };
        if self.cache_max > 0 {
            if self.cache.len() >= self.cache_max {
                let mut n = 0usize;
                self.cache.retain(|_, _| {
                    n += 1;
                    n.is_multiple_of(2)
                });
            }
            self.cache.insert(topic.into(), (generation, found.clone()));
        }
        found
    }

    /// Each pattern with how many values it holds (for the status page).
    pub fn patterns(&self) -> Vec<(String, usize)> {
        let trie = self.trie.read().unwrap_or_else(|e| e.into_inner());
        trie.patterns
            .iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect()
    }
}

/// Nodes holding values whose pattern matches `topic`, each once.
fn matching_nodes<T>(trie: &Trie<T>, topic: &str) -> Vec<u32> {
    let segs: Vec<&str> = topic.split('.').collect();
    let mut out = Vec::new();
    let mut seen: HashSet<(u32, usize), Hasher> = HashSet::default();
    let mut stack = vec![(0u32, 0usize)];
    while let Some((at, i)) = stack.pop() {
        if !seen.insert((at, i)) {
            continue;
        }
        let node = &trie.nodes[at as usize];
        if let Some(&seg) = segs.get(i) {
            if let Some(&c) = node.literal.get(seg) {
                stack.push((c, i + 1));
            }
            if let Some(c) = node.star {
                stack.push((c, i + 1));
            }
            if matches!(node.edge, Edge::Hash) {
                // Still inside a `#`: it may take this segment too.
                stack.push((at, i + 1));
            }
        } else if !node.values.is_empty() {
            out.push(at);
        }
        if let Some(h) = node.hash {
            // Entering a `#` that has taken no segment yet.
            stack.push((h, i));
        }
    }
    out
}

#[derive(Debug)]
struct NameNode {
    children: Map<u32>,
    present: bool,
    parent: u32,
    seg: Box<str>,
}

/// A set of topic names (no wildcards), looked up by wildcard pattern:
/// the names [`pattern_matches`] would accept, found by walking only the
/// part of the trie the pattern can reach.
#[derive(Debug)]
pub struct NameIndex {
    nodes: Vec<NameNode>,
    free: Vec<u32>,
    len: usize,
}

impl Default for NameIndex {
    fn default() -> Self {
        NameIndex {
            nodes: vec![NameNode {
                children: Map::default(),
                present: false,
                parent: 0,
                seg: "".into(),
            }],
            free: Vec::new(),
            len: 0,
        }
    }
}

impl NameIndex {
    /// Names stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no name is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `name`.
    pub fn insert(&mut self, name: &str) {
        let mut at = 0u32;
        for seg in name.split('.') {
            at = match self.nodes[at as usize].children.get(seg) {
                Some(&c) => c,
                None => {
                    let node = NameNode {
                        children: Map::default(),
                        present: false,
                        parent: at,
                        seg: seg.into(),
                    };
                    let c = match self.free.pop() {
                        Some(i) => {
                            self.nodes[i as usize] = node;
                            i
                        }
                        None => {
                            self.nodes.push(node);
                            (self.nodes.len() - 1) as u32
                        }
                    };
                    self.nodes[at as usize].children.insert(seg.into(), c);
                    c
                }
            };
        }
        let node = &mut self.nodes[at as usize];
        if !node.present {
            node.present = true;
            self.len += 1;
        }
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let mut at = 0u32;
        for seg in name.split('.') {
            match self.nodes[at as usize].children.get(seg) {
                Some(&c) => at = c,
                None => return false,
            }
        }
        if !std::mem::take(&mut self.nodes[at as usize].present) {
            return false;
        }
        self.len -= 1;
        while at != 0 {
            let node = &self.nodes[at as usize];
            if node.present || !node.children.is_empty() {
                break;
            }
            let parent = node.parent;
            let seg = std::mem::take(&mut self.nodes[at as usize].seg);
            self.nodes[parent as usize].children.remove(&seg);
            self.free.push(at);
            at = parent;
        }
        true
    }

    /// The stored names `pattern` matches, in no particular order.
    pub fn matching(&self, pattern: &str) -> Vec<String> {
        let pat: Vec<&str> = pattern.split('.').collect();
        let mut out = Vec::new();
        let mut seen: HashSet<(u32, usize), Hasher> = HashSet::default();
        let mut stack = vec![(0u32, 0usize)];
        while let Some((at, pi)) = stack.pop() {
            if !seen.insert((at, pi)) {
                continue;
            }
            let node = &self.nodes[at as usize];
            match pat.get(pi) {
                None => {
                    if node.present && at != 0 {
                        out.push(self.name_of(at));
                    }
                }
                Some(&"#") => {
                    // Zero segments, or one more and stay on `#`.
                    stack.push((at, pi + 1));
                    stack.extend(node.children.values().map(|&c| (c, pi)));
                }
                Some(&"*") => stack.extend(node.children.values().map(|&c| (c, pi + 1))),
                Some(seg) => {
                    if let Some(&c) = node.children.get(*seg) {
                        stack.push((c, pi + 1));
                    }
                }
            }
        }
        out
    }

    fn name_of(&self, mut at: u32) -> String {
        let mut segs = Vec::new();
        while at != 0 {
            let node = &self.nodes[at as usize];
            segs.push(&*node.seg);
            at = node.parent;
        }
        segs.reverse();
        segs.join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::pattern_matches;
    use proptest::prelude::*;

    fn sorted(v: &[u32]) -> Vec<u32> {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn pattern_index_matches_like_rabbitmq() {
        let idx = PatternIndex::default();
        for (i, p) in ["order.*", "order.#", "#", "*.b.#", "a.#.z", "a.#.#.z"]
            .iter()
            .enumerate()
        {
            idx.insert(p, i as u32);
        }
        assert_eq!(sorted(&idx.matches("order.1")), vec![0, 1, 2]);
        assert_eq!(sorted(&idx.matches("order")), vec![1, 2]);
        assert_eq!(sorted(&idx.matches("a.b")), vec![2, 3]);
        assert_eq!(sorted(&idx.matches("a.z")), vec![2, 4, 5]);
        assert_eq!(sorted(&idx.matches("a.b.c.z")), vec![2, 3, 4, 5]);
        assert_eq!(sorted(&idx.matches("x.c.b")), vec![2]);
    }

    #[test]
    fn cache_is_invalidated_by_subscribe_and_unsubscribe() {
        let idx = PatternIndex::default();
        idx.insert("a.*", 1u32);
        assert_eq!(&*idx.matches("a.x"), &[1]);
        assert_eq!(&*idx.matches("a.x"), &[1], "cached");
        idx.insert("a.#", 2);
        assert_eq!(sorted(&idx.matches("a.x")), vec![1, 2]);
        assert!(idx.remove("a.*", |v| *v == 1));
        assert!(!idx.remove("a.*", |v| *v == 1), "already gone");
        assert_eq!(&*idx.matches("a.x"), &[2]);
        assert!(idx.remove("a.#", |v| *v == 2));
        assert!(idx.matches("a.x").is_empty());
        assert!(idx.is_empty());
        let trie = idx.trie.read().unwrap();
        assert_eq!(
            trie.nodes.len() - trie.free.len(),
            1,
            "emptied trie is pruned to its root"
        );
        assert!(trie.patterns.is_empty());
    }

    #[test]
    fn match_cache_is_bounded() {
        let idx = PatternIndex::with_cache_max(8);
        idx.insert("t.*", 0u32);
        for i in 0..100 {
            assert_eq!(&*idx.matches(&format!("t.{i}")), &[0]);
            assert!(idx.cache.len() <= 8);
        }
    }

    #[test]
    fn hostile_patterns_stay_cheap() {
        let idx = PatternIndex::default();
        let p = vec!["#"; 64].join(".") + ".x";
        idx.insert(&p, 1u32);
        let topic = vec!["a"; 2000].join(".");
        assert!(idx.matches(&topic).is_empty());
        assert_eq!(&*idx.matches(&(topic + ".x")), &[1]);
        let mut names = NameIndex::default();
        names.insert(&vec!["a"; 2000].join("."));
        assert_eq!(names.matching(&p).len(), 0);
        assert_eq!(names.matching("a.#").len(), 1);
    }

    #[test]
    fn name_index_removes_and_prunes() {
        let mut idx = NameIndex::default();
        idx.insert("order.1");
        idx.insert("order.2");
        idx.insert("order");
        let mut m = idx.matching("order.*");
        m.sort();
        assert_eq!(m, vec!["order.1", "order.2"]);
        assert_eq!(idx.matching("order.#").len(), 3);
        assert!(idx.remove("order.1"));
        assert!(!idx.remove("order.1"));
        assert_eq!(idx.matching("order.*"), vec!["order.2"]);
        assert!(idx.remove("order.2") && idx.remove("order"));
        assert!(idx.is_empty());
        assert_eq!(idx.nodes.len() - idx.free.len(), 1);
    }

    fn seg() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("*"), Just("#")]
    }

    fn name_seg() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("")]
    }

    proptest! {
        #[test]
        fn trie_agrees_with_linear_scan(
            patterns in prop::collection::vec(prop::collection::vec(seg(), 1..6), 0..12),
            topics in prop::collection::vec(prop::collection::vec(name_seg(), 1..6), 1..8),
            removed in prop::collection::vec(any::<bool>(), 12),
        ) {
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            let topics: Vec<String> = topics.iter().map(|t| t.join(".")).collect();
            let idx = PatternIndex::default();
            for (i, p) in patterns.iter().enumerate() {
                idx.insert(p, i);
            }
            for (i, p) in patterns.iter().enumerate() {
                if removed[i] {
                    prop_assert!(idx.remove(p, |v| *v == i));
                }
            }
            let mut names = NameIndex::default();
            for t in &topics {
                names.insert(t);
            }
            for t in &topics {
                let mut got = idx.matches(t).to_vec();
                got.sort_unstable();
                let want: Vec<usize> = (0..patterns.len())
                    .filter(|&i| !removed[i] && pattern_matches(&patterns[i], t))
                    .collect();
                prop_assert_eq!(got, want, "topic {:?}", t);
            }
            for p in &patterns {
                let mut got = names.matching(p);
                got.sort();
                let mut want: Vec<String> =
                    topics.iter().filter(|t| pattern_matches(p, t)).cloned().collect();
                want.sort();
                want.dedup();
                prop_assert_eq!(got, want, "pattern {:?}", p);
            }
        }
    }
}
