//! Error numbers (RFC 1 §4): POSIX errno values in Linux numbering, as Flux uses them, so a
//! client in any language can map them with its own `strerror`.

use std::fmt;

/// A POSIX errno value carried in a response's `errnum`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u32);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const EIO: Errno = Errno(5);
    pub const ENOEXEC: Errno = Errno(8);
    pub const EAGAIN: Errno = Errno(11);
    pub const ENOMEM: Errno = Errno(12);
    pub const EBUSY: Errno = Errno(16);
    pub const EEXIST: Errno = Errno(17);
    pub const EINVAL: Errno = Errno(22);
    pub const EDEADLK: Errno = Errno(35);
    pub const ENOSYS: Errno = Errno(38);
    pub const ENODATA: Errno = Errno(61);
    pub const EPROTO: Errno = Errno(71);
    pub const EMSGSIZE: Errno = Errno(90);
    pub const ECONNRESET: Errno = Errno(104);
    pub const ETIMEDOUT: Errno = Errno(110);
    pub const EHOSTUNREACH: Errno = Errno(113);
    pub const ECANCELED: Errno = Errno(125);

    /// The symbolic name, e.g. `ENOSYS`, or `E<n>` for numbers this table does not name.
    pub fn name(self) -> String {
        self.known().map_or_else(|| format!("E{}", self.0), |(n, _)| n.to_string())
    }

    /// A short description, as `strerror` would give.
    pub fn description(self) -> &'static str {
        self.known().map_or("unknown error", |(_, d)| d)
    }

    fn known(self) -> Option<(&'static str, &'static str)> {
        Some(match self.0 {
            1 => ("EPERM", "operation not permitted"),
            2 => ("ENOENT", "no such file, module or entry"),
            5 => ("EIO", "input/output error"),
            8 => ("ENOEXEC", "not a module this broker can load"),
            11 => ("EAGAIN", "try again"),
            12 => ("ENOMEM", "out of memory"),
            16 => ("EBUSY", "busy"),
            17 => ("EEXIST", "already exists"),
            22 => ("EINVAL", "invalid argument"),
            35 => ("EDEADLK", "the call would deadlock"),
            38 => ("ENOSYS", "no such service or method"),
            61 => ("ENODATA", "end of stream"),
            71 => ("EPROTO", "protocol error"),
            90 => ("EMSGSIZE", "message too long"),
            104 => ("ECONNRESET", "connection reset"),
            110 => ("ETIMEDOUT", "timed out"),
            113 => ("EHOSTUNREACH", "the module died with the request in flight"),
            125 => ("ECANCELED", "canceled"),
            _ => return None,
        })
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.description())
    }
}
