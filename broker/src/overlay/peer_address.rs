//! Who is at the other end of a descriptor libzmq names in a monitor event: the address a
//! refused peer's log line gives (RFC 7 §3.4). libzmq reports a failed CURVE handshake with
//! an error code only; the descriptor came earlier, with the connection's `ACCEPTED` event.
//!
//! The one `unsafe` of the overlay lives here: lending a descriptor libzmq owns to
//! `getpeername`. Nothing here closes, reads or writes it.
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, RawFd};

/// `IP:PORT` of the peer connected on `fd`, if it is a connected inet socket.
pub(super) fn of(fd: RawFd) -> Option<String> {
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` came from libzmq's ACCEPTED event on the overlay thread, which is the only
    // reader of the monitor; libzmq closes it only after the DISCONNECTED event this thread
    // has not read yet, and the borrow ends within this call. A descriptor closed and reused
    // meanwhile would only give another socket's address (or an error), never unsoundness:
    // getpeername does not touch the descriptor's state.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let addr = rustix::net::getpeername(fd).ok()??;
    std::net::SocketAddr::try_from(addr).ok().map(|a| a.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn a_connected_socket_names_its_peer_and_a_listener_or_bad_descriptor_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, from) = listener.accept().expect("accept");
        assert_eq!(super::of(accepted.as_raw_fd()), Some(from.to_string()));
        assert_eq!(super::of(client.as_raw_fd()), Some(listener.local_addr().expect("addr").to_string()));
        assert_eq!(super::of(listener.as_raw_fd()), None);
        assert_eq!(super::of(-1), None);
    }
}
