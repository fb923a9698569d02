//! Who is at the other end of a descriptor libzmq names in a monitor event: the address a
//! refused peer's log line gives (RFC 7 §3.4). libzmq reports a failed CURVE handshake with
//! an error code only; the descriptor came earlier, with the connection's `ACCEPTED` event.
//!
//! Best effort, by design: libzmq owns the descriptor and its I/O thread may have closed it
//! by the time the overlay thread reads the event, and the number may then name another
//! socket. Only a TCP socket whose local port is the ROUTER's is believed. The descriptor is
//! only ever passed to the kernel as a number (`getsockname`, `getpeername`): nothing here
//! borrows, reads, writes or closes it. This file holds the overlay's only `unsafe`.
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

type AddressCall = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// `IP:PORT` of the peer connected on `fd`, if `fd` is now a TCP connection accepted on local
/// port `port`.
pub(super) fn of(fd: RawFd, port: u16) -> Option<String> {
    let local = address(fd, libc::getsockname)?;
    if local.port() != port {
        return None;
    }
    address(fd, libc::getpeername).map(|a| a.to_string())
}

/// What `call` (`getsockname` or `getpeername`) says of `fd`, if it is an inet socket.
fn address(fd: RawFd, call: AddressCall) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data, for which all zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are live, writable locals and `len` is `storage`'s size, so
    // the kernel writes at most that many bytes into it. `fd` is only a number to the kernel:
    // a closed one is EBADF, a reused one another socket's address; neither touches memory.
    let rc = unsafe { call(fd, (&raw mut storage).cast::<libc::sockaddr>(), &raw mut len) };
    if rc != 0 {
        return None;
    }
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family is AF_INET and the kernel wrote a whole sockaddr_in, which
            // sockaddr_storage is large and aligned enough to hold.
            let a = unsafe { &*(&raw const storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for AF_INET6 and sockaddr_in6.
            let a = unsafe { &*(&raw const storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((Ipv6Addr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn only_a_connection_accepted_on_the_port_names_its_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, from) = listener.accept().expect("accept");
        assert_eq!(super::of(accepted.as_raw_fd(), port), Some(from.to_string()));
        // The other end's local port is not the listener's; a listener has no peer.
        assert_eq!(super::of(client.as_raw_fd(), port), None);
        assert_eq!(super::of(listener.as_raw_fd(), port), None);
        assert_eq!(super::of(-1, port), None);
    }
}
