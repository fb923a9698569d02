//! Routing across the overlay (RFC 7 §4): the rules that decide, for a request, whether it is
//! served here, sent up to the parent or down to a child, or answered with an error, and the
//! numbering of events for the whole instance (§4.5). Pure decisions and counters: the links
//! themselves are endpoints in the routing table, and their sockets are `overlay`'s.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use switchboard_protocol::{Errno, Flags, Message, NODEID_ANY, NODEID_UPSTREAM};

use crate::overlay::{NextHop, Topology};

/// Where this broker is: a standalone broker is rank 0 of 1 and keeps RFC 1's error texts.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub topology: Topology,
    /// False for a broker without `[overlay]`.
    pub instance: bool,
}

impl Place {
    pub const STANDALONE: Place = Place { topology: Topology { rank: 0, size: 1, fanout: 1 }, instance: false };

    pub fn rank(&self) -> u32 {
        self.topology.rank
    }

    pub fn is_root(&self) -> bool {
        self.topology.rank == 0
    }
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Way {
    /// Route it by service on this broker.
    Here,
    /// Send it on the link to this peer rank, its header changed as said.
    Link {
        peer: u32,
        nodeid: u32,
        clear_upstream: bool,
    },
    Fail(Errno, String),
}

/// RFC 7 §4.2's rules, in order. `owned_here` says whether a local endpoint or the broker
/// itself owns the request's service (asked only for NODEID_ANY).
pub fn decide(place: &Place, msg: &Message, owned_here: impl FnOnce() -> bool) -> Way {
    let topo = &place.topology;
    let upstream = msg.flags.contains(Flags::UPSTREAM);
    let up = |nodeid: u32, clear_upstream: bool| match topo.parent() {
        Some(peer) => Way::Link { peer, nodeid: if nodeid == NODEID_UPSTREAM { peer } else { nodeid }, clear_upstream },
        None => Way::Fail(Errno::EHOSTUNREACH, "no upstream broker: this broker is the root".into()),
    };
    match msg.nodeid {
        NODEID_UPSTREAM => up(NODEID_UPSTREAM, false),
        NODEID_ANY if upstream => up(NODEID_ANY, true),
        NODEID_ANY if owned_here() => Way::Here,
        NODEID_ANY if place.is_root() => Way::Fail(Errno::ENOSYS, no_service(place, msg)),
        NODEID_ANY => up(NODEID_ANY, false),
        n if n == topo.rank && upstream && !place.instance => {
            Way::Fail(Errno::EHOSTUNREACH, "no upstream broker: this broker is the root".into())
        }
        n if n == topo.rank && upstream => Way::Fail(
            Errno::EHOSTUNREACH,
            format!(
                "the request names rank {n}, this broker, but has the UPSTREAM flag, which means not this \
                 broker: send UPSTREAM with NODEID_ANY only"
            ),
        ),
        n if n == topo.rank => Way::Here,
        n if !place.instance => {
            Way::Fail(Errno::EHOSTUNREACH, format!("no broker of rank {n}: this broker is rank 0 and has no overlay"))
        }
        n => match topo.next_hop(n) {
            None => Way::Fail(Errno::EHOSTUNREACH, format!("no rank {n}: the instance has {} brokers", topo.size)),
            Some(NextHop::Child(peer)) => Way::Link { peer, nodeid: n, clear_upstream: false },
            Some(NextHop::Parent) => up(n, false),
        },
    }
}

/// ENOSYS's text for a service nobody here owns.
pub fn no_service(place: &Place, msg: &Message) -> String {
    match (place.instance, msg.nodeid) {
        (false, _) => format!("no service '{}' (topic '{}')", msg.service(), msg.topic),
        (true, NODEID_ANY) => {
            format!(
                "no service '{}' on this broker or any on the way to the root (topic '{}')",
                msg.service(),
                msg.topic
            )
        }
        (true, _) => format!("no service '{}' on rank {} (topic '{}')", msg.service(), place.rank(), msg.topic),
    }
}

/// How the links of this broker met a full queue (RFC 7 §3.5), for `broker.info`.
#[derive(Default)]
pub struct FullLinks {
    /// Link messages that found their link full and waited for it.
    pub waited: AtomicU64,
    /// Messages refused (requests, answered EHOSTUNREACH) or dropped (responses, events)
    /// because their link was full beyond what may wait for it.
    pub dropped: AtomicU64,
}

/// The instance's event order (RFC 7 §4.5): rank 0 numbers every event, and each other broker
/// checks that what its parent sends follows what it had.
#[derive(Default)]
pub struct EventOrder {
    /// Held while an event is numbered and handed to every sink, so that every link and every
    /// local subscriber is handed events in number order.
    pub publishing: Mutex<()>,
    next: AtomicU32,
    /// The last number delivered from the parent; None before the first. Kept across a lost
    /// and rejoined parent link, so that the events missed meanwhile count as a gap.
    last: Mutex<Option<u32>>,
    lost: AtomicU64,
    /// Events published here before the link to the parent first came up (a broker's modules
    /// start while it joins), to be sent up when it does, in order: at most `EARLY_EVENTS`.
    early: Mutex<Vec<Message>>,
    /// The parent link came up once, and what `early` held was sent. Set under `early`'s lock.
    joined: AtomicBool,
}

/// The most events a broker holds for its parent before it first joins; more are lost.
pub const EARLY_EVENTS: usize = 1024;

impl EventOrder {
    /// The next number (rank 0 only). Call with `publishing` held.
    pub fn number(&self) -> u32 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// An event numbered `seq` arrived from the parent: log and count the numbers skipped.
    pub fn arrived(&self, seq: u32) {
        let mut last = self.last.lock();
        match *last {
            Some(l) if seq > l.wrapping_add(1) && seq > l => {
                let missing = u64::from(seq - l - 1);
                self.lost.fetch_add(missing, Ordering::Relaxed);
                tracing::warn!("events {}..{} were lost on the way from rank 0 ({missing} in all)", l + 1, seq - 1);
            }
            Some(l) if seq <= l => {
                tracing::info!(seq, last = l, "rank 0 numbers events from the start again (it restarted)")
            }
            _ => {}
        }
        *last = Some(seq);
    }

    /// An event this broker could not pass on (its parent link is down): the count so far.
    pub fn count_lost(&self, n: u64) -> u64 {
        self.lost.fetch_add(n, Ordering::Relaxed) + n
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// An event to send up (not rank 0): held if this broker has not joined yet (None), else
    /// handed back to be sent or counted lost now.
    pub fn hold_until_joined(&self, msg: Message) -> Option<Message> {
        if self.joined.load(Ordering::Acquire) {
            return Some(msg);
        }
        let mut early = self.early.lock();
        if self.joined.load(Ordering::Relaxed) {
            return Some(msg);
        }
        if early.len() < EARLY_EVENTS {
            early.push(msg);
        } else if self.count_lost(1).is_power_of_two() {
            tracing::warn!(topic = %msg.topic, "an event was lost: {EARLY_EVENTS} are already waiting for this broker to join");
        }
        None
    }

    /// The link to the parent is up: `send` what was held, in order, once; later events go
    /// straight up. Nothing published meanwhile can pass what was held.
    pub fn joined(&self, mut send: impl FnMut(Message)) {
        let mut early = self.early.lock();
        if self.joined.load(Ordering::Relaxed) {
            return;
        }
        for msg in early.drain(..) {
            send(msg);
        }
        self.joined.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn events_published_before_joining_go_up_in_order_when_the_parent_is_reached() {
        let order = EventOrder::default();
        let ev = |i: usize| Message::event(format!("test.{i}"), Bytes::new());
        for i in 0..EARLY_EVENTS + 2 {
            assert!(order.hold_until_joined(ev(i)).is_none(), "held before joining");
        }
        assert_eq!(order.lost(), 2, "beyond {EARLY_EVENTS} held, events are lost and counted");
        let mut sent = Vec::new();
        order.joined(|m| sent.push(m.topic));
        assert_eq!(sent, (0..EARLY_EVENTS).map(|i| format!("test.{i}")).collect::<Vec<_>>());
        // Joined: later events go straight up, and a second `joined` (a rejoin) sends nothing.
        assert_eq!(order.hold_until_joined(ev(9)).map(|m| m.topic), Some("test.9".to_string()));
        order.joined(|_| panic!("nothing is held after joining"));
    }

    fn req(nodeid: u32, flags: Flags) -> Message {
        let mut m = Message::request("kvs.get", Bytes::new());
        m.nodeid = nodeid;
        m.flags = flags;
        m
    }

    fn place(rank: u32) -> Place {
        Place { topology: Topology::new(rank, 16, 2).unwrap(), instance: true }
    }

    #[test]
    fn nodeid_goes_down_into_the_subtree_and_up_otherwise() {
        // 1's children are 3 and 4; 7 is under 3.
        let at1 = place(1);
        assert_eq!(
            decide(&at1, &req(7, Flags::default()), || false),
            Way::Link { peer: 3, nodeid: 7, clear_upstream: false }
        );
        assert_eq!(
            decide(&at1, &req(2, Flags::default()), || false),
            Way::Link { peer: 0, nodeid: 2, clear_upstream: false }
        );
        assert_eq!(decide(&at1, &req(1, Flags::default()), || false), Way::Here);
        assert!(
            matches!(decide(&at1, &req(16, Flags::default()), || false), Way::Fail(Errno::EHOSTUNREACH, t) if t == "no rank 16: the instance has 16 brokers")
        );
    }

    #[test]
    fn any_is_served_by_the_nearest_owner_on_the_way_to_the_root() {
        assert_eq!(decide(&place(5), &req(NODEID_ANY, Flags::default()), || true), Way::Here);
        assert_eq!(
            decide(&place(5), &req(NODEID_ANY, Flags::default()), || false),
            Way::Link { peer: 2, nodeid: NODEID_ANY, clear_upstream: false }
        );
        assert!(matches!(decide(&place(0), &req(NODEID_ANY, Flags::default()), || false), Way::Fail(Errno::ENOSYS, _)));
    }

    #[test]
    fn upstream_skips_this_broker() {
        // The UPSTREAM flag does not ask whether a local owner exists.
        assert_eq!(
            decide(&place(5), &req(NODEID_ANY, Flags::UPSTREAM), || panic!("asked")),
            Way::Link { peer: 2, nodeid: NODEID_ANY, clear_upstream: true }
        );
        assert_eq!(
            decide(&place(5), &req(NODEID_UPSTREAM, Flags::default()), || false),
            Way::Link { peer: 2, nodeid: 2, clear_upstream: false }
        );
        assert!(matches!(
            decide(&place(0), &req(NODEID_UPSTREAM, Flags::default()), || false),
            Way::Fail(Errno::EHOSTUNREACH, _)
        ));
        assert!(matches!(decide(&place(5), &req(5, Flags::UPSTREAM), || false), Way::Fail(Errno::EHOSTUNREACH, _)));
    }

    #[test]
    fn a_standalone_broker_keeps_rfc1s_answers() {
        let p = Place::STANDALONE;
        assert!(
            matches!(decide(&p, &req(3, Flags::default()), || false), Way::Fail(Errno::EHOSTUNREACH, t) if t.contains("has no overlay"))
        );
        assert!(
            matches!(decide(&p, &req(0, Flags::UPSTREAM), || false), Way::Fail(Errno::EHOSTUNREACH, t) if t.contains("no upstream broker"))
        );
    }

    #[test]
    fn a_gap_in_event_numbers_is_counted() {
        let order = EventOrder::default();
        order.arrived(1);
        order.arrived(2);
        order.arrived(5);
        assert_eq!(order.lost(), 2);
        order.arrived(1); // rank 0 restarted: a new start, not a loss
        order.arrived(2);
        assert_eq!(order.lost(), 2);
    }
}
