//! The supervisor's command handling, in-process: a real router and owner task, and modules
//! from an in-memory loader whose threads exit when a test tells them to. Each test races a
//! module's exit against an operation (a list, the reclaim of a dead instance, a reload, a
//! restart): the orders of events that deadlocked when the state was behind locks. A test
//! that deadlocks fails on its time limit instead of hanging.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchboard_loaders::{
    ExitStatus, LoadError, LoadRequest, LoadedModule, Loader, ModuleInfo, ModuleKind, ModuleLink, ModuleState,
    Registry, RunningModule,
};
use switchboard_protocol::{Flags, Message, MsgType, ROLE_OWNER, ROLE_USER, SHUTDOWN};

use super::{ModuleSpec, RestartPolicy, Supervisor};
use crate::router::{Mailbox, Router, Sink};

/// How long any one test may take before it counts as a deadlock.
const LIMIT: Duration = Duration::from_secs(20);

/// Modules from files that start `#fake`: a thread that runs until a request tells it to
/// `NAME.exit` or `NAME.crash`, or the broker asks it to stop. Instances are numbered as
/// they start; a request whose payload is a number is for that instance only.
struct FakeLoader {
    reclaimed: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

struct FakeLoaded {
    info: ModuleInfo,
    reclaimed: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    /// The file says `fail-at-start`: the module ends in `failed` before it runs.
    fails_at_start: bool,
}

struct FakeRunning {
    thread: Option<std::thread::JoinHandle<()>>,
    reclaimed: Arc<AtomicUsize>,
}

impl Loader for FakeLoader {
    fn kind(&self) -> ModuleKind {
        ModuleKind::Native
    }

    fn recognizes(&self, _path: &Path, head: &[u8]) -> bool {
        head.starts_with(b"#fake")
    }

    fn load(&self, request: &LoadRequest) -> Result<Box<dyn LoadedModule>, LoadError> {
        let default = request.path.file_stem().and_then(|s| s.to_str()).unwrap_or("fake").to_string();
        let info = ModuleInfo::new(request, default, ModuleKind::Native, "fake".into(), 5)?;
        let fails_at_start = std::fs::read_to_string(&request.path).is_ok_and(|t| t.contains("fail-at-start"));
        Ok(Box::new(FakeLoaded {
            info,
            reclaimed: self.reclaimed.clone(),
            started: self.started.clone(),
            fails_at_start,
        }))
    }
}

impl LoadedModule for FakeLoaded {
    fn info(&self) -> &ModuleInfo {
        &self.info
    }

    fn run(self: Box<Self>, link: ModuleLink) -> Result<Box<dyn RunningModule>, LoadError> {
        let serial = self.started.fetch_add(1, Ordering::SeqCst);
        let fails = self.fails_at_start;
        let thread = std::thread::spawn(move || {
            if fails {
                link.port.exited(ExitStatus::Failed("failed as told while starting".into()));
            } else {
                fake_main(link, serial);
            }
        });
        Ok(Box::new(FakeRunning { thread: Some(thread), reclaimed: self.reclaimed }))
    }
}

impl RunningModule for FakeRunning {
    fn terminate(&self, _grace: Duration) -> bool {
        false
    }

    fn wait(mut self: Box<Self>) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.reclaimed.fetch_add(1, Ordering::SeqCst);
    }
}

fn fake_main(link: ModuleLink, serial: usize) {
    link.port.set_state(ModuleState::Running);
    let status = loop {
        let Ok(msg) = link.inbox.recv(None) else { break ExitStatus::Exited };
        if msg.kind == MsgType::Control && msg.topic == SHUTDOWN {
            break ExitStatus::Exited;
        }
        if !msg.payload.is_empty() && msg.payload != serial.to_string().as_bytes() {
            continue;
        }
        match msg.topic.rsplit('.').next() {
            Some("exit") => break ExitStatus::Exited,
            Some("crash") => break ExitStatus::Failed("crashed as told".into()),
            _ => {}
        }
    };
    link.port.exited(status);
}

/// A router, a supervisor over the fake loader, and a client endpoint to send from.
struct Bench {
    sup: Supervisor,
    router: Arc<Router>,
    client: Arc<crate::router::Endpoint>,
    /// What reaches the client endpoint (the events it subscribed to).
    client_box: Arc<Mailbox>,
    reclaimed: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let (reclaimed, started) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut registry = Registry::new(tokio::runtime::Handle::current());
        registry.register(Box::new(FakeLoader { reclaimed: reclaimed.clone(), started: started.clone() }));
        let router = Arc::new(Router::new());
        let sup = Supervisor::new(router.clone(), registry, Duration::from_secs(2));
        let cred = switchboard_protocol::Cred { userid: 0, rolemask: ROLE_OWNER | ROLE_USER };
        let client_box = Arc::new(Mailbox::default());
        let client = router.add_endpoint(Sink::Module(client_box.clone()), cred, "test".into(), None);
        Bench { sup, router, client, client_box, reclaimed, started, dir: tempfile::tempdir().expect("temp dir") }
    }

    fn file(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, "#fake\n").expect("write a fake module");
        path
    }

    fn spec(&self, name: &str, restart: RestartPolicy) -> ModuleSpec {
        let request = LoadRequest { path: self.file(name), name: Some(name.into()), ..Default::default() };
        ModuleSpec { request, restart, ..Default::default() }
    }

    async fn load(&self, name: &str) {
        self.sup.load(self.spec(name, RestartPolicy::Never)).await.expect("load");
    }

    /// Tell module `name` to end: `exit` or `crash`.
    fn tell(&self, name: &str, how: &str) {
        self.tell_instance(name, how, None);
    }

    /// Tell instance `serial` of `name` (None: whichever gets it) to end.
    fn tell_instance(&self, name: &str, how: &str, serial: Option<usize>) {
        let payload = serial.map(|n| n.to_string()).unwrap_or_default();
        let mut msg = Message::request(format!("{name}.{how}"), bytes::Bytes::from(payload));
        msg.flags = Flags::NO_RESPONSE;
        msg.cred = self.client.cred;
        self.router.route(&self.client, msg);
    }

    async fn state(&self, name: &str) -> Option<String> {
        self.sup.list().await.into_iter().find(|m| m.name == name).map(|m| m.state)
    }

    async fn until(&self, what: &str, mut done: impl AsyncFnMut() -> bool) {
        for _ in 0..2000 {
            if done().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what}: not within 10 s; list: {:?}", self.sup.list().await);
    }
}

async fn within<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(LIMIT, test).await.expect("the supervisor deadlocked (or is far too slow)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_exiting_while_they_are_listed_are_all_seen_ended() {
    within(async {
        let b = Bench::new();
        let names: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        for n in &names {
            b.load(n).await;
        }
        let lister = {
            let sup = b.sup.clone();
            tokio::spawn(async move {
                for _ in 0..300 {
                    assert_eq!(sup.list().await.len(), 20, "a module fell out of the list while exiting");
                }
            })
        };
        for (i, n) in names.iter().enumerate() {
            b.tell(n, if i % 2 == 0 { "exit" } else { "crash" });
        }
        lister.await.expect("the lister");
        for (i, n) in names.iter().enumerate() {
            let want = if i % 2 == 0 { "exited" } else { "failed" };
            b.until(want, async || b.state(n).await.as_deref() == Some(want)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_exiting_while_a_new_load_reclaims_it_is_reclaimed_once() {
    within(async {
        let b = Bench::new();
        const ROUNDS: usize = 30;
        b.load("a").await;
        for _ in 0..ROUNDS {
            // The load races the exit: it finds the old instance dead or still ending.
            b.tell("a", "crash");
            loop {
                match b.sup.load(b.spec("a", RestartPolicy::Never)).await {
                    Ok(_) => break,
                    // Still running when the load looked: the name is taken; try again.
                    Err(e) if e.errnum == switchboard_protocol::Errno::EEXIST => tokio::task::yield_now().await,
                    Err(e) => panic!("load: {e}"),
                }
            }
        }
        assert_eq!(b.sup.list().await.len(), 1);
        assert_eq!(b.state("a").await.as_deref(), Some("running"));
        b.until("every old instance reclaimed", async || b.reclaimed.load(Ordering::SeqCst) == ROUNDS).await;
        b.sup.remove("a", None, false).await.expect("remove");
        b.until("the last one reclaimed", async || b.reclaimed.load(Ordering::SeqCst) == ROUNDS + 1).await;
        assert!(b.sup.list().await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_exiting_while_it_is_reloaded_leaves_one_running_instance() {
    within(async {
        let b = Bench::new();
        b.load("a").await;
        for round in 0..30 {
            // For the instance running now: once the reload took the service, the request
            // reaches the new one, which must not take it as meant for itself.
            let current = b.started.load(Ordering::SeqCst) - 1;
            let reload = {
                let sup = b.sup.clone();
                tokio::spawn(async move { sup.reload("a", None).await })
            };
            if round % 3 != 2 {
                b.tell_instance("a", if round % 3 == 0 { "crash" } else { "exit" }, Some(current));
            }
            reload.await.expect("the reload task").expect("reload");
            let list = b.sup.list().await;
            assert_eq!(list.len(), 1, "{list:?}");
            assert_eq!(list[0].state, "running", "round {round}: {list:?}");
        }
        b.sup.remove_all().await;
        b.until("every instance reclaimed", async || b.reclaimed.load(Ordering::SeqCst) == 31).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_cancelled_by_a_remove_or_reload_during_its_delay_and_gives_up_after_its_max() {
    within(async {
        let b = Bench::new();
        let policy = |delay_ms| RestartPolicy::OnFailure {
            max: 3,
            delay: Duration::from_millis(delay_ms),
            max_delay: Duration::from_millis(delay_ms),
        };
        // Removed during the delay: the restart does not bring it back.
        b.sup.load(b.spec("r", policy(200))).await.expect("load r");
        b.tell("r", "crash");
        b.until("r failed", async || b.state("r").await.as_deref() == Some("failed")).await;
        b.sup.remove("r", None, false).await.expect("remove r");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(b.state("r").await, None, "a removed module was restarted");

        // Reloaded during the delay: the reload's instance stays, with no second one.
        b.sup.load(b.spec("s", policy(200))).await.expect("load s");
        b.tell("s", "crash");
        b.until("s failed", async || b.state("s").await.as_deref() == Some("failed")).await;
        b.sup.reload("s", None).await.expect("reload s");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let list = b.sup.list().await;
        assert_eq!(list.iter().filter(|m| m.name == "s").count(), 1, "{list:?}");
        assert_eq!(b.state("s").await.as_deref(), Some("running"));
        assert_eq!(list.iter().find(|m| m.name == "s").map(|m| m.restarts), Some(0));

        // Crashing as soon as it is restarted, every time: restarted 3 times, then given up.
        b.sup.load(b.spec("t", policy(10))).await.expect("load t");
        for restarts in 0..=3u32 {
            b.until("t restarted", async || {
                b.sup.list().await.iter().any(|m| m.name == "t" && m.restarts == restarts && m.state == "running")
            })
            .await;
            b.tell("t", "crash");
        }
        b.until("t given up", async || b.state("t").await.as_deref() == Some("failed")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = b.sup.list().await.into_iter().find(|m| m.name == "t").expect("t listed");
        assert_eq!((t.state.as_str(), t.restarts), ("failed", 3), "{t:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_one_name_wait_in_line_or_are_told_it_is_busy() {
    within(async {
        let b = Bench::new();
        b.load("a").await;
        // Two reloads at once: one works, the other is EBUSY; never both, never neither.
        let (x, y) = tokio::join!(b.sup.reload("a", None), b.sup.reload("a", None));
        let busy = [&x, &y]
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.errnum == switchboard_protocol::Errno::EBUSY))
            .count();
        assert!(x.is_ok() || y.is_ok(), "{x:?} {y:?}");
        assert!(busy <= 1, "{x:?} {y:?}");
        // Two applies at once wait in line: both complete.
        let want = vec![b.spec("a", RestartPolicy::Never), b.spec("c", RestartPolicy::Never)];
        let (p, q) = tokio::join!(b.sup.apply(&want, None, false), b.sup.apply(&want, None, false));
        assert!(p.is_ok() && q.is_ok());
        let names: Vec<String> = b.sup.list().await.into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["a", "c"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_gives_up_waiting_for_a_name_leaves_the_holder_holding_it() {
    within(async {
        let b = Bench::new();
        let held = b.sup.claim("a", false).await.expect("the first claim");
        // One waits in line and gives up; one is dropped before its claim was even answered.
        assert!(tokio::time::timeout(Duration::from_millis(20), b.sup.claim("a", true)).await.is_err());
        drop(b.sup.claim("a", true));
        let refused = b.sup.claim("a", false).await.err().map(|e| e.errnum);
        assert_eq!(refused, Some(switchboard_protocol::Errno::EBUSY), "the name was let go by a waiter");
        // The one in line behind the holder gets it when the holder is done, not before.
        let next = {
            let sup = b.sup.clone();
            tokio::spawn(async move { sup.claim("a", true).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!next.is_finished(), "the waiter got the name while it was held");
        drop(held);
        next.await.expect("the waiter task").expect("its turn");
        // ...and it let go in turn: the name is free.
        drop(b.sup.claim("a", false).await.expect("free again"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_failing_while_it_starts_fails_its_load_is_forgotten_and_announced_failed() {
    within(async {
        let b = Bench::new();
        b.router.subscribe(b.client.id, "module.lifecycle.").expect("subscribe");
        for i in 0..20 {
            let name = format!("f{i}");
            let path = b.dir.path().join(&name);
            std::fs::write(&path, "#fake\nfail-at-start\n").expect("write");
            let request = LoadRequest { path, name: Some(name.clone()), ..Default::default() };
            let err = b.sup.load(ModuleSpec { request, ..Default::default() }).await.expect_err("it fails to start");
            assert!(err.text.contains("failed to start"), "{}", err.text);
            // Announced whatever the order of its exit and the load's giving up on it.
            let inbox = b.client_box.inbox();
            let topic = format!("module.lifecycle.{name}");
            let event = tokio::task::spawn_blocking(move || {
                let until = std::time::Instant::now() + Duration::from_secs(5);
                while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                    let Ok(msg) = inbox.recv(Some(left)) else { break };
                    if msg.topic == topic {
                        return Some(msg);
                    }
                }
                None
            })
            .await
            .expect("the reader");
            let event = event.unwrap_or_else(|| panic!("no lifecycle event for {name}"));
            let body: switchboard_protocol::mgmt::LifecycleEvent = event.decode().expect("a lifecycle event");
            assert_eq!(body.event, "failed", "{body:?}");
        }
        assert!(b.sup.list().await.is_empty(), "a module that failed to start stayed listed");
    })
    .await;
}
