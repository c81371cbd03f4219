//! Indexes for RabbitMQ-style topic wildcards (`*` one dot-segment, `#`
//! zero or more), so the cost of a lookup grows with what it matches, not
//! with everything stored.
//!
//! * [`PatternIndex`]: wildcard *subscriptions*, looked up by a published
//!   topic name. A segment trie like NATS's sublist or RabbitMQ's topic
//!   exchange (literal children, a `*` child, a `#` child). Each node keeps
//!   its values as a copy-on-write list, so a lookup hands out one `Arc`
//!   per matching *pattern*, not a copy per subscriber, and does not
//!   allocate for the usual few matches: there is no match cache to miss.
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
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, RwLock,
    },
};

use smallvec::SmallVec;

#[cfg(doc)]
use crate::router::pattern_matches;

type Hasher = foldhash::fast::RandomState;
type Map<V> = std::collections::HashMap<Box<str>, V, Hasher>;

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
    /// Copy-on-write: a lookup clones the `Arc`, a change copies the list
    /// only while a lookup still holds the old one.
    values: Arc<Vec<T>>,
    parent: u32,
    edge: Edge,
}

impl<T> Node<T> {
    fn new(parent: u32, edge: Edge) -> Self {
        Node {
            literal: Map::default(),
            star: None,
            hash: None,
            values: Arc::new(Vec::new()),
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
    /// Nodes reached by a `#` edge. Without any, a walk cannot reach the
    /// same (node, segment) twice and skips its visited set.
    hash_nodes: usize,
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::new(0, Edge::Root)],
            free: Vec::new(),
            patterns: Map::default(),
            hash_nodes: 0,
        }
    }
}

impl<T> Trie<T> {
    fn alloc(&mut self, parent: u32, edge: Edge) -> u32 {
        if matches!(edge, Edge::Hash) {
            self.hash_nodes += 1;
        }
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
                Edge::Hash => {
                    p.hash = None;
                    self.hash_nodes -= 1;
                }
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

/// What a lookup found: the value list of each matching pattern (shared
/// with the index, never copied), inline while there are few.
pub type Matches<T> = SmallVec<[Arc<Vec<T>>; 4]>;

/// Wildcard subscriptions by pattern (`order.*`, `order.#`), looked up by
/// a published topic name.
///
/// A lookup walks the trie under a read lock, visiting only the nodes the
/// topic can reach (one hash lookup per segment and level, plus the `*`
/// and `#` branches), and returns each matching node's value list as an
/// `Arc`. It costs the same for the first publish to a topic as for the
/// millionth, whatever the number of topics published to: an earlier
/// version cached match lists per topic, and a workload publishing to more
/// topics than the cache held paid a miss, an insert and an eviction sweep
/// on every publish (docs/benchmarks.md, "S8 index and the status walk").
#[derive(Debug)]
pub struct PatternIndex<T> {
    trie: RwLock<Trie<T>>,
    len: AtomicUsize,
}

impl<T: Clone> Default for PatternIndex<T> {
    fn default() -> Self {
        PatternIndex {
            trie: RwLock::new(Trie::default()),
            len: AtomicUsize::new(0),
        }
    }
}

impl<T: Clone> PatternIndex<T> {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Trie<T>> {
        self.trie.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Trie<T>> {
        self.trie.read().unwrap_or_else(|e| e.into_inner())
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
            Arc::make_mut(&mut trie.nodes[at as usize].values).push(value);
            *trie.patterns.entry(pattern.into()).or_default() += 1;
            self.len.fetch_add(1, Relaxed);
        }
    }

    /// Removes the first value under `pattern` for which `is` holds;
    /// whether one was found.
    pub fn remove(&self, pattern: &str, is: impl Fn(&T) -> bool) -> bool {
        let mut trie = self.write();
        let Some(at) = trie.find(pattern, false) else {
            return false;
        };
        let Some(pos) = trie.nodes[at as usize].values.iter().position(is) else {
            return false;
        };
        Arc::make_mut(&mut trie.nodes[at as usize].values).remove(pos);
        if let Some(n) = trie.patterns.get_mut(pattern) {
            *n -= 1;
            if *n == 0 {
                trie.patterns.remove(pattern);
            }
        }
        trie.prune(at);
        self.len.fetch_sub(1, Relaxed);
        true
    }

    /// The value lists of every pattern matching `topic`: each stored
    /// value appears once over all of them.
    pub fn matches(&self, topic: &str) -> Matches<T> {
        let trie = self.read();
        let mut out = Matches::new();
        walk(&trie, topic, |at| {
            out.push(trie.nodes[at as usize].values.clone());
        });
        out
    }

    /// Each pattern with how many values it holds (for the status page).
    pub fn patterns(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        self.for_each_pattern(|p, n| out.push((p.to_owned(), n)));
        out
    }

    /// Calls `f` with each pattern and how many values it holds, under the
    /// read lock (so `f` must be quick) and without allocating.
    pub fn for_each_pattern(&self, mut f: impl FnMut(&str, usize)) {
        let trie = self.read();
        for (p, n) in &trie.patterns {
            f(p, *n);
        }
    }
}

/// (node, segment index) pairs a walk has been at. Only needed when the
/// trie has `#` nodes; a short walk checks a small inline list, a long one
/// (hostile patterns) a hash set.
enum Visited {
    Off,
    Few(SmallVec<[(u32, u32); 16]>),
    Many(HashSet<(u32, u32), Hasher>),
}

impl Visited {
    /// Whether `(at, i)` is new (and remembers it).
    fn first(&mut self, at: u32, i: u32) -> bool {
        match self {
            Visited::Off => true,
            Visited::Few(v) => {
                if v.contains(&(at, i)) {
                    return false;
                }
                if v.len() == v.inline_size() {
                    let mut set: HashSet<(u32, u32), Hasher> = v.drain(..).collect();
                    set.insert((at, i));
                    *self = Visited::Many(set);
                } else {
                    v.push((at, i));
                }
                true
            }
            Visited::Many(set) => set.insert((at, i)),
        }
    }
}

/// Calls `found` with each node holding values whose pattern matches
/// `topic`, each node once. Allocation-free unless the topic has more
/// than 8 segments, the walk more than 16 pending branches, or the trie
/// `#` nodes that make a walk visit more than 16 states.
fn walk<T>(trie: &Trie<T>, topic: &str, mut found: impl FnMut(u32)) {
    let segs: SmallVec<[&str; 8]> = topic.split('.').collect();
    let mut seen = if trie.hash_nodes == 0 {
        Visited::Off
    } else {
        Visited::Few(SmallVec::new())
    };
    let mut stack: SmallVec<[(u32, u32); 16]> = SmallVec::new();
    stack.push((0, 0));
    while let Some((at, i)) = stack.pop() {
        if !seen.first(at, i) {
            continue;
        }
        let node = &trie.nodes[at as usize];
        if let Some(&seg) = segs.get(i as usize) {
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
            found(at);
        }
        if let Some(h) = node.hash {
            // Entering a `#` that has taken no segment yet.
            stack.push((h, i));
        }
    }
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

    fn flat<T: Clone + Ord>(m: &Matches<T>) -> Vec<T> {
        let mut v: Vec<T> = m.iter().flat_map(|l| l.iter().cloned()).collect();
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
        assert_eq!(flat(&idx.matches("order.1")), vec![0, 1, 2]);
        assert_eq!(flat(&idx.matches("order")), vec![1, 2]);
        assert_eq!(flat(&idx.matches("a.b")), vec![2, 3]);
        assert_eq!(flat(&idx.matches("a.z")), vec![2, 4, 5]);
        assert_eq!(flat(&idx.matches("a.b.c.z")), vec![2, 3, 4, 5]);
        assert_eq!(flat(&idx.matches("x.c.b")), vec![2]);
    }

    #[test]
    fn subscribe_and_unsubscribe_change_what_matches() {
        let idx = PatternIndex::default();
        idx.insert("a.*", 1u32);
        assert_eq!(flat(&idx.matches("a.x")), vec![1]);
        let held = idx.matches("a.x");
        idx.insert("a.#", 2);
        assert_eq!(flat(&idx.matches("a.x")), vec![1, 2]);
        assert!(idx.remove("a.*", |v| *v == 1));
        assert!(!idx.remove("a.*", |v| *v == 1), "already gone");
        assert_eq!(flat(&held), vec![1], "a list handed out is not changed");
        assert_eq!(flat(&idx.matches("a.x")), vec![2]);
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
        assert_eq!(trie.hash_nodes, 0);
    }

    #[test]
    fn one_list_per_matching_pattern_not_per_subscriber() {
        let idx = PatternIndex::default();
        for i in 0..1000u32 {
            idx.insert("order.#", i);
        }
        for i in 0..10_000u32 {
            idx.insert(&format!("order.{i}.*"), 10_000 + i);
        }
        let m = idx.matches("order.7.created");
        assert_eq!(m.len(), 2, "order.# and order.7.*");
        assert!(!m.spilled(), "found inline, no allocation");
        assert_eq!(m.iter().map(|l| l.len()).sum::<usize>(), 1001);
        assert!(idx.matches("order.x.y.z").len() == 1);
    }

    #[test]
    fn hostile_patterns_stay_cheap() {
        let idx = PatternIndex::default();
        let p = vec!["#"; 64].join(".") + ".x";
        idx.insert(&p, 1u32);
        let topic = vec!["a"; 2000].join(".");
        assert!(idx.matches(&topic).is_empty());
        assert_eq!(flat(&idx.matches(&(topic + ".x"))), vec![1]);
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
                let got = flat(&idx.matches(t));
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
