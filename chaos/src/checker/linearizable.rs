//! Linearizability of register histories, key by key (linearizability is local: a history
//! is linearizable if and only if each key's sub-history is).
//!
//! The search is Wing & Gong's, with Lowe's memoisation as in Porcupine: walk the calls
//! and returns in time order; at a call, try to linearize the operation now (apply it to
//! the model state; remember the set of linearized operations plus the state, and never
//! explore the same pair twice); at a return whose operation is not linearized yet,
//! backtrack. Operations whose outcome is unknown (`Info`) return at infinity: they may be
//! linearized anywhere after their invocation, including after everything else (which is
//! the same as never happening). Failed operations never happened and are dropped.
//!
//! The search is exponential in the worst case; it stops after a step budget and answers
//! `Unknown`, which callers must treat as a failure.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Outcome, RegisterEvent, RegisterOp, RegisterOutput};

/// The verdict on one key, or on a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations explains every output.
    Linearizable,
    /// No order does. The operations (indices into the key's events) that could not be
    /// placed when the search gave up, for the report.
    NotLinearizable {
        /// The key.
        key: String,
        /// The earliest return the search could not get past.
        stuck_at: usize,
    },
    /// The search ran out of budget.
    Unknown {
        /// The key.
        key: String,
    },
}

/// One operation prepared for the search.
struct Op {
    op: RegisterOp,
    /// None: unknown outcome (any output accepted).
    output: Option<RegisterOutput>,
    /// Index into the caller's events.
    source: usize,
}

/// The register model: applies `op` to `state`; None if the output contradicts it.
fn step(state: &Option<String>, op: &Op) -> Option<Option<String>> {
    match (&op.op, &op.output) {
        (RegisterOp::Read, Some(RegisterOutput::Value(v))) => (v == state).then(|| state.clone()),
        (RegisterOp::Read, _) => Some(state.clone()),
        (RegisterOp::Write(v), _) => Some(Some(v.clone())),
        (RegisterOp::Cas { expected, new }, out) => {
            let applies = expected == state;
            match out {
                Some(RegisterOutput::Cas(ok)) if *ok != applies => None,
                _ if applies => Some(Some(new.clone())),
                _ => Some(state.clone()),
            }
        }
    }
}

/// Checks every key of `events`; the first key that fails decides. `budget` bounds the
/// search steps per key.
pub fn check(events: &[RegisterEvent], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        by_key.entry(&e.key).or_default().push(i);
    }
    for (key, idx) in by_key {
        let v = check_key(key, events, &idx, budget);
        if v != Verdict::Linearizable {
            return v;
        }
    }
    Verdict::Linearizable
}

/// A call or return in time order, in a doubly linked list.
#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call: its return node.
    partner: usize,
}

const NIL: usize = usize::MAX;

fn check_key(key: &str, events: &[RegisterEvent], idx: &[usize], budget: u64) -> Verdict {
    // Prepare: drop failed operations and reads of unknown outcome (no constraint).
    let mut ops = Vec::new();
    let mut times = Vec::new(); // (time, is_return, op)
    for &i in idx {
        let e = &events[i];
        let (output, ret) = match &e.outcome {
            Outcome::Fail => continue,
            Outcome::Info if e.op == RegisterOp::Read => continue,
            Outcome::Info => (None, u64::MAX),
            Outcome::Ok(o) => (Some(o.clone()), e.complete.max(e.invoke)),
        };
        let n = ops.len();
        ops.push(Op { op: e.op.clone(), output, source: i });
        times.push((e.invoke, false, n));
        times.push((ret, true, n));
    }
    // Calls before returns at the same instant would claim overlap that was not there;
    // returns first is the conservative order.
    times.sort_by_key(|&(t, is_ret, n)| (t, !is_ret, n));
    let mut nodes: Vec<Node> = Vec::with_capacity(times.len() + 1);
    // Node 0 is the head sentinel.
    nodes.push(Node { op: NIL, is_call: false, prev: NIL, next: NIL, partner: NIL });
    let mut call_node = vec![NIL; ops.len()];
    for (i, &(_, is_ret, n)) in times.iter().enumerate() {
        let id = i + 1;
        nodes.push(Node { op: n, is_call: !is_ret, prev: id - 1, next: NIL, partner: NIL });
        nodes[id - 1].next = id;
        if is_ret {
            let c = call_node[n];
            nodes[c].partner = id;
        } else {
            call_node[n] = id;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut state: Option<String> = None;
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut entry = nodes[0].next;
    let mut steps = 0u64;
    let lift = |nodes: &mut Vec<Node>, c: usize| {
        let r = nodes[c].partner;
        for n in [c, r] {
            let (p, nx) = (nodes[n].prev, nodes[n].next);
            nodes[p].next = nx;
            if nx != NIL {
                nodes[nx].prev = p;
            }
        }
    };
    let unlift = |nodes: &mut Vec<Node>, c: usize| {
        let r = nodes[c].partner;
        for n in [r, c] {
            let (p, nx) = (nodes[n].prev, nodes[n].next);
            nodes[p].next = n;
            if nx != NIL {
                nodes[nx].prev = n;
            }
        }
    };
    while nodes[0].next != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown { key: key.to_string() };
        }
        if entry == NIL {
            // Only unknown-outcome operations remain unplaced at the end: impossible, as
            // their returns are at infinity and are in the list; treat as stuck.
            return Verdict::NotLinearizable { key: key.to_string(), stuck_at: NIL };
        }
        let node = nodes[entry];
        if node.is_call {
            let op = &ops[node.op];
            if let Some(next_state) = step(&state, op) {
                let mut lin = linearized.clone();
                lin[node.op / 64] |= 1 << (node.op % 64);
                if seen.insert((lin.clone(), next_state.clone())) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = lin;
                    lift(&mut nodes, entry);
                    entry = nodes[0].next;
                    continue;
                }
            }
            entry = node.next;
        } else {
            // A return whose operation is not linearized: undo the last choice.
            let Some((call, prev_state)) = stack.pop() else {
                return Verdict::NotLinearizable { key: key.to_string(), stuck_at: ops[node.op].source };
            };
            let op = nodes[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            unlift(&mut nodes, call);
            entry = nodes[call].next;
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1_000_000;

    fn ev(process: u32, op: RegisterOp, invoke: u64, complete: u64, outcome: Outcome<RegisterOutput>) -> RegisterEvent {
        RegisterEvent { process, key: "k".into(), op, invoke, complete, outcome }
    }
    fn w(v: &str) -> RegisterOp {
        RegisterOp::Write(v.into())
    }
    fn read(v: Option<&str>) -> Outcome<RegisterOutput> {
        Outcome::Ok(RegisterOutput::Value(v.map(String::from)))
    }
    fn written() -> Outcome<RegisterOutput> {
        Outcome::Ok(RegisterOutput::Written)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            ev(1, w("a"), 0, 10, written()),
            ev(2, RegisterOp::Read, 20, 30, read(Some("a"))),
            ev(
                1,
                RegisterOp::Cas { expected: Some("a".into()), new: "b".into() },
                40,
                50,
                Outcome::Ok(RegisterOutput::Cas(true)),
            ),
            ev(2, RegisterOp::Read, 60, 70, read(Some("b"))),
        ];
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    }

    /// A read that starts after a write was acknowledged returns the old value.
    #[test]
    fn stale_read_is_caught() {
        let h = vec![
            ev(1, w("a"), 0, 10, written()),
            ev(1, w("b"), 20, 30, written()),
            ev(2, RegisterOp::Read, 40, 50, read(Some("a"))),
        ];
        assert!(matches!(check(&h, BUDGET), Verdict::NotLinearizable { .. }));
    }

    /// An acknowledged write vanishes: later reads see the value before it.
    #[test]
    fn lost_write_is_caught() {
        let h = vec![
            ev(1, w("a"), 0, 10, written()),
            ev(2, w("b"), 20, 30, written()),
            ev(3, RegisterOp::Read, 40, 50, read(Some("b"))),
            ev(3, RegisterOp::Read, 60, 70, read(Some("a"))),
        ];
        assert!(matches!(check(&h, BUDGET), Verdict::NotLinearizable { .. }));
    }

    /// Two leaders each accept a CAS from the same value: both say it applied.
    #[test]
    fn split_brain_double_cas_is_caught() {
        let cas = |new: &str| RegisterOp::Cas { expected: Some("a".into()), new: new.into() };
        let h = vec![
            ev(1, w("a"), 0, 10, written()),
            ev(2, cas("b"), 20, 40, Outcome::Ok(RegisterOutput::Cas(true))),
            ev(3, cas("c"), 25, 45, Outcome::Ok(RegisterOutput::Cas(true))),
        ];
        assert!(matches!(check(&h, BUDGET), Verdict::NotLinearizable { .. }));
    }

    /// Concurrent operations may be ordered either way.
    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        let h = vec![
            ev(1, w("a"), 0, 100, written()),
            ev(2, RegisterOp::Read, 10, 20, read(Some("a"))),
            ev(3, RegisterOp::Read, 30, 40, read(None)),
        ];
        // The write overlaps both reads; "a" then absent cannot both hold: once the read
        // saw "a", the write has taken effect.
        assert!(matches!(check(&h, BUDGET), Verdict::NotLinearizable { .. }));
        let ok = vec![
            ev(1, w("a"), 0, 100, written()),
            ev(3, RegisterOp::Read, 10, 20, read(None)),
            ev(2, RegisterOp::Read, 30, 40, read(Some("a"))),
        ];
        assert_eq!(check(&ok, BUDGET), Verdict::Linearizable);
    }

    /// A write whose outcome is unknown may have happened much later — or never.
    #[test]
    fn indeterminate_write_may_take_effect_late_or_never() {
        let late = vec![
            ev(1, w("a"), 0, 10, written()),
            ev(2, w("x"), 20, 0, Outcome::Info),
            ev(3, RegisterOp::Read, 100, 110, read(Some("a"))),
            ev(3, RegisterOp::Read, 200, 210, read(Some("x"))),
        ];
        assert_eq!(check(&late, BUDGET), Verdict::Linearizable);
        let never = vec![
            ev(1, w("a"), 0, 10, written()),
            ev(2, w("x"), 20, 0, Outcome::Info),
            ev(3, RegisterOp::Read, 100, 110, read(Some("a"))),
        ];
        assert_eq!(check(&never, BUDGET), Verdict::Linearizable);
        // But not before it was invoked.
        let early = vec![ev(3, RegisterOp::Read, 0, 10, read(Some("x"))), ev(2, w("x"), 20, 0, Outcome::Info)];
        assert!(matches!(check(&early, BUDGET), Verdict::NotLinearizable { .. }));
    }

    /// A failed write never happened: a read of its value is a violation.
    #[test]
    fn failed_write_must_not_be_seen() {
        let h = vec![ev(1, w("x"), 0, 10, Outcome::Fail), ev(2, RegisterOp::Read, 20, 30, read(Some("x")))];
        assert!(matches!(check(&h, BUDGET), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![ev(1, w("a"), 0, 10, written())];
        let mut other = ev(2, RegisterOp::Read, 20, 30, read(None));
        other.key = "other".into();
        h.push(other);
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    }

    proptest::proptest! {
        /// Histories made by a real register — each operation takes effect at a point
        /// inside its interval, outputs computed in that order, some outcomes then hidden
        /// (Info) — are always judged linearizable: the checker has no false alarms.
        #[test]
        fn histories_of_a_real_register_are_linearizable(
            ops in proptest::collection::vec((0u8..3, 0u64..50, 1u64..40, 0u64..40, 0u8..10), 1..14)
        ) {
            // (kind, invoke, length, point offset, info dice)
            let mut timed: Vec<(u64, usize)> = Vec::new();
            let mut evs = Vec::new();
            for (i, (kind, invoke, len, off, dice)) in ops.iter().enumerate() {
                let complete = invoke + len;
                let point = invoke + off % (len + 1);
                let op = match kind {
                    0 => RegisterOp::Read,
                    1 => w(&format!("v{i}")),
                    _ => RegisterOp::Cas { expected: Some(format!("v{}", i.saturating_sub(1))), new: format!("c{i}") },
                };
                timed.push((point * 100 + i as u64, i));
                evs.push((op, *invoke * 100, complete * 100 + 99, *dice));
            }
            timed.sort();
            let mut state: Option<String> = None;
            let mut outputs = vec![RegisterOutput::Written; evs.len()];
            for (_, i) in timed {
                let (op, ..) = &evs[i];
                outputs[i] = match op {
                    RegisterOp::Read => RegisterOutput::Value(state.clone()),
                    RegisterOp::Write(v) => { state = Some(v.clone()); RegisterOutput::Written }
                    RegisterOp::Cas { expected, new } => {
                        let ok = *expected == state;
                        if ok { state = Some(new.clone()); }
                        RegisterOutput::Cas(ok)
                    }
                };
            }
            let h: Vec<RegisterEvent> = evs.into_iter().enumerate().map(|(i, (op, invoke, complete, dice))| {
                let outcome = if dice == 0 { Outcome::Info } else { Outcome::Ok(outputs[i].clone()) };
                ev(i as u32, op, invoke, complete, outcome)
            }).collect();
            proptest::prop_assert_eq!(check(&h, BUDGET), Verdict::Linearizable, "{:?}", h);
        }
    }

    #[test]
    fn exhausted_budget_answers_unknown() {
        // Many concurrent writes and a read nobody wrote: the search must explore, and a
        // budget of a few steps cannot finish it.
        let mut h: Vec<RegisterEvent> = (0..12).map(|i| ev(i, w(&i.to_string()), 0, 1000, written())).collect();
        h.push(ev(99, RegisterOp::Read, 2000, 2010, read(Some("nobody"))));
        assert!(matches!(check(&h, 5), Verdict::Unknown { .. }));
        assert!(matches!(check(&h, BUDGET), Verdict::NotLinearizable { .. }));
    }
}
