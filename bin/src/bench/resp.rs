//! The client-endpoint rows: a raw RESP client (RESP2, one command then
//! its reply, no lease task) against swimlock's endpoint and, when
//! `redis-server` is installed, against a Redis started on loopback for
//! the run, through the very same client code; and `tcp_floor`, the TCP
//! round trip on loopback in the same run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use swimlock_wire::resp::{Value, encode_command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::floor::Floor;
use super::{new_hist, record};

/// Round trips of a TCP floor measurement, at most.
const FLOOR_ROUNDS: u64 = 2_000;
/// Time of a TCP floor measurement, at most.
const FLOOR_TIME: Duration = Duration::from_millis(300);
/// Bytes of a floor round trip: about a `LOCK` command.
const FLOOR_PAYLOAD: usize = 40;
/// Redis's lock lease (`PX`), longer than any run.
const REDIS_PX: &str = "30000";
/// The compare-and-delete release of the Redis lock recipe.
const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// The TCP round trip on loopback: two threads, blocking sockets, Nagle
/// off, [`FLOOR_PAYLOAD`] bytes each way.
pub async fn tcp_floor() -> anyhow::Result<Floor> {
    tokio::task::spawn_blocking(|| -> anyhow::Result<Floor> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; FLOOR_PAYLOAD];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf)?;
            }
            Ok(())
        });
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let (msg, mut buf) = ([0x5au8; FLOOR_PAYLOAD], [0u8; FLOOR_PAYLOAD]);
        let mut hist = new_hist();
        let start = Instant::now();
        for _ in 0..FLOOR_ROUNDS {
            if start.elapsed() > FLOOR_TIME {
                break;
            }
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut buf)?;
            record(&mut hist, t.elapsed());
        }
        drop(s);
        let _ = echo.join();
        Ok(Floor { hist })
    })
    .await?
}

/// One RESP2 connection: a command, then its reply.
pub struct Raw {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Raw {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Raw> {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Raw { stream, buf: Vec::with_capacity(4096), out: Vec::with_capacity(256) })
    }

    /// Sends `args`, returns the reply (an error reply is a `Value::Error`).
    pub async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Value> {
        self.out.clear();
        encode_command(args, &mut self.out);
        self.stream.write_all(&self.out).await?;
        loop {
            if let Some((frame, used)) = redis_protocol::resp2::decode::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(value(frame));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }
}

fn value(f: redis_protocol::resp2::types::OwnedFrame) -> Value {
    use redis_protocol::resp2::types::OwnedFrame as F;
    match f {
        F::SimpleString(s) => Value::Simple(String::from_utf8_lossy(&s).into_owned()),
        F::Error(e) => Value::Error(e),
        F::Integer(n) => Value::Int(n),
        F::BulkString(b) => Value::Bulk(b),
        F::Null => Value::Null,
        F::Array(items) => Value::Array(items.into_iter().map(value).collect()),
    }
}

/// Which server a raw client locks with.
#[derive(Clone)]
pub enum Server {
    /// swimlock: `LOCK name timeout`, `UNLOCK name`.
    Swimlock(SocketAddr),
    /// Redis: `SET name token NX PX`, retried until it takes; released with
    /// a compare-and-delete script.
    Redis(SocketAddr, Arc<String>),
}

impl Server {
    fn addr(&self) -> SocketAddr {
        match self {
            Server::Swimlock(a) | Server::Redis(a, _) => *a,
        }
    }

    /// Takes `name`, waiting if it is held; the token to release it with.
    async fn lock(&self, c: &mut Raw, name: &str, token: u64) -> anyhow::Result<Vec<u8>> {
        match self {
            Server::Swimlock(_) => match c.call(&[b"LOCK", name.as_bytes(), b"10000"]).await? {
                Value::Int(t) => Ok(t.to_string().into_bytes()),
                other => bail!("LOCK {name}: {other:?}"),
            },
            Server::Redis(..) => {
                let token = token.to_string().into_bytes();
                loop {
                    match c
                        .call(&[b"SET", name.as_bytes(), &token, b"NX", b"PX", REDIS_PX.as_bytes()])
                        .await?
                    {
                        Value::Simple(_) => return Ok(token),
                        Value::Null => tokio::task::yield_now().await,
                        other => bail!("SET {name}: {other:?}"),
                    }
                }
            }
        }
    }

    async fn unlock(&self, c: &mut Raw, name: &str, token: &[u8]) -> anyhow::Result<()> {
        let reply = match self {
            Server::Swimlock(_) => c.call(&[b"UNLOCK", name.as_bytes()]).await?,
            Server::Redis(_, sha) => {
                c.call(&[b"EVALSHA", sha.as_bytes(), b"1", name.as_bytes(), token]).await?
            }
        };
        match reply {
            Value::Simple(_) | Value::Int(1) => Ok(()),
            other => bail!("release of {name}: {other:?}"),
        }
    }
}

/// lock+unlock pairs of one raw client on its own name, after a warm-up.
pub async fn pairs(
    server: &Server,
    name: &str,
    limit: Duration,
    count: u64,
) -> anyhow::Result<Histogram<u64>> {
    let mut c = Raw::connect(server.addr()).await?;
    let name = format!("bench/{name}");
    for i in 0..200 {
        let t = server.lock(&mut c, &name, i).await?;
        server.unlock(&mut c, &name, &t).await?;
    }
    let mut hist = new_hist();
    let start = Instant::now();
    for i in 0..count {
        if start.elapsed() > limit {
            break;
        }
        let t = Instant::now();
        let token = server.lock(&mut c, &name, i).await?;
        server.unlock(&mut c, &name, &token).await?;
        record(&mut hist, t.elapsed());
    }
    Ok(hist)
}

/// `clients` raw clients looping lock+unlock for `limit`, each on its own
/// name (latency of the pair; pairs/s) or all on `shared` (latency of the
/// wait for the lock; hand-offs/s).
pub async fn many(
    server: &Server,
    clients: usize,
    shared: Option<&str>,
    limit: Duration,
) -> anyhow::Result<(Histogram<u64>, f64)> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Raw::connect(server.addr()).await?);
    }
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let server = server.clone();
        let name = shared.map_or_else(|| format!("bench/raw-distinct-{i}"), |s| format!("bench/{s}"));
        let contended = shared.is_some();
        tasks.spawn(async move {
            let (mut hist, mut count) = (new_hist(), 0u64);
            while Instant::now() < deadline && count < 10_000_000 {
                let t = Instant::now();
                let token = server.lock(&mut c, &name, (i as u64) << 32 | count).await?;
                if contended {
                    record(&mut hist, t.elapsed());
                }
                server.unlock(&mut c, &name, &token).await?;
                if !contended {
                    record(&mut hist, t.elapsed());
                }
                count += 1;
            }
            anyhow::Ok((hist, count))
        });
    }
    let (mut hist, mut total) = (new_hist(), 0u64);
    while let Some(joined) = tasks.join_next().await {
        let (h, n) = joined??;
        hist.add(&h).context("merging histograms")?;
        total += n;
    }
    Ok((hist, total as f64 / start.elapsed().as_secs_f64()))
}

/// A `redis-server` on loopback for the run (no persistence), killed on
/// drop; `None` when none is installed.
pub struct Redis {
    child: Child,
    /// Where it listens, and the release script's SHA.
    pub server: Server,
}

impl Redis {
    /// Starts one, if `redis-server` is on the PATH.
    pub async fn start() -> anyhow::Result<Option<Redis>> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return Ok(None) };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut redis = Redis { child, server: Server::Swimlock(addr) };
        let started = Instant::now();
        let mut c = loop {
            match Raw::connect(addr).await {
                Ok(c) => break c,
                Err(_) if started.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e.context("redis-server did not start")),
            }
        };
        let sha = match c.call(&[b"SCRIPT", b"LOAD", RELEASE.as_bytes()]).await? {
            Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
            other => bail!("SCRIPT LOAD: {other:?}"),
        };
        redis.server = Server::Redis(addr, Arc::new(sha));
        Ok(Some(redis))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
