//! The Wing & Gong linearizability search, with Lowe's memoization (as in Porcupine and
//! Knossos), over any sequential model.
//!
//! This module owns the search only. Ops are given as windows `[call, ret]`; an op with
//! no `ret` is *optional*: it may linearize anywhere after its call, or never (an `Info`
//! op, or a model-internal event such as an expiry that is allowed but not required).
//! The search succeeds when every required op is linearized in an order that respects
//! real time (an op whose `ret` precedes another's `call` comes first) and that the model
//! accepts. Every `(set of linearized ops, model state)` pair is explored at most once.
//! At equal times calls are ordered before returns, i.e. touching windows count as
//! concurrent (lenient: never a false "invalid").
//!
//! The search is an explicit depth-first search: at each level the candidates are the
//! ops whose call precedes the first pending return (any of them may go next); required
//! ops are tried before optional ones, so unknown ops and expiries are linearized only
//! when something needs them (trying them first makes the search exponential in the
//! number of unknown ops on histories where most never happened).
//!
//! The search is bounded by a step limit (model steps tried) and a time limit; hitting
//! either returns [`Outcome::Exhausted`], which callers must report as unknown.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

use crate::verdict::SearchLimits;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    /// The state after op `op` from `state`, or `None` if the model forbids it there.
    fn step(&self, state: &Self::State, op: usize) -> Option<Self::State>;
}

/// One op's real-time window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub call: i128,
    /// `None`: optional (may linearize any time after `call`, or never).
    pub ret: Option<i128>,
}

/// How a search ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A linearization exists; the order of (the linearized) ops.
    Linearizable(Vec<usize>),
    /// No linearization exists. The longest linearized prefix found, and the required op
    /// whose return could not be passed after that prefix.
    NotLinearizable { prefix: Vec<usize>, stuck: usize },
    /// The step or time limit was hit first.
    Exhausted { why: String },
}

/// Counts from one search.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub steps: u64,
    pub cache_entries: u64,
    pub elapsed_ms: u64,
}

const NIL: usize = usize::MAX;
/// How often (in steps) the clock is read.
const TIME_CHECK_EVERY: u64 = 1024;

#[derive(Debug, Clone, Copy)]
struct Entry {
    is_call: bool,
    op: usize,
    /// The index of the matching return entry (calls of required ops only).
    ret: usize,
    prev: usize,
    next: usize,
}

/// Searches for a linearization of `windows` under `model`, starting from `init`.
pub fn search<M: Model>(
    model: &M,
    init: M::State,
    windows: &[Window],
    limits: SearchLimits,
) -> (Outcome, Stats) {
    let started = Instant::now();
    let mut stats = Stats::default();

    // Build the entry list: index 0 is the head sentinel.
    let mut raw: Vec<(i128, bool, usize)> = Vec::with_capacity(windows.len() * 2);
    for (i, w) in windows.iter().enumerate() {
        raw.push((w.call, true, i));
        if let Some(r) = w.ret {
            raw.push((r.max(w.call), false, i));
        }
    }
    // Calls before returns at equal times; then by op index for determinism.
    raw.sort_by_key(|(t, is_call, i)| (*t, !*is_call, *i));
    let mut entries: Vec<Entry> = Vec::with_capacity(raw.len() + 1);
    entries.push(Entry {
        is_call: false,
        op: NIL,
        ret: NIL,
        prev: NIL,
        next: NIL,
    });
    let mut call_of = vec![NIL; windows.len()];
    let mut ret_of = vec![NIL; windows.len()];
    for (_, is_call, op) in raw {
        let idx = entries.len();
        if is_call {
            if let Some(c) = call_of.get_mut(op) {
                *c = idx;
            }
        } else if let Some(r) = ret_of.get_mut(op) {
            *r = idx;
        }
        entries.push(Entry {
            is_call,
            op,
            ret: NIL,
            prev: idx - 1,
            next: NIL,
        });
    }
    let n = entries.len();
    for (i, e) in entries.iter_mut().enumerate() {
        e.next = if i + 1 < n { i + 1 } else { NIL };
    }
    for (&c, &r) in call_of.iter().zip(ret_of.iter()) {
        if let Some(e) = entries.get_mut(c) {
            e.ret = r;
        }
    }

    let mut required = windows.iter().filter(|w| w.ret.is_some()).count();
    let words = windows.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut frames: Vec<Frame<M::State>> = vec![frame(&entries, windows, None)];
    let mut state = init;
    let mut best: Vec<usize> = Vec::new();
    let mut best_stuck = frames.first().map_or(NIL, |f| f.blocking);

    let done = |stats: &mut Stats, cache: &HashSet<(Vec<u64>, M::State)>| {
        stats.elapsed_ms = started.elapsed().as_millis() as u64;
        stats.cache_entries = cache.len() as u64;
    };
    while required > 0 {
        let Some(top) = frames.last_mut() else { break };
        let Some(&cand) = top.candidates.get(top.next) else {
            // Every candidate of this frame failed: undo the op that led here.
            let Some(f) = frames.pop() else { break };
            let Some((call, prev_state)) = f.came_by else {
                // The root is exhausted: no linearization.
                done(&mut stats, &cache);
                return (
                    Outcome::NotLinearizable {
                        prefix: best,
                        stuck: best_stuck,
                    },
                    stats,
                );
            };
            let op = entries[call].op;
            set_bit(&mut linearized, op, false);
            unlift(&mut entries, call);
            if windows.get(op).is_some_and(|w| w.ret.is_some()) {
                required += 1;
            }
            state = prev_state;
            continue;
        };
        top.next += 1;
        stats.steps += 1;
        if stats.steps >= limits.max_steps {
            done(&mut stats, &cache);
            return (
                Outcome::Exhausted {
                    why: format!("step limit {} reached", limits.max_steps),
                },
                stats,
            );
        }
        if (stats.steps == 1 || stats.steps % TIME_CHECK_EVERY == 0)
            && started.elapsed() >= limits.max_time
        {
            done(&mut stats, &cache);
            return (
                Outcome::Exhausted {
                    why: format!("time limit {:?} reached", limits.max_time),
                },
                stats,
            );
        }
        let op = entries[cand].op;
        let Some(next_state) = model.step(&state, op) else {
            continue;
        };
        set_bit(&mut linearized, op, true);
        if !cache.insert((linearized.clone(), next_state.clone())) {
            set_bit(&mut linearized, op, false);
            continue;
        }
        let prev = std::mem::replace(&mut state, next_state);
        lift(&mut entries, cand);
        if windows.get(op).is_some_and(|w| w.ret.is_some()) {
            required -= 1;
        }
        let f = frame(&entries, windows, Some((cand, prev)));
        frames.push(f);
        let depth = frames.len() - 1;
        if depth > best.len() {
            best = frames
                .iter()
                .filter_map(|f| f.came_by.as_ref().map(|(c, _)| entries[*c].op))
                .collect();
            best_stuck = frames.last().map_or(NIL, |f| f.blocking);
        }
    }
    done(&mut stats, &cache);
    if required > 0 {
        return (
            Outcome::NotLinearizable {
                prefix: best,
                stuck: best_stuck,
            },
            stats,
        );
    }
    let order = frames
        .iter()
        .filter_map(|f| f.came_by.as_ref().map(|(c, _)| entries[*c].op))
        .collect();
    (Outcome::Linearizable(order), stats)
}

/// One level of the depth-first search.
struct Frame<S> {
    /// Call entries that may linearize next: those before the first return entry in the
    /// list, required ops first (optional ones are tried only when needed).
    candidates: Vec<usize>,
    next: usize,
    /// The op of the first return entry: the one that must linearize before any later.
    blocking: usize,
    /// The call entry linearized to reach this frame and the state before it.
    came_by: Option<(usize, S)>,
}

fn frame<S>(entries: &[Entry], windows: &[Window], came_by: Option<(usize, S)>) -> Frame<S> {
    let mut required = Vec::new();
    let mut optional = Vec::new();
    let mut blocking = NIL;
    let mut cur = entries.first().map_or(NIL, |e| e.next);
    while cur != NIL {
        let e = entries[cur];
        if !e.is_call {
            blocking = e.op;
            break;
        }
        if windows.get(e.op).is_some_and(|w| w.ret.is_some()) {
            required.push(cur);
        } else {
            optional.push(cur);
        }
        cur = e.next;
    }
    required.extend(optional);
    Frame {
        candidates: required,
        next: 0,
        blocking,
        came_by,
    }
}

fn set_bit(bits: &mut [u64], i: usize, on: bool) {
    if let Some(w) = bits.get_mut(i / 64) {
        let m = 1u64 << (i % 64);
        if on {
            *w |= m;
        } else {
            *w &= !m;
        }
    }
}

fn unlink(entries: &mut [Entry], i: usize) {
    let (p, n) = (entries[i].prev, entries[i].next);
    if p != NIL {
        entries[p].next = n;
    }
    if n != NIL {
        entries[n].prev = p;
    }
}

fn relink(entries: &mut [Entry], i: usize) {
    let (p, n) = (entries[i].prev, entries[i].next);
    if p != NIL {
        entries[p].next = i;
    }
    if n != NIL {
        entries[n].prev = i;
    }
}

/// Removes a call entry and its return entry from the list (the entries keep their own
/// links, so [`unlift`] can put them back).
fn lift(entries: &mut [Entry], call: usize) {
    unlink(entries, call);
    let r = entries[call].ret;
    if r != NIL {
        unlink(entries, r);
    }
}

fn unlift(entries: &mut [Entry], call: usize) {
    let r = entries[call].ret;
    if r != NIL {
        relink(entries, r);
    }
    relink(entries, call);
}
