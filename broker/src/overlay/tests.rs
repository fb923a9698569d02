//! The overlay in one process: routers joined by real overlay threads over real ZeroMQ CURVE
//! links on loopback, with mailboxes as clients. What the end-to-end tests show with broker
//! processes, shown here without them: a request crossing links both ways, events numbered at
//! rank 0, a hello refused for a size that differs, a lost link answering what crossed it, and
//! responses waiting, in order, for a link that is full.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_protocol::{mgmt::OverlayStatus, Errno, Flags, Message, MsgType};

use super::{Certificate, Overlay, OverlayConfig, Topology};
use crate::router::{broker_cred, Endpoint, Mailbox, Place, Router, Sink};

const WAIT: Duration = Duration::from_secs(20);

struct Node {
    router: Arc<Router>,
    overlay: Overlay,
    client: Arc<Endpoint>,
    mailbox: Arc<Mailbox>,
}

impl Node {
    /// Rank `rank` of `topology.size`, its parent listening at `connect`.
    fn start(topology: Topology, cert: &Certificate, connect: Option<String>) -> Node {
        Node::start_with(topology, cert, connect, super::LINK_HWM)
    }

    /// `start`, with links of high-water mark `hwm` (and as many link messages again allowed
    /// to wait for a full link, or 1,000 if that is more).
    fn start_with(topology: Topology, cert: &Certificate, connect: Option<String>, hwm: i32) -> Node {
        let router = Arc::new(Router::at(Place { topology, instance: true }));
        let has_children = topology.children().next().is_some();
        let config = OverlayConfig {
            topology,
            hosts: (0..topology.size).map(|r| format!("host{r}")).collect(),
            bind: has_children.then(|| "tcp://127.0.0.1:0".to_string()),
            connect,
            cert: cert.clone(),
            max_message: 1 << 20,
            hwm,
            hold: (hwm as usize).max(1000),
        };
        let overlay = Overlay::start(config, router.clone()).expect("start the overlay");
        let mailbox = Arc::new(Mailbox::default());
        let client = router.add_endpoint(Sink::Module(mailbox.clone()), broker_cred(), "test client".into(), None);
        Node { router, overlay, client, mailbox }
    }

    fn bound(&self) -> String {
        self.overlay.bound().expect("a bound address").to_string()
    }

    /// A request from this node's client to `topic` on rank `nodeid`, and its answer.
    fn ask(&self, nodeid: u32, topic: &str, tag: u32) -> Message {
        let mut req = Message::request(topic, Bytes::from_static(&[0x80]));
        req.nodeid = nodeid;
        req.matchtag = tag;
        req.cred = broker_cred();
        self.router.route(&self.client, req);
        self.mailbox.inbox().recv(Some(WAIT)).expect("an answer")
    }

    fn status(&self) -> OverlayStatus {
        self.ask(self.router.place().rank(), "overlay.status", 1).decode().expect("a status tree")
    }
}

fn until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Which rank answered an `overlay.status` (the root of the subtree it describes).
fn answered_by(m: &Message) -> u32 {
    m.decode::<OverlayStatus>().expect("a status tree").rank
}

#[test]
fn requests_cross_links_both_ways_and_events_are_numbered_at_rank_0() {
    let cert = Certificate::generate().expect("keys");
    let root = Node::start(Topology::new(0, 3, 2).unwrap(), &cert, None);
    let one = Node::start(Topology::new(1, 3, 2).unwrap(), &cert, Some(root.bound()));
    let two = Node::start(Topology::new(2, 3, 2).unwrap(), &cert, Some(root.bound()));
    assert!(until(|| root.status().children.iter().all(|c| c.state == "full")), "{:?}", root.status());
    assert_eq!(answered_by(&root.ask(2, "overlay.status", 1)), 2);
    assert_eq!(answered_by(&one.ask(2, "overlay.status", 2)), 2, "leaf to leaf, through rank 0");
    assert_eq!(answered_by(&two.ask(0, "overlay.status", 3)), 0);
    // An event from rank 2 is numbered by rank 0 and reaches rank 1's subscriber.
    one.router.subscribe(one.client.id, "t.").expect("subscribe");
    for _ in 0..3 {
        two.router.route(&two.client, Message::event("t.x", Bytes::from_static(&[0x80])));
    }
    let seqs: Vec<u32> = (0..3).map(|_| one.mailbox.inbox().recv(Some(WAIT)).expect("an event").seq).collect();
    assert_eq!(seqs.windows(2).filter(|w| w[1] == w[0] + 1).count(), 2, "{seqs:?}");
    assert_eq!(one.router.events_lost(), 0);
}

#[test]
fn a_child_of_another_size_is_refused_and_its_requests_get_ehostunreach() {
    let cert = Certificate::generate().expect("keys");
    let root = Node::start(Topology::new(0, 2, 2).unwrap(), &cert, None);
    let odd = Node::start(Topology::new(1, 3, 2).unwrap(), &cert, Some(root.bound()));
    let refused =
        until(|| root.status().children[0].reason.as_deref().is_some_and(|r| r.contains("its instance has size 3")));
    assert!(refused, "{:?}", root.status());
    let r = odd.ask(0, "overlay.status", 1);
    assert_eq!((r.kind, r.errnum), (MsgType::Response, Errno::EHOSTUNREACH.0));
    assert_eq!(r.errstr.as_deref(), Some("rank 0 is offline"));
}

#[test]
fn a_lost_link_answers_every_request_that_crossed_it() {
    let cert = Certificate::generate().expect("keys");
    let root = Node::start(Topology::new(0, 2, 2).unwrap(), &cert, None);
    let mut child = Node::start(Topology::new(1, 2, 2).unwrap(), &cert, Some(root.bound()));
    assert!(until(|| root.status().state == "full"));
    // A service on the child that never answers: its client endpoint owns it.
    child.router.add_services(child.client.id, &["sink".to_string()]).expect("service");
    for tag in 1..=10 {
        let mut req = Message::request("sink.x", Bytes::new());
        req.nodeid = 1;
        req.matchtag = tag;
        root.router.route(&root.client, req);
    }
    // The child's client holds all ten, then its broker's links close.
    for _ in 0..10 {
        let m = child.mailbox.inbox().recv(Some(WAIT)).expect("a request");
        assert_eq!(m.kind, MsgType::Request);
    }
    child.overlay.stop();
    for _ in 0..10 {
        let r = root.mailbox.inbox().recv(Some(WAIT)).expect("an answer");
        assert_eq!(r.errnum, Errno::EHOSTUNREACH.0, "{r:?}");
        assert!(r.errstr.as_deref().unwrap_or("").starts_with("rank 1 is lost"), "{r:?}");
        assert!(!r.flags.contains(Flags::STREAMING));
    }
}

#[test]
fn responses_that_find_their_link_full_wait_for_it_and_arrive_in_order() {
    const N: u32 = 200;
    let cert = Certificate::generate().expect("keys");
    // Links that hold 2 link messages each way, and up to 1,000 waiting: the kernel's socket
    // buffers then fill after a few MiB, and the 64 KiB answers below go one per link message.
    let root = Node::start_with(Topology::new(0, 2, 2).unwrap(), &cert, None, 2);
    let child = Node::start_with(Topology::new(1, 2, 2).unwrap(), &cert, Some(root.bound()), 2);
    assert!(until(|| root.status().state == "full"));
    root.router.add_services(root.client.id, &["slow".to_string()]).expect("service");
    for tag in 1..=N {
        let mut req = Message::request("slow.x", Bytes::new());
        req.nodeid = 0;
        req.matchtag = tag;
        child.router.route(&child.client, req);
    }
    let requests: Vec<Message> = (0..N).map(|_| root.mailbox.inbox().recv(Some(WAIT)).expect("a request")).collect();
    // The child's overlay thread stops reading: its link fills, and the answers must wait.
    let resume = child.overlay.pause();
    let mut body = vec![0xc4, 0x00, 0xff, 0xf0]; // msgpack bin 16 of 65,520 bytes
    body.resize(4 + 65_520, 7);
    let body = Bytes::from(body);
    for req in &requests {
        root.router.route(&root.client, req.response(body.clone()));
    }
    let links = root.router.full_links();
    let (waited, dropped) = (&links.waited, &links.dropped);
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(until(|| count(waited) + count(dropped) > 0), "the link never filled: the test shows nothing");
    drop(resume);
    let tags: Vec<u32> = (0..N)
        .map(|i| {
            let r = child.mailbox.inbox().recv(Some(WAIT)).unwrap_or_else(|e| {
                panic!("answer {i} of {N}: {e:?}; waited {}, dropped {}", count(waited), count(dropped))
            });
            assert_eq!((r.kind, r.errnum, r.payload.len()), (MsgType::Response, 0, body.len()));
            r.matchtag
        })
        .collect();
    assert_eq!(tags, (1..=N).collect::<Vec<_>>(), "in the order they were sent");
    assert_eq!(count(dropped), 0);
}
