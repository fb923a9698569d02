//! The local socket (RFC 1 §6): binding it, and the accept task that admits each client.
//! Admission checks who connected (`SO_PEERCRED`), registers the connection with the router
//! and starts its two tasks (`connection`). A client that is not served is told why in a
//! `refused` control message (EPERM for a guest where guests are not allowed, EAGAIN when the
//! broker is at its connection limit or out of file descriptors) and closed; none is dropped
//! without a word.
//!
//! This file does not read frames or route messages.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::{encode_frame, uri, Cred, Errno, FrameReader, Message, ROLE_OWNER, ROLE_USER};
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::connection::Connection;
use crate::router::{ConnOut, OutputBudget, Router, Sink};

/// Bytes a client may leave unread before it is disconnected.
const MAX_UNREAD: usize = 64 << 20;
/// Sets a limit on connections served at once (RFC 1 §6.4); without it, the limit is the
/// broker's file descriptors.
const MAX_CLIENTS_ENV: &str = "SWITCHBOARD_MAX_CLIENTS";
/// How long the accept task rests after an accept error it cannot answer.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub path: PathBuf,
    pub allow_guests: bool,
    pub max_frame: usize,
    /// Unsent output to all clients together, in bytes, before the largest is disconnected.
    pub max_output: usize,
}

/// A listening socket and its accept task.
pub struct Listener {
    path: PathBuf,
    stop: watch::Sender<bool>,
    /// Closed by the accept task when it ends (and drops the socket).
    done: std::sync::mpsc::Receiver<()>,
    stopped: bool,
}

impl Listener {
    /// Bind `opts.path` and accept on `runtime`.
    pub fn start(runtime: &Handle, router: Arc<Router>, opts: ListenOptions) -> std::io::Result<Listener> {
        let socket = bind(&opts.path, opts.allow_guests)?;
        socket.set_nonblocking(true)?;
        let socket = {
            let _entered = runtime.enter();
            UnixListener::from_std(socket)?
        };
        let admission = Admission {
            router,
            budget: OutputBudget::new(opts.max_output),
            live: Arc::default(),
            max_clients: max_clients(),
            owner: rustix::process::getuid().as_raw(),
            opts: opts.clone(),
        };
        tracing::debug!(max_clients = ?admission.max_clients, "accepting connections");
        let (stop, stopping) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            accept_loop(socket, admission, stopping).await;
            drop(done_tx);
        });
        Ok(Listener { path: opts.path, stop, done, stopped: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting and remove the socket file. Connected clients stay connected.
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let _ = self.stop.send(true);
        // The accept task drops the socket as it ends; if the runtime is gone, so is it.
        let _ = self.done.recv_timeout(Duration::from_secs(5));
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bind the socket, refusing to steal one a live broker listens on and replacing a stale one.
fn bind(path: &Path, allow_guests: bool) -> std::io::Result<std::os::unix::net::UnixListener> {
    // The directory is the first gate: owner only, unless guests may connect.
    let mode = if allow_guests { 0o711 } else { 0o700 };
    match path.parent() {
        // The default runtime directory must be ours and private.
        Some(dir) if dir == uri::runtime_dir() => {
            uri::private_dir(dir, mode)
                .map_err(|e| std::io::Error::new(e.kind(), format!("runtime directory {}: {e}", dir.display())))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        _ => {}
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another broker is already listening at {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    // Anyone who can reach the file may connect; SO_PEERCRED decides what they may do.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// The limit `SWITCHBOARD_MAX_CLIENTS` sets, if any.
fn max_clients() -> Option<usize> {
    let value = std::env::var(MAX_CLIENTS_ENV).ok()?;
    match value.trim().parse::<usize>() {
        Ok(n) => Some(n.max(1)),
        Err(_) => {
            tracing::warn!("{MAX_CLIENTS_ENV}={value:?} is not a number of connections; no limit is set");
            None
        }
    }
}

/// One connection's place in the count of live connections; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(live: &Arc<AtomicUsize>, max: Option<usize>) -> Option<Slot> {
        let max = max.unwrap_or(usize::MAX);
        let taken = live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        taken.ok().map(|_| Slot(live.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the accept task knows to admit a client.
struct Admission {
    router: Arc<Router>,
    budget: Arc<OutputBudget>,
    live: Arc<AtomicUsize>,
    max_clients: Option<usize>,
    owner: u32,
    opts: ListenOptions,
}

async fn accept_loop(socket: UnixListener, admission: Admission, mut stopping: watch::Receiver<bool>) {
    let mut spare = SpareFd::open();
    loop {
        let accepted = tokio::select! {
            _ = stopping.changed() => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => admission.admit(stream),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                tracing::warn!("cannot accept a connection: {e}; refusing it");
                spare.release();
                let accepted = tokio::select! {
                    _ = stopping.changed() => return,
                    accepted = socket.accept() => accepted,
                };
                if let Ok((stream, _)) = accepted {
                    refuse(
                        &stream,
                        Errno::EAGAIN,
                        format!("the broker is out of file descriptors ({e}); try again later"),
                    );
                }
                spare = SpareFd::open();
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A descriptor held back for the moment the broker has no other: it is let go to accept
/// the client that found the broker out of descriptors, and tell it so.
struct SpareFd(Option<std::fs::File>);

impl SpareFd {
    fn open() -> SpareFd {
        SpareFd(std::fs::File::open("/dev/null").ok())
    }

    fn release(&mut self) {
        self.0 = None;
    }
}

impl Admission {
    /// Check who connected, register the connection and start its tasks, or refuse it.
    fn admit(&self, stream: UnixStream) {
        let (pid, uid) = match stream.peer_cred() {
            Ok(c) => (c.pid().unwrap_or(0), c.uid()),
            Err(e) => {
                tracing::warn!("cannot tell who connected: {e}; refused the connection");
                refuse(&stream, Errno::EPROTO, format!("the broker cannot tell who you are: {e}"));
                return;
            }
        };
        let Some(slot) = Slot::take(&self.live, self.max_clients) else {
            let max = self.max_clients.unwrap_or(usize::MAX);
            tracing::warn!(pid, uid, max, "refused a connection: the broker already serves as many as it may");
            let why = format!(
                "too many connections: this broker serves at most {max} at once ({MAX_CLIENTS_ENV}); try again later"
            );
            refuse(&stream, Errno::EAGAIN, why);
            return;
        };
        let cred = if uid == self.owner {
            Cred { userid: uid, rolemask: ROLE_OWNER | ROLE_USER }
        } else if self.opts.allow_guests {
            Cred { userid: uid, rolemask: ROLE_USER }
        } else {
            tracing::info!(uid, pid, "refused a guest connection: guests are not allowed");
            let owner = self.owner;
            refuse(
                &stream,
                Errno::EPERM,
                format!("uid {uid} is not the instance owner (uid {owner}) and this broker does not allow guests"),
            );
            return;
        };
        let label = format!("client pid {pid} uid {uid}");
        let stream = Arc::new(stream);
        let out = ConnOut::new(stream.clone(), MAX_UNREAD, label.clone(), self.budget.clone());
        let ep = self.router.add_endpoint(Sink::Conn(out.clone()), cred, label, None);
        tracing::debug!(id = ep.id, pid, uid, "client connected");
        let conn = Connection {
            router: self.router.clone(),
            ep,
            stream,
            out: out.clone(),
            reader: FrameReader::new(self.opts.max_frame),
            partial: bytes::BytesMut::new(),
            used: Vec::new(),
        };
        tokio::spawn(out.write_task());
        tokio::spawn(async move {
            conn.serve().await;
            drop(slot);
        });
    }
}

/// Tell a client why it is not served, then close its connection. A new socket's buffer
/// takes a refusal whole; the send never waits on the client (and does not depend on what
/// the runtime believes of the new socket's readiness).
fn refuse(stream: &UnixStream, errnum: Errno, text: String) {
    let mut refusal = Message::control("refused", bytes::Bytes::new());
    refusal.errnum = errnum.0;
    refusal.errstr = Some(text);
    let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
    let _ = rustix::net::send(stream, &encode_frame(&refusal), flags);
    let _ = rustix::net::shutdown(stream, rustix::net::Shutdown::Both);
}
