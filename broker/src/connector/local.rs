//! The local connector: a Unix-domain socket with length-prefixed frames (RFC 1 §6). One
//! reader thread per connection decodes frames and calls the router directly; replies go
//! out through the connection's `ConnOut`. A malformed frame is answered with EPROTO; an
//! oversized one closes the connection. On disconnect, every service the client used gets
//! a `disconnect` request so its module can drop the client's state.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use switchboard_module_api::proto::{
    decode_frame, encode_frame, Cred, Flags, FrameError, FrameReader, MsgType, ROLE_OWNER, ROLE_USER,
};
use switchboard_module_api::{uri, Errno, Message};

use super::peercred::peer_cred;
use crate::router::{self, ConnOut, Endpoint, OutputBudget, Router, Sink};

/// Bytes a client may leave unread before it is disconnected.
const MAX_UNREAD: usize = 64 << 20;
/// A connection's reader thread decodes and routes; it needs little stack.
const READER_STACK: usize = 256 << 10;
/// Memory mappings a connection costs: two threads, each with a stack and a signal stack,
/// each of those with a guard page.
const MAPS_PER_CONNECTION: usize = 8;
/// Mappings left for everything else (modules, the WASM engine, the allocator).
const MAPS_RESERVED: usize = 8192;
/// Overrides the computed connection limit (RFC 1 §6.4).
const MAX_CLIENTS_ENV: &str = "SWITCHBOARD_MAX_CLIENTS";

/// How many connections this broker serves at once. Past the kernel's limit on memory
/// mappings an allocation fails and the process aborts, so the limit stays well below it.
fn max_clients() -> usize {
    if let Some(n) = std::env::var(MAX_CLIENTS_ENV).ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        return n.max(1);
    }
    let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(65530);
    (maps.saturating_sub(MAPS_RESERVED) / MAPS_PER_CONNECTION).max(64)
}

/// One connection's place in the count of live connections; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(live: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        let taken = live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        taken.ok().map(|_| Slot(live.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the accept loop shares with every connection it admits.
struct Admission {
    budget: Arc<OutputBudget>,
    live: Arc<AtomicUsize>,
    max_clients: usize,
}

#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub path: PathBuf,
    pub allow_guests: bool,
    pub max_frame: usize,
    /// Unsent output to all clients together, in bytes, before the largest is disconnected.
    pub max_output: usize,
}

/// A listening socket and its accept thread.
pub struct Listener {
    socket: Arc<UnixListener>,
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    pub fn start(router: Arc<Router>, opts: ListenOptions) -> std::io::Result<Listener> {
        let socket = Arc::new(bind(&opts.path, opts.allow_guests)?);
        let stopping = Arc::new(AtomicBool::new(false));
        let path = opts.path.clone();
        let (s, stop) = (socket.clone(), stopping.clone());
        // SAFETY: getuid cannot fail.
        let owner = unsafe { libc::getuid() };
        let admission =
            Admission { budget: OutputBudget::new(opts.max_output), live: Arc::default(), max_clients: max_clients() };
        tracing::debug!(max_clients = admission.max_clients, "accepting connections");
        let thread = std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(&s, &router, &opts, &admission, owner, &stop))?;
        Ok(Listener { socket, path, stopping, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting and remove the socket file. Connected clients stay connected.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutting down our own listening socket wakes the blocked accept().
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// Bind the socket, refusing to steal one a live broker listens on and replacing a stale one.
fn bind(path: &Path, allow_guests: bool) -> std::io::Result<UnixListener> {
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
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another broker is already listening at {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    // Anyone who can reach the file may connect; SO_PEERCRED decides what they may do.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

fn accept_loop(
    socket: &UnixListener,
    router: &Arc<Router>,
    opts: &ListenOptions,
    admission: &Admission,
    owner: u32,
    stopping: &AtomicBool,
) {
    loop {
        let stream = match socket.accept() {
            Ok((s, _)) => s,
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        if let Err(e) = admit(router, &stream, opts, admission, owner) {
            tracing::warn!("could not serve a new connection: {e}; told the client and closed it");
            refuse(&stream, Errno::EAGAIN, format!("the broker could not serve this connection: {e}"));
        }
    }
}

/// Tell a client why it is not served, then close its connection.
fn refuse(stream: &UnixStream, errnum: Errno, text: String) {
    let mut refusal = Message::control("refused", bytes::Bytes::new());
    refusal.errnum = errnum.0;
    refusal.errstr = Some(text);
    // A refusal must not block the accept loop on a client that does not read.
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_millis(100)));
    let _ = std::io::Write::write_all(&mut &*stream, &encode_frame(&refusal));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Check who connected, register the connection and start its reader. On failure nothing
/// is left behind: no endpoint, no writer thread.
fn admit(
    router: &Arc<Router>,
    stream: &UnixStream,
    opts: &ListenOptions,
    admission: &Admission,
    owner: u32,
) -> std::io::Result<()> {
    let (pid, uid) = peer_cred(stream)?;
    let Some(slot) = Slot::take(&admission.live, admission.max_clients) else {
        let max = admission.max_clients;
        tracing::warn!(pid, uid, max, "refused a connection: the broker already serves as many as it may");
        let why = format!(
            "too many connections: this broker serves at most {max} at once ({MAX_CLIENTS_ENV}, or (vm.max_map_count - {MAPS_RESERVED}) / {MAPS_PER_CONNECTION}); try again later"
        );
        refuse(stream, Errno::EAGAIN, why);
        return Ok(());
    };
    let cred = if uid == owner {
        Cred { userid: uid, rolemask: ROLE_OWNER | ROLE_USER }
    } else if opts.allow_guests {
        Cred { userid: uid, rolemask: ROLE_USER }
    } else {
        tracing::info!(uid, pid, "refused a guest connection: guests are not allowed");
        refuse(
            stream,
            Errno::EPERM,
            format!("uid {uid} is not the instance owner (uid {owner}) and this broker does not allow guests"),
        );
        return Ok(());
    };
    let label = format!("client pid {pid} uid {uid}");
    let out = ConnOut::start(stream.try_clone()?, MAX_UNREAD, label.clone(), admission.budget.clone())?;
    let ep = router.add_endpoint(Sink::Conn(out.clone()), cred, label, None);
    let (router2, ep2, out2, max_frame) = (router.clone(), ep.clone(), out.clone(), opts.max_frame);
    let reader = stream.try_clone().and_then(|stream| {
        std::thread::Builder::new().name("conn-reader".into()).stack_size(READER_STACK).spawn(move || {
            serve(&router2, &ep2, stream, &out2, max_frame);
            drop(slot);
        })
    });
    if let Err(e) = reader {
        // Undo: the endpoint goes (it was handed nothing yet), the client is told, and the
        // writer thread ends with the connection.
        tracing::warn!(pid, uid, "could not start a reader for a new connection: {e}; refused it");
        router.retire(&ep, "refused");
        refuse(stream, Errno::EAGAIN, format!("the broker could not serve this connection: {e}"));
        out.close();
    } else {
        tracing::debug!(id = ep.id, pid, uid, "client connected");
    }
    Ok(())
}

/// A connection's reader: frames in, messages routed, until end of file.
fn serve(router: &Router, ep: &Endpoint, mut stream: UnixStream, out: &Arc<ConnOut>, max_frame: usize) {
    let reader = FrameReader::new(max_frame);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Services this client sent requests to: each gets `disconnect` when it leaves.
    let mut used: Vec<String> = Vec::new();
    'conn: loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        let spare = buf.spare_capacity_mut();
        // SAFETY: read() only writes initialised bytes.
        let spare = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        let n = match stream.read(spare) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // SAFETY: `n` bytes were just written.
        unsafe { buf.set_len(buf.len() + n) };
        router::hold();
        loop {
            match reader.next_frame(&mut buf) {
                Ok(None) => break,
                Ok(Some(body)) => match decode_frame(body) {
                    Ok(mut msg) => {
                        msg.cred = ep.cred;
                        let new_service = (msg.kind == MsgType::Request && !used.iter().any(|s| s == msg.service()))
                            .then(|| msg.service().to_string());
                        if let (Some(_), Some(s)) = (router.route(ep, msg), new_service) {
                            used.push(s);
                        }
                    }
                    Err(e) => reject(ep, out, &e),
                },
                Err(e) => {
                    reject(ep, out, &e);
                    router::flush();
                    out.close();
                    break 'conn;
                }
            }
        }
        router::flush();
    }
    tracing::debug!(id = ep.id, "client disconnected");
    out.close();
    router.retire(ep, "disconnected");
    for service in used {
        let mut bye = Message::request(format!("{service}.disconnect"), bytes::Bytes::new());
        bye.flags = Flags::NO_RESPONSE;
        bye.cred = ep.cred;
        router.route(ep, bye);
    }
}

/// Tell the client its frame was malformed. The broker cannot know the request's matchtag,
/// so the error response carries matchtag 0 (RFC 1 §6.3).
fn reject(ep: &Endpoint, out: &Arc<ConnOut>, e: &FrameError) {
    tracing::warn!(client = %ep.label, "malformed frame: {e}");
    let mut err =
        Message::request("", bytes::Bytes::new()).error_response(Errno::EPROTO, format!("malformed frame: {e}"));
    err.route.clear();
    out.enqueue(&err);
}
