//! Sockets built with socket2, for the options tokio does not expose.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel buffer size asked for the UDP socket: bursts of lock traffic
/// (a reconciliation round, many clients) must not overflow the default.
const UDP_BUFFER: usize = 4 << 20;

/// The node's UDP socket, bound exclusively: neither SO_REUSEADDR nor
/// SO_REUSEPORT, so no other process (a second agent, or anyone else) can
/// bind the port and share or steal its datagrams, and a second agent on a
/// used port fails at start (UDP has no TIME_WAIT: a restarted agent binds
/// at once without them). Enlarged send and receive buffers, non-blocking.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel may cap the size (net.core.rmem_max); a smaller buffer
    // still works, so a refusal is not fatal.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
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
