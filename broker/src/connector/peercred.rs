//! Who is on the other end of a Unix socket, from the kernel (`SO_PEERCRED`), so the broker
//! knows who is asking without passwords.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The peer's (pid, uid).
pub fn peer_cred(stream: &UnixStream) -> std::io::Result<(i32, u32)> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for getsockopt to write.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}
