//! The resume merge (`resume::parse`, `replay`, `Gate`) over arbitrary
//! histories, resume points and arrival orders.
//!
//! Properties of `replay(history, from, horizon)`: never panics; no id twice
//! in the output, nor `from`'s id; the output is a subsequence of the
//! history, in order; and it is what the module's documentation says: the
//! entries after the first occurrence of `from`'s id (recovered), else those
//! placed (ULID time, else `ts`) at or after `from`'s time minus the clock
//! skew, else nothing.
//!
//! Properties of a whole resume (history read after the subscription, live
//! stream = the publishes after the subscription, split into held and later
//! messages around the replay): an id published once is delivered at most
//! once (retries carrying the same time); when the history still has the
//! client's point (published once), every later id is delivered, and with distinct ids exactly the later messages, in order.
//!
//! `Gate` under arbitrary operation sequences: a holding gate holds, `open`
//! and `abandon` return what was held in order, and only ids of the last
//! replay are ever duplicates.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use ws_gateway::fuzzing::{parse, replay, Admit, Gate, Horizon, Point, CLOCK_SKEW_MS};
use ws_gateway::protocol::Published;

/// Times are `BASE + step * 100` ms, so that the 2 s skew spans 20 steps.
const BASE: u64 = 1_700_000_000_000;

#[derive(Arbitrary, Debug, Clone)]
enum Id {
    Absent,
    Null,
    /// A non-ULID id from a small pool (collisions, retries).
    Seq(u8),
    /// A ULID at a time step, with a small random part; optionally lower case.
    Ulid(u8, u8, bool),
    Raw(String),
    /// Not a string: the entry is invalid.
    Number(u8),
}

#[derive(Arbitrary, Debug, Clone)]
enum Ts {
    Step(u8),
    Raw(u64),
    Negative,
    Text,
}

#[derive(Arbitrary, Debug, Clone)]
enum Entry {
    Message { id: Id, ts: Option<Ts> },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum From {
    Since(Id),
    /// After the history entry at this index (modulo its length).
    After(u8),
    At(u8),
    AtRaw(u64),
    Nothing,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Hold,
    Admit(u8),
    /// Open with the replay of history[a..b].
    Open(u8, u8),
    Abandon,
    Discard,
}

#[derive(Arbitrary, Debug)]
struct Input {
    history: Vec<Entry>,
    from: From,
    now_step: u16,
    ttl_steps: u16,
    // The whole-resume scenario, as fractions of the published stream.
    seen: u8,
    sub: u8,
    read: u8,
    keep: u8,
    early: u8,
    ops: Vec<Op>,
}

fn step(s: u8) -> u64 {
    BASE + u64::from(s) * 100
}

fn ulid_string(s: u8, r: u8, lower: bool) -> String {
    let id = ulid::Ulid::from_parts(step(s), u128::from(r)).to_string();
    if lower {
        id.to_lowercase()
    } else {
        id
    }
}

fn id_value(id: &Id) -> Option<Value> {
    match id {
        Id::Absent => None,
        Id::Null => Some(Value::Null),
        Id::Seq(n) => Some(json!(format!("m{}", n % 16))),
        Id::Ulid(s, r, lower) => Some(json!(ulid_string(*s, *r, *lower))),
        Id::Raw(s) => Some(json!(s)),
        Id::Number(n) => Some(json!(n)),
    }
}

fn id_str(id: &Id) -> Option<String> {
    id_value(id).and_then(|v| v.as_str().map(str::to_string))
}

fn encode(entry: &Entry) -> Bytes {
    match entry {
        Entry::Raw(bytes) => Bytes::copy_from_slice(bytes),
        Entry::Message { id, ts } => {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), json!("SEQ"));
            if let Some(id) = id_value(id) {
                m.insert("id".into(), id);
            }
            match ts {
                None => {}
                Some(Ts::Step(s)) => {
                    m.insert("ts".into(), json!(step(*s)));
                }
                Some(Ts::Raw(t)) => {
                    m.insert("ts".into(), json!(t));
                }
                Some(Ts::Negative) => {
                    m.insert("ts".into(), json!(-5));
                }
                Some(Ts::Text) => {
                    m.insert("ts".into(), json!("soon"));
                }
            }
            Bytes::from(Value::Object(m).to_string())
        }
    }
}

/// When a message was published, as the module documents it: its ULID id's
/// time, else its `ts`.
fn time_of(m: &Published) -> Option<u64> {
    m.id.as_deref()
        .and_then(|id| ulid::Ulid::from_string(id).ok())
        .map(|u| u.timestamp_ms())
        .or(m.ts)
}

/// `messages` minus id repeats and minus `seen`, in order (the reference).
fn unique_ref(messages: &[Arc<Published>], seen: Option<&str>) -> Vec<Arc<Published>> {
    let mut ids: HashSet<String> = seen.map(str::to_string).into_iter().collect();
    messages
        .iter()
        .filter(|m| match m.id.as_deref() {
            None => true,
            Some(id) => ids.insert(id.to_string()),
        })
        .cloned()
        .collect()
}

fn same(a: &[Arc<Published>], b: &[Arc<Published>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

fn is_subsequence(sub: &[Arc<Published>], of: &[Arc<Published>]) -> bool {
    let mut it = of.iter();
    sub.iter().all(|m| it.any(|h| Arc::ptr_eq(h, m)))
}

fn ids(messages: &[Arc<Published>]) -> Vec<Option<&str>> {
    messages.iter().map(|m| m.id.as_deref()).collect()
}

fn check_replay(history: &[Arc<Published>], from: &Point, horizon: Horizon) {
    let r = replay(history, from, horizon);
    let mut seen = HashSet::new();
    for m in &r.messages {
        if let Some(id) = m.id.as_deref() {
            assert!(seen.insert(id), "id {id:?} twice in the replay");
            assert_ne!(Some(id), from.id.as_deref(), "the resume point replayed");
        }
    }
    assert!(
        is_subsequence(&r.messages, history),
        "the replay is not a subsequence of the history"
    );
    // The reference.
    let found = from
        .id
        .as_deref()
        .and_then(|id| history.iter().position(|m| m.id.as_deref() == Some(id)));
    let (recovered, expected) = match (found, from.time_ms) {
        (Some(i), _) => (true, unique_ref(&history[i + 1..], from.id.as_deref())),
        (None, None) => (false, Vec::new()),
        (None, Some(t)) => {
            let cutoff = t.saturating_sub(CLOCK_SKEW_MS);
            let newer: Vec<_> = history
                .iter()
                .filter(|m| time_of(m).is_some_and(|mt| mt >= cutoff))
                .cloned()
                .collect();
            let recovered = match history.iter().find_map(|m| time_of(m)) {
                Some(oldest) => oldest <= t,
                None if history.is_empty() => horizon.now_ms.saturating_sub(t) < horizon.ttl_ms,
                None => false,
            };
            (recovered, unique_ref(&newer, from.id.as_deref()))
        }
    };
    assert_eq!(r.recovered, recovered, "recovered, from {from:?}");
    assert!(
        same(&r.messages, &expected),
        "replay from {from:?}: got {:?}, expected {:?}",
        ids(&r.messages),
        ids(&expected)
    );
}

fn frac(n: usize, f: u8) -> usize {
    n * usize::from(f) / 256
}

/// One client's resume: the stream `published` (oldest first), the client
/// has seen up to `seen`, the gateway subscribed after `sub` and read the
/// history after `read`, keeping its newest `keep` entries.
fn check_merge(published: &[Arc<Published>], input: &Input) {
    let n = published.len();
    if n == 0 {
        return;
    }
    let seen = frac(n, input.seen);
    let sub = seen + frac(n - seen, input.sub).min(n - 1 - seen);
    let read = sub + frac(n - sub, input.read).min(n - 1 - sub);
    let upto = &published[..=read];
    let keep = usize::from(input.keep).max(1);
    let snapshot = &upto[upto.len().saturating_sub(keep)..];
    let live = &published[sub + 1..];
    let point = Point::after(&published[seen]);
    let horizon = Horizon {
        now_ms: step(255),
        ttl_ms: 60_000,
    };
    let r = replay(snapshot, &point, horizon);
    let mut out = r.messages.clone();
    let (early, late) = live.split_at(frac(live.len(), input.early));
    let mut gate = Gate::holding();
    for m in early {
        assert_eq!(gate.admit(m), Admit::Held);
    }
    for m in gate.open(&r.messages).iter().chain(late) {
        if gate.admit(m) == Admit::Pass {
            out.push(m.clone());
        }
    }
    // How often each id was published, and delivered.
    let mut published_count: HashMap<&str, usize> = HashMap::new();
    for id in published.iter().filter_map(|m| m.id.as_deref()) {
        *published_count.entry(id).or_default() += 1;
    }
    let mut delivered: HashMap<&str, usize> = HashMap::new();
    for id in out.iter().filter_map(|m| m.id.as_deref()) {
        *delivered.entry(id).or_default() += 1;
    }
    // A retry is the same message again: the same id has the same time.
    // (Without that, a retry placed by time can end the dedupe early.)
    let mut times: HashMap<&str, Option<u64>> = HashMap::new();
    let consistent = published.iter().all(|m| match m.id.as_deref() {
        None => true,
        Some(id) => *times.entry(id).or_insert(time_of(m)) == time_of(m),
    });
    for (id, count) in &delivered {
        if consistent && published_count[id] == 1 {
            assert_eq!(
                *count, 1,
                "id {id:?}, published once, delivered {count} times: seen {seen} sub {sub} read {read} keep {keep} early {}; got {:?}",
                early.len(),
                ids(&out)
            );
        }
    }
    let seen_id = published[seen].id.as_deref();
    let in_history = seen_id.is_some_and(|id| snapshot.iter().any(|m| m.id.as_deref() == Some(id)));
    // A point published once (after a retry of it the history may hold only
    // the retry, and the replay starts after that: a known limit).
    if in_history && seen_id.is_some_and(|id| published_count[id] == 1) {
        assert!(r.recovered);
        for id in published[seen + 1..].iter().filter_map(|m| m.id.as_deref()) {
            assert!(
                Some(id) == seen_id || delivered.contains_key(id),
                "gap: {id:?} not delivered; seen {seen} sub {sub} read {read} keep {keep}; got {:?}",
                ids(&out)
            );
        }
        let distinct =
            published.iter().all(|m| m.id.is_some()) && published_count.values().all(|&c| c == 1);
        if distinct {
            assert!(
                same(&out, &published[seen + 1..]),
                "seen {seen} sub {sub} read {read} keep {keep}: got {:?}",
                ids(&out)
            );
        }
    }
}

/// `Gate` under an arbitrary sequence of operations, against a model of
/// what it holds.
fn check_gate(history: &[Arc<Published>], ops: &[Op]) {
    if history.is_empty() {
        return;
    }
    let pick = |i: u8| &history[usize::from(i) % history.len()];
    let mut gate = Gate::default();
    let mut held: Option<Vec<Arc<Published>>> = None;
    let mut replayed_ids: HashSet<&str> = HashSet::new();
    for op in ops {
        match op {
            Op::Hold => {
                gate.hold();
                held.get_or_insert_with(Vec::new);
            }
            Op::Admit(i) => {
                let m = pick(*i);
                let got = gate.admit(m);
                match &mut held {
                    Some(h) => {
                        assert_eq!(got, Admit::Held);
                        h.push(m.clone());
                    }
                    None => {
                        if got == Admit::Duplicate {
                            let id = m.id.as_deref().expect("an id-less duplicate");
                            assert!(replayed_ids.contains(id), "{id:?} was not replayed");
                        }
                        assert_ne!(got, Admit::Held);
                    }
                }
            }
            Op::Open(a, b) => {
                let (a, b) = (
                    usize::from(*a) % history.len(),
                    usize::from(*b) % history.len(),
                );
                let replayed = &history[a.min(b)..a.max(b)];
                let out = gate.open(replayed);
                assert!(same(&out, &held.take().unwrap_or_default()));
                replayed_ids = replayed.iter().filter_map(|m| m.id.as_deref()).collect();
            }
            Op::Abandon => {
                let out = gate.abandon();
                assert!(same(&out, &held.take().unwrap_or_default()));
            }
            Op::Discard => {
                gate.discard();
                held = None;
            }
        }
        assert_eq!(gate.held(), held.as_ref().map_or(0, Vec::len));
        if held.is_some() {
            assert!(!gate.is_clear());
        }
    }
}

fuzz_target!(|input: Input| {
    let raw: Vec<Bytes> = input.history.iter().map(encode).collect();
    let history = parse(raw.clone());
    // parse keeps exactly the valid entries, in order, byte for byte.
    let valid: Vec<&Bytes> = raw
        .iter()
        .filter(|b| ws_gateway::protocol::validate_published((*b).clone()).is_ok())
        .collect();
    assert_eq!(history.len(), valid.len());
    for (m, b) in history.iter().zip(&valid) {
        assert_eq!(m.payload(), &b[..]);
    }

    let from = match &input.from {
        From::Since(id) => id_str(id).map(|id| Point::since(&id)),
        From::After(i) if !history.is_empty() => {
            Some(Point::after(&history[usize::from(*i) % history.len()]))
        }
        From::After(_) => None,
        From::At(s) => Some(Point::at(step(*s))),
        From::AtRaw(t) => Some(Point::at(*t)),
        From::Nothing => Some(Point {
            id: None,
            time_ms: None,
        }),
    };
    let horizon = Horizon {
        now_ms: BASE + u64::from(input.now_step) * 100,
        ttl_ms: u64::from(input.ttl_steps) * 100,
    };
    if let Some(from) = &from {
        check_replay(&history, from, horizon);
    }
    check_merge(&history, &input);
    check_gate(&history, &input.ops);
});
