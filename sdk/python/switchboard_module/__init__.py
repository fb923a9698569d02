"""Write Switchboard process modules in Python.

A process module is a child process of the broker. It finds its socket on the file
descriptor named by SWITCHBOARD_MODULE_FD, receives a `welcome`, answers `hello`, reports
`running`, serves requests until the broker sends `shutdown`, reports `finalizing` and exits.
Frames and headers are RFC 1; the handshake is RFC 5. This module is the whole SDK.
"""

import math
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback

import msgpack

__all__ = [
    "Module", "Request", "Error", "Raw",
    "EPERM", "ENOENT", "EIO", "EAGAIN", "EEXIST", "EINVAL", "EDEADLK", "ENOSYS", "ENODATA",
    "EPROTO", "ETIMEDOUT", "EHOSTUNREACH", "ECANCELED", "NODEID_ANY", "NODEID_UPSTREAM",
]

EPERM, ENOENT, EIO, EAGAIN, EEXIST, EINVAL, EDEADLK = 1, 2, 5, 11, 17, 22, 35
ENOSYS, ENODATA, EPROTO, ETIMEDOUT, EHOSTUNREACH, ECANCELED = 38, 61, 71, 110, 113, 125

REQUEST, RESPONSE, EVENT, CONTROL = 1, 2, 4, 8
NO_RESPONSE, STREAMING, UPSTREAM = 0x01, 0x02, 0x04
NODEID_ANY = 0xFFFFFFFF  # nodeid: wherever the service is (this broker first, then upstream)
NODEID_UPSTREAM = 0xFFFFFFFE  # nodeid: this broker's parent in the instance's tree (RFC 7)
ROLE_OWNER = 1
PROTOCOL_VERSION = 1
HANDSHAKE_PROTOCOL = 1
FD_ENV = "SWITCHBOARD_MODULE_FD"
MAX_FRAME = 16 << 20
RPC_TIMEOUT = 30.0  # seconds a blocking rpc waits for its response, unless told otherwise
_DEFAULT = object()


class Error(Exception):
    """An error response: an errno and a sentence saying what went wrong."""

    def __init__(self, errnum, text=""):
        super().__init__(f"errno {errnum}: {text}")
        self.errnum = errnum
        self.text = text


class Raw(bytes):
    """A handler's return value to send as the response payload verbatim (already msgpack)."""


class Message:
    """One message (RFC 1 section 2); `payload` is raw bytes."""

    __slots__ = ("type", "flags", "topic", "matchtag", "nodeid", "userid", "rolemask",
                 "errnum", "errstr", "seq", "route", "payload")

    def __init__(self, type, topic, payload=b"", flags=0, matchtag=0):
        self.type, self.topic, self.payload, self.flags, self.matchtag = type, topic, payload, flags, matchtag
        self.nodeid, self.userid, self.rolemask = NODEID_ANY, 0xFFFFFFFF, 0
        self.errnum, self.errstr, self.seq, self.route = 0, None, 0, []

    def encode(self):
        header = msgpack.packb([PROTOCOL_VERSION, self.type, self.flags, self.topic, self.matchtag,
                                self.nodeid, self.userid, self.rolemask, self.errnum, self.errstr,
                                self.seq, self.route], use_bin_type=True)
        return struct.pack(">II", 4 + len(header) + len(self.payload), len(header)) + header + self.payload

    @classmethod
    def decode(cls, body):
        (hlen,) = struct.unpack_from(">I", body)
        h = msgpack.unpackb(body[4:4 + hlen], raw=False)
        if not isinstance(h, list) or len(h) != 12 or h[0] != PROTOCOL_VERSION:
            raise Error(EPROTO, "malformed header")
        m = cls(h[1], h[3], bytes(body[4 + hlen:]), h[2], h[4])
        m.nodeid, m.userid, m.rolemask, m.errnum, m.errstr, m.seq, m.route = h[5:12]
        return m

    def response(self, payload=b""):
        r = Message(RESPONSE, self.topic, payload, self.flags & STREAMING, self.matchtag)
        r.route = list(self.route)
        return r


def pack(value):
    return msgpack.packb(value, use_bin_type=True)


def unpack(payload):
    return msgpack.unpackb(payload, raw=False) if payload else None


class Request:
    """A request as a handler sees it: the decoded payload and who sent it."""

    def __init__(self, module, msg):
        self._module, self.msg = module, msg
        self.topic = msg.topic
        self.method = msg.topic.split(".", 1)[1] if "." in msg.topic else ""
        self.userid, self.rolemask = msg.userid, msg.rolemask
        self.streaming = bool(msg.flags & STREAMING)
        self._payload = None

    @property
    def payload(self):
        """The decoded payload (decoded on first use)."""
        if self._payload is None and self.msg.payload:
            self._payload = unpack(self.msg.payload)
        return self._payload

    @property
    def raw(self):
        """The payload's bytes, undecoded."""
        return self.msg.payload

    @property
    def is_owner(self):
        return bool(self.rolemask & ROLE_OWNER)

    def respond(self, value):
        """Send one response now (for streaming requests: one of many)."""
        self._module._respond(self.msg, value)


class _Link:
    """Frames over the inherited socket.

    The module's own thread reads; a writer thread writes. `send` only queues the encoded
    frame and wakes the writer, so every message (a handler's answer above all) is on its way
    to the broker as soon as it is sent: it never waits while the module reads more input or
    runs the next handler. Frames queued while the writer is busy with a write are written
    together by its next one (that is the only batching), so a burst of quick answers still
    costs few system calls.
    """

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.rbuf = bytearray()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        # An RLock: the SIGTERM handler (Module.run) runs on the module's thread and flushes,
        # possibly while that thread is inside `send` holding the lock.
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)     # the writer waits for frames
        self._drained = threading.Condition(self._lock)  # flush waits for the writer
        self._out = bytearray()    # frames queued and not yet taken by the writer
        self._writing = False      # the writer is writing frames it took
        self._failed = None        # why writing failed (the broker is gone)
        threading.Thread(target=self._write_loop, name="switchboard-writer", daemon=True).start()

    def _frame_ready(self):
        if len(self.rbuf) < 4:
            return False
        (n,) = struct.unpack_from(">I", self.rbuf)
        if n > MAX_FRAME:
            raise Error(EPROTO, f"frame of {n} bytes exceeds the limit")
        return len(self.rbuf) >= 4 + n

    def recv(self, timeout=None):
        """The next message, or None when `timeout` seconds pass first."""
        while not self._frame_ready():
            # The socket stays blocking (the writer thread shares it): wait with poll.
            if timeout is not None and not self._poll.poll(max(0, math.ceil(timeout * 1000))):
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the broker closed the socket")
            self.rbuf += chunk
        (n,) = struct.unpack_from(">I", self.rbuf)
        body = bytes(self.rbuf[4:4 + n])
        del self.rbuf[:4 + n]
        return Message.decode(body)

    def send(self, msg):
        """Queue `msg` for the writer; it is written at once unless a write is under way."""
        frame = msg.encode()
        with self._lock:
            if self._failed is not None:
                raise EOFError(f"the broker's socket cannot be written: {self._failed}")
            idle = not self._out and not self._writing
            self._out += frame
            if idle:
                self._work.notify()

    def flush(self, timeout=None):
        """Wait until every frame sent so far is written (or writing failed, or `timeout`
        seconds passed); True if all were written."""
        with self._lock:
            if self._out:
                self._work.notify()
            self._drained.wait_for(lambda: self._failed is not None or not (self._out or self._writing), timeout)
            return self._failed is None and not (self._out or self._writing)

    def _write_loop(self):
        while True:
            with self._lock:
                while not self._out:
                    self._writing = False
                    self._drained.notify_all()
                    self._work.wait()
                data, self._out = self._out, bytearray()
                self._writing = True
            try:
                self.sock.sendall(data)
            except OSError as e:
                with self._lock:
                    self._failed, self._writing = e, False
                    self._out.clear()
                    self._drained.notify_all()
                return


class Module:
    """A module: its method table, event handlers and lifecycle hooks, and its broker handle.

    `rpc_timeout` is how many seconds `rpc` waits for a response unless the call names its
    own timeout (None: for ever); it may be changed at any time through the attribute.
    """

    def __init__(self, name, rpc_timeout=RPC_TIMEOUT):
        self.default_name = name
        self.name = name
        self.rpc_timeout = rpc_timeout
        self.args = []
        self.config = {}
        self._methods = {}
        self._otherwise = None
        self._guest = set()
        self._docs = {}
        self._events = []
        self._publishes = {}  # declared events: topic -> doc
        # Methods and events declared again under a name already taken: kept, so that the
        # hello declares them twice and the broker refuses the module naming the mistake.
        self._twice = {"methods": [], "events": []}
        self._on_init = None
        self._on_shutdown = None
        self._on_disconnect = None
        self._on_config = None
        self._link = None
        self._deferred = []
        self._tag = 0
        self._added = set()  # services added with add_service
        self._rank = None  # this broker's rank, once rank() has asked

    # ---------------------------------------------------------------- registration

    def method(self, name, guest=False, doc=None):
        """Decorator: handle `<service>.<name>`. Guests may call it only if `guest`. `doc`
        (default: the first line of the function's docstring) is what `<service>.methods`
        and `modctl methods` say it does."""
        def register(fn):
            if name in self._methods:
                earlier = {"name": name, "guest": name in self._guest, "doc": self._docs.get(name, "")}
                self._twice["methods"].append(earlier)
            self._methods[name] = fn
            self._guest.discard(name)
            if guest:
                self._guest.add(name)
            text = doc if doc is not None else (fn.__doc__ or "").strip().split("\n")[0]
            self._docs[name] = text
            return fn
        return register

    def publishes(self, topic, doc=""):
        """Declare an event this module publishes: its whole topic and one line saying when and
        with what payload. A declaration only (publish with `publish`): it is in the hello,
        so `modctl info` shows it without running the module, and in `<service>.methods`."""
        if topic in self._publishes:
            self._twice["events"].append({"name": topic, "doc": self._publishes[topic]})
        self._publishes[topic] = doc

    def declarations(self):
        """What this module declares about itself: its methods (in name order, who may call
        them, their docs), whether a catch-all handler answers the others, and the events it
        publishes. Sent in the hello (RFC 5 §3) and answered to `<service>.methods`."""
        methods = [{"name": n, "guest": n in self._guest, "doc": self._docs.get(n, "")} for n in sorted(self._methods)]
        methods += self._twice["methods"]
        events = [{"name": t, "doc": self._publishes[t]} for t in sorted(self._publishes)]
        events += self._twice["events"]
        return {"methods": methods, "otherwise": self._otherwise is not None, "events": events}

    def otherwise(self, fn):
        """Decorator: handle every method the table does not name (guests included: check
        `req.is_owner` yourself)."""
        self._otherwise = fn
        return fn

    def on_event(self, prefix):
        """Decorator: handle events whose topic starts with `prefix` (subscribed at start)."""
        def register(fn):
            self._events.append((prefix, fn))
            return fn
        return register

    def on_init(self, fn):
        """Decorator: called once with the module before it reports running."""
        self._on_init = fn
        return fn

    def on_shutdown(self, fn):
        self._on_shutdown = fn
        return fn

    def on_config(self, fn):
        """Decorator: the site's config table changed; fn(module) runs with `module.config`
        already the new table. Raising Error keeps the old table. Without it the broker
        reloads the module instead (RFC 3, config-update)."""
        self._on_config = fn
        return fn

    def on_disconnect(self, fn):
        """Decorator: a client that used this service disconnected; fn(request)."""
        self._on_disconnect = fn
        return fn

    # ---------------------------------------------------------------- calls to the broker

    def log(self, level, text):
        """level: 'error', 'warn', 'info' or 'debug'; the broker logs it under this module."""
        print(f"{level}: {text}", file=sys.stderr, flush=True)

    def send(self, msg):
        self._link.send(msg)

    def publish(self, topic, value=None):
        self.send(Message(EVENT, topic, pack(value if value is not None else {})))

    def rpc(self, topic, value=None, timeout=_DEFAULT, nodeid=NODEID_ANY, upstream=False):
        """Call another service and return its decoded response; raises Error on an error.

        The module serves nothing while it waits: requests that arrive meanwhile are handled
        after it returns. So the call waits at most `timeout` seconds (default: the module's
        `rpc_timeout`, 30 s; None waits for ever) and then raises Error(ETIMEDOUT); the
        request is not withdrawn, and a late response is dropped. A call to a service this
        module owns (its name, or one it added) could never be answered: it raises
        Error(EDEADLK) at once, without sending anything.

        `nodeid` sends the request to the broker of that rank of the instance (RFC 7), which
        routes it by service: a module on rank 3 reads rank 0's kvs with
        `mod.rpc("kvs.get", {...}, nodeid=0)`. NODEID_ANY (the default) is wherever the
        service is, NODEID_UPSTREAM this broker's parent; a rank the instance does not have,
        or cannot reach now, raises Error(EHOSTUNREACH). The module's own services may be
        called on other ranks; on its own rank (or with NODEID_ANY) they are EDEADLK.

        `upstream=True` (with NODEID_ANY) is served by the nearest broker upstream of this one
        that owns the service, even if this broker has an owner (the UPSTREAM flag, RFC 7
        section 4.2): a module on every rank asks its ancestors' instance of its own service."""
        if isinstance(nodeid, bool) or not isinstance(nodeid, int) or not 0 <= nodeid <= NODEID_ANY:
            raise Error(EINVAL, f"{topic}: nodeid {nodeid!r} is not a rank (0 and up), NODEID_ANY or NODEID_UPSTREAM")
        if upstream and nodeid != NODEID_ANY:
            raise Error(EINVAL, f"{topic}: upstream=True goes with nodeid NODEID_ANY only")
        service = topic.split(".", 1)[0]
        if (service == self.name or service in self._added) and not upstream and self._comes_back(nodeid):
            raise Error(EDEADLK, f"{topic}: '{self.name}' would wait on itself "
                                 "(a blocking rpc to a service the module owns would deadlock)")
        if timeout is _DEFAULT:
            timeout = self.rpc_timeout
        self._tag = (self._tag % 0xFFFFFFFF) + 1
        tag = self._tag
        req = Message(REQUEST, topic, pack(value if value is not None else {}), UPSTREAM if upstream else 0, tag)
        req.nodeid = nodeid
        self.send(req)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Error(ETIMEDOUT, f"no response from {topic} within {timeout:g} s")
            msg = self._link.recv(left)
            if msg is None:
                continue
            if msg.type == RESPONSE:
                if msg.matchtag != tag:
                    continue  # the late answer to an rpc that timed out
                if msg.errnum:
                    raise Error(msg.errnum, msg.errstr or "")
                return unpack(msg.payload)
            self._deferred.append(msg)

    def rank(self):
        """This broker's rank in its instance (0 for a standalone broker), asked of
        `broker.info` the first time and remembered."""
        if self._rank is None:
            self._rank = self.rpc("broker.info")["rank"]
        return self._rank

    def _comes_back(self, nodeid):
        """Whether a request with `nodeid` for one of this module's services would reach this
        module: NODEID_ANY finds the local owner first, a rank only if it is this broker's."""
        if nodeid == NODEID_ANY:
            return True
        if nodeid == NODEID_UPSTREAM:
            return False
        return nodeid == self.rank()

    def subscribe(self, prefix):
        self.rpc("event.subscribe", {"topic": prefix})

    def unsubscribe(self, prefix):
        self.rpc("event.unsubscribe", {"topic": prefix})

    def add_service(self, service):
        """Also answer requests for `service` (RFC 3 service.add)."""
        self.rpc("service.add", {"service": service})
        self._added.add(service)

    def remove_service(self, service):
        self.rpc("service.remove", {"service": service})
        self._added.discard(service)

    def _respond(self, req, value, errnum=0, errstr=None):
        if req.flags & NO_RESPONSE:
            return
        r = req.response(b"" if errnum else value if isinstance(value, Raw) else pack(value))
        r.errnum, r.errstr = errnum, errstr
        self.send(r)

    def _control(self, topic, value):
        self.send(Message(CONTROL, topic, pack(value)))

    # ---------------------------------------------------------------- the loop

    def run(self):
        """Speak the protocol until the broker says shutdown; exits the process."""
        fd = os.environ.get(FD_ENV)
        if fd is None:
            print(f"{self.default_name} is a Switchboard module: load it with `modctl load {sys.argv[0]}`",
                  file=sys.stderr)
            sys.exit(2)
        self._link = _Link(int(fd))
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._terminated)
        try:
            status = self._serve()
        except EOFError:
            status = 0
        finally:
            # Every answer already computed goes out before the process ends.
            self._link.flush()
        sys.exit(status)

    def _terminated(self, signum, frame):
        """SIGTERM (the broker's, when finalizing took longer than the grace period): write
        every finished answer, then die of the signal as if there were no handler."""
        self._link.flush(timeout=2.0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def _serve(self):
        welcome = self._link.recv()
        if welcome is None or welcome.type != CONTROL or welcome.topic != "welcome":
            self.log("error", "the broker did not send a welcome")
            return 1
        w = unpack(welcome.payload)
        self._control("hello", {"protocol": HANDSHAKE_PROTOCOL, "name": self.default_name, "declares": self.declarations()})
        if w.get("describe"):
            return 0
        self.name = w.get("name") or self.default_name
        self.args = list(w.get("args") or [])
        self.config = w.get("config") or {}
        if self._on_init:
            try:
                self._on_init(self)
            except Error as e:
                self.log("error", e.text)
                return 1
        for prefix, _ in self._events:
            self.subscribe(prefix)
        self._control("status", {"state": "running"})
        while True:
            msg = self._deferred.pop(0) if self._deferred else self._link.recv()
            if msg.type == REQUEST:
                self._dispatch(msg)
            elif msg.type == EVENT:
                for prefix, fn in self._events:
                    if msg.topic.startswith(prefix):
                        self._guarded(fn, msg.topic, unpack(msg.payload))
            elif msg.type == CONTROL and msg.topic == "shutdown":
                # Every request that came before the shutdown has been answered (messages are
                # handled in order); run() writes what is still queued before exiting.
                self._control("status", {"state": "finalizing"})
                if self._on_shutdown:
                    self._guarded(self._on_shutdown)
                return 0

    def _guarded(self, fn, *args):
        try:
            fn(*args)
        except Exception:
            self.log("error", traceback.format_exc().strip().replace("\n", " | "))

    def _reconfigure(self, msg, req):
        if not req.is_owner:
            return self._respond(msg, None, EPERM, f"{msg.topic} is for the instance owner only")
        new = req.payload
        if not isinstance(new, dict):
            return self._respond(msg, None, EPROTO, "config-update: the payload must be a map")
        old, self.config = self.config, new
        try:
            self._on_config(self)
        except Error as e:
            self.config = old
            return self._respond(msg, None, e.errnum, e.text)
        except Exception as e:
            self.config = old
            self.log("error", "config-update: " + traceback.format_exc().strip().replace("\n", " | "))
            return self._respond(msg, None, EIO, f"config-update failed: {type(e).__name__}: {e}")
        self._respond(msg, {})

    def _dispatch(self, msg):
        req = Request(self, msg)
        if req.method == "disconnect":
            if self._on_disconnect:
                self._guarded(self._on_disconnect, req)
            return
        if req.method == "config-update" and "config-update" not in self._methods:
            if self._on_config is None:
                # Not for `otherwise`: the broker reloads a module that does not take it.
                return self._respond(msg, None, ENOSYS, f"module '{self.name}' does not take a config-update")
            return self._reconfigure(msg, req)
        if req.method == "methods" and "methods" not in self._methods:
            # What the module declares (RFC 3 §5.1); guests may ask.
            return self._respond(msg, self.declarations())
        fn = self._methods.get(req.method)
        if fn is None and self._otherwise is not None:
            fn = self._otherwise
        elif fn is not None and not req.is_owner and req.method not in self._guest:
            return self._respond(msg, None, EPERM, f"{msg.topic} is for the instance owner only")
        if fn is None and req.method == "ping":
            return self._respond(msg, req.payload)
        if fn is None:
            known = ", ".join(sorted(self._methods)) or "none"
            text = f"service '{self.name}' has no method '{req.method}' (its methods: {known})"
            return self._respond(msg, None, ENOSYS, text)
        try:
            result = fn(req)
        except Error as e:
            return self._respond(msg, None, e.errnum, e.text)
        except Exception as e:
            self.log("error", f"{msg.topic}: " + traceback.format_exc().strip().replace("\n", " | "))
            return self._respond(msg, None, EIO, f"{msg.topic} failed: {type(e).__name__}: {e}")
        self._respond(msg, result)
