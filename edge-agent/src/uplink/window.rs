//! The uplink's go-back-N send window, as plain data.
//!
//! It holds the send cursor (the seq the next batch starts from) and the
//! batches published but not yet acknowledged, oldest first. It does no
//! I/O and reads no clock: the time and what it needs to know about the
//! log (the oldest seq still held, the next seq to be assigned) are
//! parameters, and it answers with decisions: where the next batch starts
//! (or that the window is full), and when to go back.
//!
//! The rules (the fault tests found each of them):
//! - At most `max_in_flight` batches are unacknowledged: that is the
//!   back-pressure from the hub.
//! - Acks are per batch, not cumulative: an ack drops exactly the in-flight
//!   batches inside its range; an earlier batch may have been lost and still
//!   awaits its own. A refusal is an ack too (the hub keeps none of it, the
//!   agent stops re-sending it).
//! - A (re)connect goes back to the oldest record held, with or without a
//!   resumed session: whatever was in flight may be lost.
//! - When the oldest in-flight batch waited `ack_timeout` for its ack, or
//!   when nothing is in flight yet records below the cursor are still held
//!   (their batch left the window without its ack), go back to the oldest
//!   record held.
//! - Records the log expired move the cursor forward, never back.
//!
//! So the cursor passes a record only by sending it, and a record the
//! cursor passed is, until acknowledged, either in an in-flight batch or
//! re-sent after the next go-back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One published, not yet acknowledged batch: records `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub first: u64,
    pub last: u64,
    pub sent: Instant,
}

/// Why the window went back to the oldest record held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoBackReason {
    /// A (re)connect: what was in flight may be lost.
    Connected { session_resumed: bool },
    /// The oldest in-flight batch waited `ack_timeout` for its ack.
    AckTimeout,
    /// Nothing in flight, yet records below the cursor are still held.
    Orphans,
}

/// A decision to re-send from `from` (the oldest record held, or the next
/// seq when the log is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoBack {
    pub from: u64,
    pub reason: GoBackReason,
}

#[derive(Debug, Clone)]
pub struct SendWindow {
    cursor: u64,
    in_flight: VecDeque<InFlight>,
    max_in_flight: usize,
    ack_timeout: Duration,
}

/// Where a go-back re-sends from.
fn resend_from(oldest_held: Option<u64>, next_seq: u64) -> u64 {
    oldest_held.unwrap_or(next_seq)
}

impl SendWindow {
    /// A window starting at `cursor` (the log's oldest record, or its next
    /// seq when empty). `max_in_flight` is at least 1 (config validation).
    pub fn new(cursor: u64, max_in_flight: usize, ack_timeout: Duration) -> Self {
        SendWindow {
            cursor,
            in_flight: VecDeque::with_capacity(max_in_flight),
            max_in_flight: max_in_flight.max(1),
            ack_timeout,
        }
    }

    /// The seq the next batch starts from (records below it were sent).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The unacknowledged batches, oldest first.
    pub fn in_flight(&self) -> impl ExactSizeIterator<Item = &InFlight> {
        self.in_flight.iter()
    }

    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= self.max_in_flight
    }

    /// Where the next batch is read from, or `None` while the window is
    /// full (back-pressure: wait for an ack).
    pub fn next_send(&self) -> Option<u64> {
        (!self.is_full()).then_some(self.cursor)
    }

    /// A batch `first..=last` read from the cursor was handed to the link
    /// at `now`.
    pub fn sent(&mut self, first: u64, last: u64, now: Instant) {
        debug_assert!(!self.is_full(), "sent into a full window");
        debug_assert!(first >= self.cursor && last >= first);
        self.in_flight.push_back(InFlight {
            first,
            last,
            sent: now,
        });
        self.cursor = last + 1;
    }

    /// The hub acknowledged (or refused) records `first..=last`. Drops the
    /// in-flight batches inside that range and no others; returns how many.
    pub fn acked(&mut self, first: u64, last: u64) -> usize {
        let before = self.in_flight.len();
        self.in_flight.retain(|b| b.first < first || b.last > last);
        before - self.in_flight.len()
    }

    /// The link (re)connected, with or without a resumed session. Both go
    /// back: even a resumed session may have lost what was in flight (a
    /// broker restart), and the hub deduplicates the copies.
    pub fn connected(
        &mut self,
        session_resumed: bool,
        oldest_held: Option<u64>,
        next_seq: u64,
    ) -> GoBack {
        self.go_back(
            resend_from(oldest_held, next_seq),
            GoBackReason::Connected { session_resumed },
        )
    }

    /// The periodic check at `now`: goes back on an ack timeout or on
    /// orphans (records held below the cursor with nothing in flight).
    pub fn tick(
        &mut self,
        now: Instant,
        oldest_held: Option<u64>,
        next_seq: u64,
    ) -> Option<GoBack> {
        let timed_out = self
            .in_flight
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.sent) >= self.ack_timeout);
        // Nothing in flight, yet records below the cursor are still held:
        // their batch left the window without its ack.
        let orphaned = self.in_flight.is_empty() && oldest_held.is_some_and(|f| f < self.cursor);
        let reason = if timed_out {
            GoBackReason::AckTimeout
        } else if orphaned {
            GoBackReason::Orphans
        } else {
            return None;
        };
        Some(self.go_back(resend_from(oldest_held, next_seq), reason))
    }

    /// The log dropped its oldest records by age; `oldest_held` and
    /// `next_seq` are the log's after the drop. The cursor skips what is
    /// gone and never moves back.
    pub fn expired(&mut self, oldest_held: Option<u64>, next_seq: u64) {
        self.cursor = self.cursor.max(resend_from(oldest_held, next_seq));
    }

    fn go_back(&mut self, from: u64, reason: GoBackReason) -> GoBack {
        self.in_flight.clear();
        self.cursor = from;
        GoBack { from, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const TIMEOUT: Duration = Duration::from_millis(500);

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// A window of up to 3 batches, starting at seq 0.
    fn window() -> (SendWindow, Instant) {
        (SendWindow::new(0, 3, TIMEOUT), Instant::now())
    }

    #[test]
    fn sends_advance_the_cursor_until_the_window_is_full() {
        let (mut w, t0) = window();
        assert_eq!(w.next_send(), Some(0));
        w.sent(0, 9, t0);
        assert_eq!(w.next_send(), Some(10));
        w.sent(10, 19, t0);
        w.sent(20, 29, t0);
        assert!(w.is_full());
        assert_eq!(w.next_send(), None, "back-pressure: wait for an ack");
        assert_eq!(w.cursor(), 30);
        // An ack makes room, and sending resumes where it stopped.
        assert_eq!(w.acked(0, 9), 1);
        assert_eq!(w.next_send(), Some(30));
    }

    #[test]
    fn a_lost_ack_times_out_and_goes_back_to_the_oldest_record() {
        let (mut w, t0) = window();
        w.sent(0, 9, t0);
        w.sent(10, 19, ms(t0, 100));
        // The hub got both, but the ack of the first was lost.
        w.acked(10, 19);
        assert_eq!(w.tick(ms(t0, 499), Some(0), 20), None, "not yet");
        assert_eq!(
            w.tick(ms(t0, 500), Some(0), 20),
            Some(GoBack {
                from: 0,
                reason: GoBackReason::AckTimeout
            })
        );
        assert_eq!(w.in_flight().len(), 0);
        assert_eq!(w.next_send(), Some(0));
    }

    #[test]
    fn the_timeout_counts_from_the_oldest_batch_in_flight() {
        let (mut w, t0) = window();
        w.sent(0, 9, t0);
        w.sent(10, 19, ms(t0, 400));
        w.acked(0, 9);
        // The oldest now is the second, sent at 400 ms.
        assert_eq!(w.tick(ms(t0, 600), Some(10), 20), None);
        assert_eq!(
            w.tick(ms(t0, 900), Some(10), 20).map(|g| g.reason),
            Some(GoBackReason::AckTimeout)
        );
    }

    #[test]
    fn a_broker_restart_that_lost_a_batch_is_recovered_by_the_timeout() {
        // The broker took the batch (PUBACK) and restarted before the hub
        // read it; the link stayed up long enough that no reconnect is
        // seen before the timeout.
        let (mut w, t0) = window();
        w.sent(0, 9, t0);
        w.sent(10, 19, t0);
        let back = w.tick(ms(t0, 500), Some(0), 20).unwrap();
        assert_eq!(back.from, 0);
        w.sent(0, 9, ms(t0, 501));
        w.sent(10, 19, ms(t0, 501));
        w.acked(0, 9);
        w.acked(10, 19);
        assert_eq!(w.in_flight().len(), 0);
        assert_eq!(w.tick(ms(t0, 2000), None, 20), None, "drained");
    }

    #[test]
    fn a_reconnect_goes_back_with_or_without_a_session() {
        for session_resumed in [false, true] {
            let (mut w, t0) = window();
            w.sent(0, 9, t0);
            w.sent(10, 19, t0);
            w.acked(0, 9);
            let back = w.connected(session_resumed, Some(10), 20);
            assert_eq!(
                back,
                GoBack {
                    from: 10,
                    reason: GoBackReason::Connected { session_resumed }
                }
            );
            assert_eq!(w.in_flight().len(), 0);
            assert_eq!(w.next_send(), Some(10));
        }
    }

    #[test]
    fn a_reconnect_with_an_empty_log_starts_at_the_next_seq() {
        let (mut w, t0) = window();
        w.sent(0, 9, t0);
        w.acked(0, 9);
        assert_eq!(w.connected(false, None, 10).from, 10);
        assert_eq!(w.next_send(), Some(10));
    }

    #[test]
    fn orphans_below_the_cursor_are_re_sent() {
        let (mut w, t0) = window();
        w.sent(0, 9, t0);
        w.sent(10, 19, t0);
        // An ack whose range covers both batches (one sent before a go-back
        // with other boundaries) drops them, but the log still holds 15..=19.
        assert_eq!(w.acked(0, 19), 2);
        assert_eq!(
            w.tick(ms(t0, 1), Some(15), 20),
            Some(GoBack {
                from: 15,
                reason: GoBackReason::Orphans
            })
        );
        assert_eq!(w.next_send(), Some(15));
        // Nothing held below the cursor: no go-back.
        assert_eq!(w.tick(ms(t0, 2), Some(15), 20), None);
        assert_eq!(w.tick(ms(t0, 3), None, 20), None);
    }

    #[test]
    fn acks_are_per_batch_and_may_arrive_out_of_order() {
        let (mut w, t0) = window();
        w.sent(0, 9, t0);
        w.sent(10, 19, t0);
        w.sent(20, 29, t0);
        assert_eq!(w.acked(20, 29), 1);
        assert_eq!(w.acked(0, 9), 1);
        let left: Vec<_> = w.in_flight().map(|b| (b.first, b.last)).collect();
        assert_eq!(
            left,
            vec![(10, 19)],
            "not cumulative: 10..=19 still awaits its own"
        );
        // A duplicate or stale ack changes nothing.
        assert_eq!(w.acked(0, 9), 0);
        // An ack for a part of a batch does not drop the batch.
        assert_eq!(w.acked(10, 14), 0);
        assert_eq!(w.acked(10, 19), 1);
        assert_eq!(w.in_flight().len(), 0);
        assert_eq!(w.tick(ms(t0, 5000), None, 30), None);
    }

    #[test]
    fn a_refused_batch_leaves_the_window_like_an_acked_one() {
        // The hub refuses a batch for good (the ack carries `rejected`);
        // the uplink removes its records from the log and the window
        // drops it, so it is not re-sent.
        let (mut w, t0) = window();
        w.sent(0, 9, t0);
        w.sent(10, 19, t0);
        assert_eq!(w.acked(0, 9), 1);
        assert_eq!(w.next_send(), Some(20));
        assert_eq!(w.tick(ms(t0, 100), Some(10), 20), None);
    }

    #[test]
    fn log_expiry_moves_the_cursor_forward_only() {
        let (mut w, t0) = window();
        // Nothing sent yet (the link is down); the log drops 0..=49.
        w.expired(Some(50), 80);
        assert_eq!(w.next_send(), Some(50));
        w.sent(50, 59, t0);
        // Expiry below the cursor does not move it back.
        w.expired(Some(55), 80);
        assert_eq!(w.cursor(), 60);
        // The log expired everything.
        w.expired(None, 80);
        assert_eq!(w.cursor(), 80);
    }

    // --- property: any interleaving of sends, acks, losses, reconnects,
    // timeouts and expiry, against a model of the log and the hub. ---

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// The pipeline appends `n` records.
        Append(u8),
        /// The uplink sends what the window allows, batches of up to `n`.
        Send(u8),
        /// The hub receives the i-th in-flight batch on the wire and acks it.
        Deliver(u8),
        /// The i-th batch on the wire is lost (broker restart, reconnect).
        Lose(u8),
        /// The hub's ack for the i-th stored batch reaches the agent.
        Ack(u8),
        /// The i-th pending ack is lost (QoS 0).
        LoseAck(u8),
        Reconnect(bool),
        /// Time passes, then the periodic check.
        Tick(u16),
        /// The log expires its `n` oldest records.
        Expire(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..20).prop_map(Op::Append),
            (1u8..8).prop_map(Op::Send),
            any::<u8>().prop_map(Op::Deliver),
            any::<u8>().prop_map(Op::Lose),
            any::<u8>().prop_map(Op::Ack),
            any::<u8>().prop_map(Op::LoseAck),
            any::<bool>().prop_map(Op::Reconnect),
            (0u16..800).prop_map(Op::Tick),
            (1u8..5).prop_map(Op::Expire),
        ]
    }

    /// The agent's log, the wire and the hub, as sets and queues.
    struct World {
        w: SendWindow,
        now: Instant,
        held: BTreeSet<u64>,
        next_seq: u64,
        /// Batches sent, not yet at the hub.
        wire: Vec<(u64, u64)>,
        /// Acks sent by the hub, not yet at the agent.
        acks: Vec<(u64, u64)>,
        hub: BTreeSet<u64>,
        /// Records the log dropped by age (the only allowed loss).
        expired: BTreeSet<u64>,
        max: usize,
    }

    impl World {
        fn new(max: usize) -> Self {
            World {
                w: SendWindow::new(0, max, TIMEOUT),
                now: Instant::now(),
                held: BTreeSet::new(),
                next_seq: 0,
                wire: Vec::new(),
                acks: Vec::new(),
                hub: BTreeSet::new(),
                expired: BTreeSet::new(),
                max,
            }
        }

        fn oldest(&self) -> Option<u64> {
            self.held.first().copied()
        }

        /// What the uplink's send loop does, with a log read of `batch`.
        fn send(&mut self, batch: usize) {
            while let Some(from) = self.w.next_send() {
                let records: Vec<u64> = self.held.range(from..).take(batch).copied().collect();
                let (Some(&first), Some(&last)) = (records.first(), records.last()) else {
                    return;
                };
                self.w.sent(first, last, self.now);
                self.wire.push((first, last));
            }
        }

        fn apply(&mut self, op: &Op) {
            let pick = |i: u8, n: usize| (n > 0).then(|| i as usize % n);
            match *op {
                Op::Append(n) => {
                    for _ in 0..n {
                        self.held.insert(self.next_seq);
                        self.next_seq += 1;
                    }
                }
                Op::Send(n) => self.send(n as usize),
                Op::Deliver(i) => {
                    if let Some(i) = pick(i, self.wire.len()) {
                        let (first, last) = self.wire.remove(i);
                        // The hub stores what it receives and acks the batch.
                        let range: Vec<u64> = self.held.range(first..=last).copied().collect();
                        self.hub.extend(range);
                        self.acks.push((first, last));
                    }
                }
                Op::Lose(i) => {
                    if let Some(i) = pick(i, self.wire.len()) {
                        self.wire.remove(i);
                    }
                }
                Op::Ack(i) => {
                    if let Some(i) = pick(i, self.acks.len()) {
                        let (first, last) = self.acks.remove(i);
                        // The uplink removes the records, then tells the window.
                        let gone: Vec<u64> = self.held.range(first..=last).copied().collect();
                        for s in gone {
                            assert!(self.hub.contains(&s), "removed {s} the hub lacks");
                            self.held.remove(&s);
                        }
                        self.w.acked(first, last);
                    }
                }
                Op::LoseAck(i) => {
                    if let Some(i) = pick(i, self.acks.len()) {
                        self.acks.remove(i);
                    }
                }
                Op::Reconnect(session) => {
                    if !session {
                        self.wire.clear();
                    }
                    self.w.connected(session, self.oldest(), self.next_seq);
                }
                Op::Tick(dt) => {
                    self.now += Duration::from_millis(dt as u64);
                    self.w.tick(self.now, self.oldest(), self.next_seq);
                }
                Op::Expire(n) => {
                    for _ in 0..n {
                        if let Some(s) = self.held.pop_first() {
                            self.expired.insert(s);
                        }
                    }
                    self.w.expired(self.oldest(), self.next_seq);
                }
            }
        }

        fn check(&self) {
            assert!(self.w.in_flight().len() <= self.max, "over the window");
            let cursor = self.w.cursor();
            assert!(cursor <= self.next_seq);
            // Every held record the cursor passed is in an in-flight batch,
            // or nothing is in flight and the next tick re-sends it: the
            // cursor never leaves an unacknowledged record behind for good.
            if self.w.in_flight().len() > 0 {
                for s in self.held.range(..cursor) {
                    assert!(
                        self.w.in_flight().any(|b| b.first <= *s && *s <= b.last),
                        "record {s} below the cursor {cursor} is held, not in flight"
                    );
                }
            }
            // In-flight batches are ordered and disjoint.
            let v: Vec<_> = self.w.in_flight().collect();
            for p in v.windows(2) {
                assert!(p[0].last < p[1].first);
            }
        }
    }

    proptest! {
        #[test]
        fn the_window_never_loses_a_record(
            max in 1usize..5,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut world = World::new(max);
            for op in &ops {
                world.apply(op);
                world.check();
            }
            // Then a perfect link: everything held reaches the hub and is
            // removed, within a bounded number of rounds.
            for _ in 0..1000 {
                if world.held.is_empty() {
                    break;
                }
                world.apply(&Op::Tick(600));
                world.send(7);
                while !world.wire.is_empty() {
                    world.apply(&Op::Deliver(0));
                }
                while !world.acks.is_empty() {
                    world.apply(&Op::Ack(0));
                }
                world.check();
            }
            prop_assert!(world.held.is_empty(), "left in the log: {:?}", world.held);
            // Nothing was lost: every record appended and not expired is at
            // the hub.
            for s in 0..world.next_seq {
                prop_assert!(world.hub.contains(&s) || world.expired.contains(&s), "lost {}", s);
            }
        }
    }
}
