//! When this member campaigns. openraft's own election timer is switched off
//! (`enable_elect: false`) and this module decides instead, with Raft's rules:
//!
//! * a follower of a live leader waits out the leader lease (the voters refuse any vote
//!   until no heartbeat has come for `election_timeout_max`, twice `--election-timeout`),
//!   then a random part (a quarter to all) of one more election timeout;
//! * a candidate, or a member that granted its vote to one, campaigns again after one
//!   election timeout and a random part of another, counted from its last change of vote;
//! * every campaign starts with a pre-vote round (Raft thesis §9.6): the member asks
//!   whether it would be elected, without raising its term, and campaigns for real only
//!   if a quorum says yes. A member cut off from the others (a partition, a long pause)
//!   therefore comes back at the term it left, and does not depose a healthy leader;
//! * a member whose pre-vote failed keeps following its old leader's vote, but tries
//!   again with a candidate's cadence (one election timeout and a random part of
//!   another), not a follower's;
//! * a sole voter campaigns at once, once per vote, without a pre-vote;
//! * the random part is drawn afresh every time (openraft 0.9 drew one per process and
//!   kept it for life, so two members whose draws are close collided round after round);
//! * a member whose campaign learned that a peer holds a longer log (it cannot win while
//!   that peer votes) waits two more election timeouts before it campaigns again, so the
//!   member with the longer log campaigns in a term above it and wins.
//!
//! Why (issue 10): the helper this replaces campaigned on its own fixed schedule beside
//! openraft's timer and ignored openraft's back-off for a shorter log. After a leader was
//! killed, the follower with the shorter log campaigned first every round, raising the term
//! just before the other follower campaigned in that same term, so every vote was refused:
//! four rounds (2.85 s) to the next leader in one run, ~5.8 s in a CI run.
//!
//! The rules are in [`Timer`], a plain clock with no I/O, unit-tested below; [`run`] is the
//! task that follows Raft's metrics and triggers the campaigns.

use openraft::async_runtime::WatchReceiver;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use crate::node::Node;
use crate::types::Vote;

/// The least random part, in election timeouts, a follower of a leader adds to the lease.
const MIN_FRACTION: f64 = 0.25;

/// The election clock of one member: what it heard and when, and when it may campaign.
pub struct Timer {
    /// `--election-timeout` (openraft's `election_timeout_min`).
    election_timeout: Duration,
    state: Mutex<State>,
}

struct State {
    /// The last AppendEntries or snapshot chunk accepted from a leader.
    last_heard: Instant,
    /// The vote last seen, and since when.
    vote: Option<Vote>,
    vote_since: Instant,
    /// The random fraction of an election timeout drawn for `drawn_for` (a base time).
    drawn_for: Option<Instant>,
    fraction: f64,
    /// A term in which this member's campaign (or pre-vote for that term) was refused by
    /// a peer with a longer log.
    outlogged_in: Option<u64>,
    /// This member campaigned (a pre-vote round, at least) and has heard no leader since.
    retrying: bool,
}

impl Timer {
    /// A clock for a member started now.
    pub fn new(election_timeout: Duration, now: Instant) -> Timer {
        Timer {
            election_timeout,
            state: Mutex::new(State {
                last_heard: now,
                vote: None,
                vote_since: now,
                drawn_for: None,
                fraction: 0.0,
                outlogged_in: None,
                retrying: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A leader was heard from (an AppendEntries or snapshot chunk it sent was accepted),
    /// or this member leads or does not vote: the countdown starts again.
    pub fn heard(&self, now: Instant) {
        let mut s = self.lock();
        s.last_heard = now;
        s.retrying = false;
    }

    /// A peer refused this member's campaign (or pre-vote) for `term` because its log is
    /// longer.
    pub fn outlogged(&self, term: u64) {
        let mut s = self.lock();
        s.outlogged_in = Some(s.outlogged_in.map_or(term, |t| t.max(term)));
    }

    /// When this member, whose vote is `vote`, should campaign; `draw` gives the random
    /// fraction (0..1) whenever a new one is needed.
    pub fn deadline(&self, now: Instant, vote: &Vote, draw: impl FnOnce() -> f64) -> Instant {
        let et = self.election_timeout;
        let mut s = self.lock();
        if s.vote.as_ref() != Some(vote) {
            s.vote = Some(*vote);
            s.vote_since = now;
            s.drawn_for = None;
            s.retrying = false;
        }
        let base = s.last_heard.max(s.vote_since);
        if s.drawn_for != Some(base) {
            s.drawn_for = Some(base);
            s.fraction = draw().clamp(0.0, 1.0);
        }
        let mut at = if vote.is_committed() && !s.retrying {
            // Following a leader: the voters' lease on it must run out first. At least a
            // quarter timeout more, so that a move-leader target, told to campaign every
            // 20 ms once the lease is out, goes first.
            base + et * 2 + et.mul_f64(MIN_FRACTION + (1.0 - MIN_FRACTION) * s.fraction)
        } else {
            base + et + et.mul_f64(s.fraction)
        };
        // A pre-vote asks for the term after a committed vote; a campaign for real is in
        // the candidate's own term.
        let campaign_term = if vote.is_committed() { vote.leader_id().term + 1 } else { vote.leader_id().term };
        if (s.retrying || !vote.is_committed()) && s.outlogged_in == Some(campaign_term) {
            at += et * 2;
        }
        at
    }

    /// This member campaigns now.
    pub fn campaigned(&self, now: Instant) {
        let mut s = self.lock();
        s.vote_since = now;
        s.drawn_for = None;
        s.retrying = true;
    }
}

/// Triggers this member's campaigns (see the module docs) until the member stops.
pub async fn run(node: Weak<Node>, timer: Arc<Timer>) {
    use rand::Rng;
    // Server metrics (vote, state, membership) change on elections, not on every write.
    let Some(mut rx) = node.upgrade().map(|n| n.raft.server_metrics()) else { return };
    // The vote this member last campaigned from as the sole voter (once per vote:
    // `elect()` only queues a request, and each one is a new term written to disk).
    let mut alone_from = None;
    loop {
        let (vote, voter, alone, leader) = {
            let m = rx.borrow_and_update();
            let membership = m.membership_config.membership();
            let voter = membership.voter_ids().any(|v| v == m.id);
            let alone = voter && membership.voter_ids().count() == 1;
            (m.vote, voter, alone, m.state == ServerState::Leader)
        };
        let now = Instant::now();
        let wake = if !voter || leader {
            timer.heard(now);
            None
        } else {
            let at = timer.deadline(now, &vote, || rand::rng().random_range(0.0..1.0));
            let alone = alone && alone_from != Some(vote);
            if now >= at || alone {
                alone_from = Some(vote);
                let Some(n) = node.upgrade() else { return };
                tracing::debug!(term = vote.leader_id().term, "no leader heard in time; campaigning");
                timer.campaigned(now);
                // A sole voter needs nobody's word (and openraft skips a pre-vote it is
                // asked for while its own lease holds, silently).
                if n.raft.trigger().elect(!alone).await.is_err() {
                    return;
                }
                continue;
            }
            Some(at)
        };
        // Wake on any change of vote, state or membership, at the deadline, or now and
        // then (a leader: every election timeout, to keep its clock from running out).
        let sleep = tokio::time::sleep_until(wake.unwrap_or(now + timer.election_timeout));
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ET: Duration = Duration::from_millis(300);

    fn following(term: u64) -> Vote {
        Vote::new_committed(term, 7)
    }

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    /// A follower of a live leader waits out the voters' lease (two election timeouts)
    /// and a random part of one more, counted from the last heartbeat.
    #[test]
    fn a_follower_campaigns_after_the_lease_and_a_random_part_of_a_timeout() {
        let t0 = Instant::now();
        let t = Timer::new(ET, t0);
        assert_eq!(ms(t.deadline(t0, &following(3), || 0.0) - t0), 600 + 75, "at least a quarter timeout");
        t.heard(t0 + Duration::from_millis(100));
        assert_eq!(ms(t.deadline(t0, &following(3), || 1.0) - t0), 100 + 600 + 300);
    }

    /// The random part is drawn again whenever the countdown restarts (openraft 0.9 draws
    /// one per process), and kept while it runs.
    #[test]
    fn the_random_part_is_drawn_afresh_for_every_countdown() {
        let t0 = Instant::now();
        let t = Timer::new(ET, t0);
        let first = t.deadline(t0, &following(3), || 0.0);
        assert_eq!(t.deadline(t0, &following(3), || 1.0), first, "kept while the countdown runs");
        t.heard(t0 + Duration::from_millis(10));
        assert_eq!(ms(t.deadline(t0, &following(3), || 1.0) - t0), 10 + 600 + 300, "drawn again");
    }

    /// A candidate (or a member that voted for one) tries again after one election timeout
    /// and a random part of another, counted from its last change of vote.
    #[test]
    fn a_candidate_tries_again_after_a_timeout_and_a_random_part() {
        let t0 = Instant::now();
        let t = Timer::new(ET, t0);
        let later = t0 + Duration::from_millis(700);
        let candidate = Vote::new(4, 1);
        assert_eq!(ms(t.deadline(later, &candidate, || 0.5) - later), 300 + 150);
        let voted_for_another = Vote::new(5, 2);
        let again = later + Duration::from_millis(50);
        assert_eq!(ms(t.deadline(again, &voted_for_another, || 0.0) - again), 300, "granting a vote restarts it");
    }

    /// Regression (issue 10, a 2.85–5.8 s failover): a member whose campaign was refused by
    /// a peer with a longer log stays quiet two more election timeouts in that term, so the
    /// peer's next campaign is in a higher term and it wins; a new term clears it.
    #[test]
    fn a_member_outlogged_in_its_campaign_lets_the_longer_log_campaign_first() {
        let t0 = Instant::now();
        let t = Timer::new(ET, t0);
        let candidate = Vote::new(2, 1);
        t.campaigned(t0);
        let plain = t.deadline(t0, &candidate, || 0.5);
        t.outlogged(2);
        assert_eq!(ms(t.deadline(t0, &candidate, || 0.5) - plain), 600);
        let next_term = Vote::new(3, 1);
        assert_eq!(t.deadline(t0, &next_term, || 0.5), t0 + ET + ET / 2, "a later term is not penalised");
    }

    /// A pre-vote that failed leaves the vote as it was (committed, for the old leader):
    /// the member tries again at a candidate's cadence, not after another leader lease;
    /// hearing from a leader puts it back to a follower's.
    #[test]
    fn a_member_whose_pre_vote_failed_tries_again_at_a_candidates_cadence() {
        let t0 = Instant::now();
        let t = Timer::new(ET, t0);
        let at = t0 + Duration::from_millis(700);
        t.deadline(t0, &following(3), || 0.0);
        assert!(t.deadline(at, &following(3), || 0.0) <= at, "the lease ran out: campaign");
        t.campaigned(at);
        assert_eq!(ms(t.deadline(at, &following(3), || 0.5) - at), 300 + 150, "retry: a timeout and a part");
        let heard = at + Duration::from_millis(100);
        t.heard(heard);
        assert_eq!(ms(t.deadline(heard, &following(3), || 0.0) - heard), 600 + 75, "following again");
    }

    /// A pre-vote for the term after a committed vote, refused for a shorter log, holds
    /// this member back as a refused campaign does.
    #[test]
    fn a_member_outlogged_in_its_pre_vote_lets_the_longer_log_go_first() {
        let t0 = Instant::now();
        let t = Timer::new(ET, t0);
        t.deadline(t0, &following(3), || 0.5);
        t.campaigned(t0);
        let plain = t.deadline(t0, &following(3), || 0.5);
        t.outlogged(4);
        assert_eq!(ms(t.deadline(t0, &following(3), || 0.5) - plain), 600);
    }
}
