//! The client endpoint: TCP and Unix-socket listeners, one task per
//! connection. A connection is one client of the node; when it closes (or
//! sends a frame that does not decode), the node releases its locks.

use std::net::SocketAddr;
use std::path::Path;

use swimlock_wire::client::{self, ClientRequest, ServerMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::config::AgentConfig;
use super::task::Command;
use super::{AgentError, socket};
use crate::client::Session;

/// Requests of one connection the node has not answered yet, beyond which
/// the connection is not read (so one client cannot grow the node's memory).
const MAX_OUTSTANDING: usize = 1024;

/// The bound listeners, before their tasks start.
pub struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
}

impl Listeners {
    pub fn bind(config: &AgentConfig) -> Result<Listeners, AgentError> {
        let tcp = match config.client {
            Some(addr) => Some(socket::bind_tcp(addr).map_err(|source| AgentError::Bind {
                what: "client endpoint",
                addr: addr.to_string(),
                source,
            })?),
            None => None,
        };
        let unix = match &config.unix_socket {
            Some(path) => Some(bind_unix(path).map_err(|source| AgentError::Bind {
                what: "client Unix socket",
                addr: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        Ok(Listeners { tcp, unix })
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds `path`, replacing a stale socket file a previous agent left (but
/// never a file of another kind).
fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
        && std::os::unix::net::UnixStream::connect(path).is_err()
    {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// Starts the accept loops; they end when the returned set is aborted.
pub fn spawn_listeners(listeners: Listeners, commands: mpsc::UnboundedSender<Command>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    if let Some(tcp) = listeners.tcp {
        let commands = commands.clone();
        set.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                match tcp.accept().await {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        debug!(%peer, "client connection");
                        connections.spawn(serve(stream, commands.clone()));
                    }
                    Err(e) => warn!(error = %e, "accept on the client endpoint failed"),
                }
                while connections.try_join_next().is_some() {}
            }
        });
    }
    if let Some(unix) = listeners.unix {
        set.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                match unix.accept().await {
                    Ok((stream, _)) => {
                        connections.spawn(serve(stream, commands.clone()));
                    }
                    Err(e) => warn!(error = %e, "accept on the client Unix socket failed"),
                }
                while connections.try_join_next().is_some() {}
            }
        });
    }
    set
}

/// Serves one connection until it closes, it misbehaves, or the node stops.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, commands: mpsc::UnboundedSender<Command>) {
    let (events, mut from_node) = mpsc::unbounded_channel();
    let (reply, client) = oneshot::channel();
    if commands.send(Command::Connect { session: Session::Remote(events), reply }).is_err() {
        return;
    }
    let Ok(client) = client.await else { return };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = Vec::with_capacity(4096);
    let mut outstanding = 0usize;
    loop {
        tokio::select! {
            // `read_buf` is cancel-safe: bytes read stay in `buf`.
            read = reader.read_buf(&mut buf), if outstanding < MAX_OUTSTANDING => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                match decode_requests(&mut buf) {
                    Ok(requests) => {
                        outstanding += requests.len();
                        for request in requests {
                            if commands.send(Command::Request { client, request }).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        warn!(client = client.0, error = %e, "bad client frame; closing the connection");
                        break;
                    }
                }
            }
            msg = from_node.recv() => {
                let Some(msg) = msg else { break };
                if matches!(msg, ServerMessage::Reply { .. }) {
                    outstanding = outstanding.saturating_sub(1);
                }
                if write(&mut writer, &msg).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = commands.send(Command::Disconnect { client });
}

/// Takes every complete frame off the front of `buf`.
fn decode_requests(buf: &mut Vec<u8>) -> Result<Vec<ClientRequest>, client::FrameError> {
    let mut out = Vec::new();
    let mut used = 0;
    while let Some((request, len)) = client::decode_frame::<ClientRequest>(&buf[used..])? {
        out.push(request);
        used += len;
    }
    buf.drain(..used);
    Ok(out)
}

async fn write<W: AsyncWrite + Unpin>(writer: &mut W, msg: &ServerMessage) -> std::io::Result<()> {
    let frame = client::encode(msg).map_err(std::io::Error::other)?;
    writer.write_all(&frame).await
}
