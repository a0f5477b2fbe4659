//! Sockets built with socket2, for the options tokio does not expose.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel buffer size asked for the UDP socket: bursts of lock traffic
/// (a reconciliation round, many clients) must not overflow the default.
const UDP_BUFFER: usize = 4 << 20;

/// The node's UDP socket: SO_REUSEADDR (a restarted agent can bind at once),
/// enlarged send and receive buffers, non-blocking.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
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
