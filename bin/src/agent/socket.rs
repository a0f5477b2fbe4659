//! Sockets built with socket2, for the options tokio does not expose.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel buffer size asked for the UDP socket, each way: bursts of lock
/// traffic (a reconciliation round, many clients) must not overflow the
/// default (about 208 KiB). A coordinator of 1,000 members each holding
/// 100 locks receives about 5 MB of answers in a round, paced to a window
/// of members at a time (`swimlock_lock::Config::reconcile_window`).
pub const UDP_BUFFER: usize = 4 << 20;

/// The node's UDP socket, bound exclusively: neither SO_REUSEADDR nor
/// SO_REUSEPORT, so no other process (a second agent, or anyone else) can
/// bind the port and share or steal its datagrams, and a second agent on a
/// used port fails at start (UDP has no TIME_WAIT: a restarted agent binds
/// at once without them). Enlarged send and receive buffers, non-blocking.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    size_buffers(&socket);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Asks for [`UDP_BUFFER`] each way. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max` (often 208 KiB) unless the process may
/// force it (CAP_NET_ADMIN); a smaller buffer still works, so a refusal is
/// only a warning: it can drop datagrams of a large reconciliation round
/// (they are asked for again, which slows the round down).
fn size_buffers(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    // Linux reports twice what it granted (the doubled half is overhead).
    let granted = |got: io::Result<usize>| got.map_or(0, |b| b / 2);
    if granted(socket.recv_buffer_size()) < UDP_BUFFER {
        let _ = setsockopt(socket, sockopt::RcvBufForce, &UDP_BUFFER);
    }
    if granted(socket.send_buffer_size()) < UDP_BUFFER {
        let _ = setsockopt(socket, sockopt::SndBufForce, &UDP_BUFFER);
    }
    let (recv, send) = (granted(socket.recv_buffer_size()), granted(socket.send_buffer_size()));
    if recv < UDP_BUFFER || send < UDP_BUFFER {
        tracing::warn!(
            asked = UDP_BUFFER,
            receive = recv,
            send,
            "the kernel gave the UDP socket smaller buffers than asked for; a large reconciliation \
             round may lose datagrams (raise net.core.rmem_max and net.core.wmem_max to at least {UDP_BUFFER})"
        );
    } else {
        tracing::debug!(receive = recv, send, "UDP socket buffers");
    }
}

/// The receive and send buffer sizes the kernel granted `socket` (half of
/// what Linux reports, which counts its bookkeeping twice).
#[cfg(test)]
fn buffer_sizes(socket: &tokio::net::UdpSocket) -> io::Result<(usize, usize)> {
    let socket = socket2::SockRef::from(socket);
    Ok((socket.recv_buffer_size()? / 2, socket.send_buffer_size()? / 2))
}

/// A TCP listener with SO_REUSEADDR, so a restarted agent can listen again
/// while old connections linger in TIME_WAIT.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_udp_socket_gets_the_buffers_asked_for_or_says_what_it_got() {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let (recv, send) = buffer_sizes(&socket).unwrap();
        // Root (CI, these machines) forces the size past rmem_max; anyone
        // else gets at least the kernel's default.
        let root = nix::unistd::Uid::effective().is_root();
        if root {
            assert!(recv >= UDP_BUFFER && send >= UDP_BUFFER, "got {recv} / {send}");
        } else {
            assert!(recv > 0 && send > 0);
        }
    }

    #[tokio::test]
    async fn a_used_udp_port_cannot_be_bound_again() {
        let first = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let e = bind_udp(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // Not even by a socket that asks to share the port.
        let sharing = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        sharing.set_reuse_address(true).unwrap();
        sharing.set_reuse_port(true).unwrap();
        assert_eq!(sharing.bind(&addr.into()).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(first);
        bind_udp(addr).expect("free again once the first socket closed");
    }
}
