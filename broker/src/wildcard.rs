//! Indexes for RabbitMQ-style topic wildcards (`*` one dot-segment, `#`
//! zero or more), so the cost of a lookup grows with what it matches, not
//! with everything stored.
//!
//! * [`PatternIndex`]: wildcard *subscriptions*, looked up by a published
//!   topic name. A segment trie like NATS's sublist or RabbitMQ's topic
//!   exchange (literal children, a `*` child, a `#` child). Each node keeps
//!   its values as a copy-on-write list, so a lookup hands out one `Arc`
//!   per matching *pattern*, not a copy per subscriber, and does not
//!   allocate for the usual few matches. A bounded match cache in front
//!   (topic → those same lists, NATS-sublist style) serves hot topics
//!   without the walk: direct-mapped by a cheap hash (a miss is one hash
//!   and one tag store, never an insert or a sweep), a topic admitted on
//!   its second publish in a row to its slot (a doorkeeper), at most
//!   [`CACHE_SLOTS`] entries and [`CACHE_MAX_BYTES`] of topic names (none
//!   over [`CACHE_MAX_TOPIC`] bytes), all made stale at once by a
//!   generation bump on every insert or remove. Entries hold `Weak`
//!   lists, so a stale entry keeps no subscriber alive. Measured
//!   (docs/benchmarks.md, "Match cache"): −34 % instructions per publish
//!   over 100 hot topics, +2–3 % where every publish misses (S8).
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
        atomic::{
            AtomicU64, AtomicUsize,
            Ordering::{Acquire, Relaxed, Release},
        },
        Arc, Mutex, OnceLock, RwLock, Weak,
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

/// Slots in a [`PatternIndex`]'s match cache (direct-mapped, a power of 2).
pub const CACHE_SLOTS: usize = 4096;
/// Topics longer than this (bytes) are never cached.
pub const CACHE_MAX_TOPIC: usize = 256;
/// Bytes of topic names the match cache may hold over all its slots.
pub const CACHE_MAX_BYTES: usize = 256 * 1024;

/// One cache slot: the topic it holds and what the walk found for it.
#[derive(Debug)]
struct Slot<T> {
    /// The index's generation when `found` was walked; 0 = empty.
    gen: u64,
    topic: String,
    /// Weak, so a stale entry pins no values (for the router: no
    /// subscriber's connection outlives its unsubscribe because of the
    /// cache) and a change of a cached list moves it instead of copying
    /// it (`Arc::make_mut` with no other strong reference).
    found: SmallVec<[Weak<Vec<T>>; 4]>,
}

#[derive(Debug)]
struct Way<T> {
    /// Hash of the last topic that hashed here (0 = none): a second
    /// sighting in a row is what admits a topic into `slot`.
    tag: AtomicU64,
    slot: Mutex<Slot<T>>,
}

/// A topic → matches cache in the style of NATS's sublist cache, but
/// direct-mapped so that a miss never sweeps: a topic has exactly one slot
/// (by hash). A miss costs one hash and one tag store; a topic is admitted
/// only when it is the last topic seen in its slot (a doorkeeper), so a
/// workload cycling through more topics than there are slots pays no
/// insert, no lock and no eviction. Entries are invalidated wholesale by
/// the index's generation, bumped on every change of the trie.
#[derive(Debug)]
struct MatchCache<T> {
    ways: Box<[Way<T>]>,
    /// Bytes of topic names held (sum of the slots' `topic` capacities),
    /// at most [`CACHE_MAX_BYTES`].
    bytes: AtomicUsize,
    #[cfg(test)]
    hits: AtomicUsize,
}

impl<T: Clone> MatchCache<T> {
    fn new() -> Self {
        MatchCache {
            ways: (0..CACHE_SLOTS)
                .map(|_| Way {
                    tag: AtomicU64::new(0),
                    slot: Mutex::new(Slot {
                        gen: 0,
                        topic: String::new(),
                        found: SmallVec::new(),
                    }),
                })
                .collect(),
            bytes: AtomicUsize::new(0),
            #[cfg(test)]
            hits: AtomicUsize::new(0),
        }
    }

    /// The cached matches of `topic` at generation `gen`; on a miss, the
    /// slot to [`store`](Self::store) the walk's result in if `topic` was
    /// also the last topic seen there (the doorkeeper admits it), else
    /// `None` (the miss cost one hash and one tag store).
    #[inline]
    fn lookup(&self, topic: &str, gen: u64) -> Result<Matches<T>, Option<usize>> {
        if topic.len() > CACHE_MAX_TOPIC {
            return Err(None);
        }
        let h = topic_hash(topic) | 1;
        let at = (h >> (64 - CACHE_SLOTS.trailing_zeros())) as usize;
        let way = &self.ways[at];
        if way.tag.load(Relaxed) != h {
            way.tag.store(h, Relaxed);
            return Err(None);
        }
        // Busy (another thread at this slot): do not wait, walk.
        let Ok(slot) = way.slot.try_lock() else {
            return Err(None);
        };
        if slot.gen == gen && slot.topic == topic {
            // Every list is still alive at this generation (the trie holds
            // it); a failed upgrade would only mean a change under way.
            let hit: Option<Matches<T>> = slot.found.iter().map(Weak::upgrade).collect();
            if let Some(hit) = hit {
                #[cfg(test)]
                self.hits.fetch_add(1, Relaxed);
                return Ok(hit);
            }
        }
        Err(Some(at))
    }

    /// Stores what the walk at generation `gen` `found` for `topic` in
    /// slot `at` (from [`lookup`](Self::lookup)).
    #[cold]
    fn store(&self, at: usize, topic: &str, gen: u64, found: &Matches<T>) {
        // Only what fits inline: an entry's heap is its topic alone.
        if found.spilled() {
            return;
        }
        let Ok(mut slot) = self.ways[at].slot.try_lock() else {
            return;
        };
        if self.store_topic(&mut slot, topic) {
            slot.found.clear();
            slot.found.extend(found.iter().map(Arc::downgrade));
            slot.gen = gen;
        }
    }

    /// Puts `topic` in `slot`, reusing its buffer when the size is about
    /// right, else within [`CACHE_MAX_BYTES`]; whether it did (if not,
    /// the slot is left empty).
    fn store_topic(&self, slot: &mut Slot<T>, topic: &str) -> bool {
        slot.gen = 0;
        let cap = slot.topic.capacity();
        if topic.len() <= cap && cap <= 2 * topic.len().max(32) {
            slot.topic.clear();
            slot.topic.push_str(topic);
            return true;
        }
        // Right-size: give back the old buffer, then reserve the new one.
        self.bytes.fetch_sub(cap, Relaxed);
        slot.topic = String::new();
        let want = topic.len();
        if self.bytes.fetch_add(want, Relaxed) + want > CACHE_MAX_BYTES {
            self.bytes.fetch_sub(want, Relaxed);
            slot.found.clear();
            return false;
        }
        let mut buf = String::with_capacity(want);
        buf.push_str(topic);
        // `with_capacity` may round up; count what is really held.
        let extra = buf.capacity() - want;
        if extra > 0 {
            self.bytes.fetch_add(extra, Relaxed);
        }
        slot.topic = buf;
        true
    }
}

/// A cheap, unkeyed hash of a topic for the match cache: eight bytes per
/// multiply (foldhash's `hash_one` cost twice as much, and on the S8 miss
/// path every instruction counts). Unkeyed is enough here: a collision
/// only sends a topic to the walk (the cache compares whole topics), so a
/// client choosing colliding topics gains nothing over publishing to
/// uncached ones.
#[inline]
fn topic_hash(topic: &str) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let b = topic.as_bytes();
    let n = b.len();
    let load = |i: usize| match b.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
        Some(w) => u64::from_le_bytes(w),
        None => 0,
    };
    // The last step folds the 128-bit product, so every input bit reaches
    // the top bits the slot is taken from.
    let fold = |x: u64| {
        let p = u128::from(x) * u128::from(K);
        (p as u64) ^ ((p >> 64) as u64)
    };
    let mut h = (n as u64).wrapping_mul(K);
    if n < 8 {
        let w = b
            .iter()
            .enumerate()
            .fold(0u64, |w, (i, &x)| w | u64::from(x) << (8 * i));
        return fold(h ^ w);
    }
    // Whole words, then the last eight bytes (overlapping the words before
    // them; the length, mixed in first, tells the overlaps apart).
    let mut i = 0;
    while i + 8 < n {
        h = (h ^ load(i)).rotate_left(23).wrapping_mul(K);
        i += 8;
    }
    fold(h ^ load(n - 8))
}

/// Wildcard subscriptions by pattern (`order.*`, `order.#`), looked up by
/// a published topic name.
///
/// A lookup walks the trie under a read lock, visiting only the nodes the
/// topic can reach (one hash lookup per segment and level, plus the `*`
/// and `#` branches), and returns each matching node's value list as an
/// `Arc`. In front of the walk sits a bounded match cache
/// ([`CACHE_SLOTS`] direct-mapped slots, topics up to
/// [`CACHE_MAX_TOPIC`] bytes, [`CACHE_MAX_BYTES`] of names in all) holding
/// weak references to the same lists, invalidated by a generation counter
/// that every insert and remove bumps. A hit takes no trie lock and
/// allocates nothing. A topic enters the cache on its second publish in a
/// row to its slot, so a workload publishing round-robin to more topics
/// than the cache holds (S8) pays one hash and one tag store per publish,
/// not an insert and an eviction: an earlier cache (a map halved when
/// full) made every such publish a miss plus a sweep (docs/benchmarks.md,
/// "S8 index and the status walk" and "Match cache").
#[derive(Debug)]
pub struct PatternIndex<T> {
    trie: RwLock<Trie<T>>,
    len: AtomicUsize,
    /// Bumped (under the trie's write lock, after the change) by every
    /// insert and remove; starts at 1 so 0 marks an empty cache slot.
    gen: AtomicU64,
    /// Allocated on the first lookup.
    cache: OnceLock<MatchCache<T>>,
}

impl<T: Clone> Default for PatternIndex<T> {
    fn default() -> Self {
        PatternIndex {
            trie: RwLock::new(Trie::default()),
            len: AtomicUsize::new(0),
            gen: AtomicU64::new(1),
            cache: OnceLock::new(),
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
            self.gen.fetch_add(1, Release);
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
        self.gen.fetch_add(1, Release);
        true
    }

    /// The value lists of every pattern matching `topic`: each stored
    /// value appears once over all of them.
    #[inline]
    pub fn matches(&self, topic: &str) -> Matches<T> {
        // Read before the walk: an entry is never tagged with a generation
        // newer than the trie it was walked in, and a lookup that starts
        // after an insert or remove returned sees its generation.
        let gen = self.gen.load(Acquire);
        let cache = self.cache.get_or_init(MatchCache::new);
        match cache.lookup(topic, gen) {
            Ok(hit) => hit,
            Err(admit) => {
                let found = self.walk_matches(topic);
                if let Some(at) = admit {
                    cache.store(at, topic, gen, &found);
                }
                found
            }
        }
    }

    /// [`matches`](Self::matches) without the cache.
    #[inline]
    fn walk_matches(&self, topic: &str) -> Matches<T> {
        let trie = self.read();
        let mut out = Matches::new();
        walk(&trie, topic, |at| {
            out.push(trie.nodes[at as usize].values.clone());
        });
        out
    }

    /// Bytes of topic names the match cache holds (for tests and bounds).
    pub fn cache_bytes(&self) -> usize {
        self.cache.get().map_or(0, |c| c.bytes.load(Relaxed))
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

    fn hits<T: Clone>(idx: &PatternIndex<T>) -> usize {
        idx.cache.get().map_or(0, |c| c.hits.load(Relaxed))
    }

    #[test]
    fn repeated_topic_is_served_from_the_cache_until_a_change() {
        let idx = PatternIndex::default();
        idx.insert("a.*", 1u32);
        // First sighting: tag only; second: walked and stored; third: hit.
        for _ in 0..3 {
            assert_eq!(flat(&idx.matches("a.x")), vec![1]);
        }
        assert_eq!(hits(&idx), 1);
        let held = idx.matches("a.x");
        assert_eq!(hits(&idx), 2);
        assert!(!held.spilled(), "a hit allocates nothing");
        idx.insert("a.#", 2);
        assert_eq!(flat(&idx.matches("a.x")), vec![1, 2], "insert invalidates");
        assert_eq!(hits(&idx), 2);
        assert_eq!(flat(&idx.matches("a.x")), vec![1, 2]);
        assert_eq!(hits(&idx), 3, "re-cached at once");
        assert!(idx.remove("a.*", |v| *v == 1));
        assert_eq!(flat(&idx.matches("a.x")), vec![2], "remove invalidates");
        assert_eq!(flat(&held), vec![1], "a list handed out is not changed");
        assert!(idx.remove("a.#", |v| *v == 2));
        assert!(idx.matches("a.x").is_empty());
        assert_eq!(hits(&idx), 3);
    }

    #[test]
    fn a_stale_cache_entry_pins_no_value() {
        let idx = PatternIndex::default();
        let v = Arc::new(5u32);
        idx.insert("a.*", v.clone());
        idx.insert("a.#", Arc::new(6u32));
        for _ in 0..3 {
            assert_eq!(idx.matches("a.x").len(), 2);
        }
        assert_eq!(hits(&idx), 1);
        assert!(idx.remove("a.*", |x| Arc::ptr_eq(x, &v)));
        // The cached entry for "a.x" still names the old list: it must not
        // keep the removed value (a subscriber's connection) alive.
        assert_eq!(Arc::strong_count(&v), 1);
        assert_eq!(idx.matches("a.x").len(), 1);
    }

    #[test]
    fn topic_hash_spreads_similar_topics_over_the_slots() {
        // Random placement of 4,096 topics fills 1 - 1/e (63 %) of 4,096
        // slots; a hash that ignored the id (or the tail) would fill few.
        let slot = |t: &str| (topic_hash(t) >> (64 - CACHE_SLOTS.trailing_zeros())) as usize;
        for fmt in [
            |i: usize| format!("order.{i}.created"),
            |i: usize| format!("{i}"),
            |i: usize| format!("a.b.c.d.e.f.g.h.{i}"),
            |i: usize| format!("{i:032}"),
        ] {
            let used: HashSet<usize> = (0..CACHE_SLOTS).map(|i| slot(&fmt(i))).collect();
            assert!(used.len() > CACHE_SLOTS * 55 / 100, "{} slots", used.len());
        }
        assert_ne!(topic_hash("abcdefgh"), topic_hash("abcdefgi"));
        assert_ne!(topic_hash(""), topic_hash("\0"));
    }

    #[test]
    fn topics_cycling_through_more_than_the_cache_never_insert() {
        let idx = PatternIndex::default();
        idx.insert("order.*", 1u32);
        let topics: Vec<String> = (0..3 * CACHE_SLOTS).map(|i| format!("order.{i}")).collect();
        for _ in 0..3 {
            for t in &topics {
                assert_eq!(flat(&idx.matches(t)), vec![1]);
            }
        }
        // Only a topic alone in its slot gets in; nothing is swept.
        let bytes = idx.cache_bytes();
        assert!(bytes <= CACHE_SLOTS * "order.12287".len(), "{bytes}");
    }

    #[test]
    fn cache_stays_within_its_byte_bound_under_long_topics() {
        let idx = PatternIndex::default();
        idx.insert("#", 7u32);
        idx.insert("x.*.#", 8u32);
        let n = 2 * CACHE_MAX_BYTES / CACHE_MAX_TOPIC;
        for i in 0..n {
            // Longest cacheable topic, published twice in a row (admitted).
            let t = format!("x.{i}.{}", "y".repeat(CACHE_MAX_TOPIC));
            let t = &t[..CACHE_MAX_TOPIC];
            for _ in 0..3 {
                assert_eq!(flat(&idx.matches(t)), vec![7, 8]);
            }
            assert!(idx.cache_bytes() <= CACHE_MAX_BYTES);
        }
        assert!(
            idx.cache_bytes() > CACHE_MAX_BYTES / 2,
            "it does cache them"
        );
        let before = hits(&idx);
        let long = format!("x.y.{}", "z".repeat(CACHE_MAX_TOPIC));
        for _ in 0..3 {
            assert_eq!(flat(&idx.matches(&long)), vec![7, 8]);
        }
        assert_eq!(hits(&idx), before, "a topic over the limit is never cached");
        // Short topics take slots over and give long buffers back.
        for i in 0..4 * CACHE_SLOTS {
            let t = format!("s.{i}");
            idx.matches(&t);
            idx.matches(&t);
        }
        assert!(idx.cache_bytes() <= CACHE_MAX_BYTES);
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
            // Each topic looked up 3 times (tag, store, cache hit) after
            // every change, against a linear scan of what is stored then.
            let check = |idx: &PatternIndex<usize>, live: &[bool]| -> Result<(), TestCaseError> {
                for t in &topics {
                    let want: Vec<usize> = (0..patterns.len())
                        .filter(|&i| live[i] && pattern_matches(&patterns[i], t))
                        .collect();
                    for _ in 0..3 {
                        prop_assert_eq!(flat(&idx.matches(t)), want.clone(), "topic {:?}", t);
                    }
                }
                Ok(())
            };
            let mut live = vec![false; patterns.len()];
            for (i, p) in patterns.iter().enumerate() {
                idx.insert(p, i);
                live[i] = true;
                check(&idx, &live)?;
            }
            for (i, p) in patterns.iter().enumerate() {
                if removed[i] {
                    prop_assert!(idx.remove(p, |v| *v == i));
                    live[i] = false;
                    check(&idx, &live)?;
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
