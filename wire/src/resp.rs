//! RESP, the Redis serialization protocol, as the client endpoint speaks it:
//! commands in (an array of bulk strings, or an inline line), replies out
//! in RESP2 or RESP3.
//!
//! The command reader is written here rather than taken from a general RESP
//! decoder: a server reads one shape only (as Redis itself does), and that
//! lets it refuse an oversized bulk length or argument count on its header,
//! before anything is buffered, never recurse into nested aggregates, and
//! read the inline commands of `telnet`-style clients. Replies are decoded
//! by the Rust client with the `redis-protocol` crate, which the tests
//! below also use to check what this module encodes.

use std::fmt;

/// Longest argument (bulk string) of a command, in bytes: a lock name is at
/// most 255 bytes, a password at most 1024.
pub const MAX_ARG_LEN: usize = 4096;
/// Most arguments of one command, the command name included.
pub const MAX_ARGS: usize = 16;
/// Longest inline command line, in bytes.
pub const MAX_INLINE: usize = 4096;
/// Longest header line (`*N` or `$N`) before its CRLF.
const MAX_HEADER: usize = 20;

/// Why the bytes a client sent are not a command. The connection cannot be
/// read further (where the next command starts is unknown): the endpoint
/// answers `-ERR Protocol error: ...` and closes it, as Redis does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A header line that is not a number, or too long.
    BadHeader,
    /// A bulk length over [`MAX_ARG_LEN`] (or negative).
    BulkLength(i64),
    /// An argument count over [`MAX_ARGS`].
    ArgCount(i64),
    /// An array element that is not a bulk string (the byte found).
    ExpectedBulk(u8),
    /// A bulk string not followed by CRLF.
    MissingCrlf,
    /// An inline command longer than [`MAX_INLINE`].
    InlineTooLong,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadHeader => f.write_str("Protocol error: invalid header line"),
            ProtocolError::BulkLength(n) => {
                write!(f, "Protocol error: invalid bulk length {n} (at most {MAX_ARG_LEN})")
            }
            ProtocolError::ArgCount(n) => {
                write!(f, "Protocol error: invalid multibulk length {n} (at most {MAX_ARGS})")
            }
            ProtocolError::ExpectedBulk(b) => {
                write!(f, "Protocol error: expected '$', got '{}'", char::from(*b).escape_default())
            }
            ProtocolError::MissingCrlf => f.write_str("Protocol error: a bulk string must end with CRLF"),
            ProtocolError::InlineTooLong => {
                write!(f, "Protocol error: too big inline request (at most {MAX_INLINE} bytes)")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A command's arguments and the bytes it took; `None` while incomplete.
pub type Parsed = Result<Option<(Vec<Vec<u8>>, usize)>, ProtocolError>;

/// One header line at `at`: the number after its type byte, and where the
/// next line starts; `None` if it is not complete yet.
fn header(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let window = &buf[at..buf.len().min(at + MAX_HEADER + 2)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if window.len() >= MAX_HEADER + 2 { Err(ProtocolError::BadHeader) } else { Ok(None) };
    };
    let digits = std::str::from_utf8(&window[1..end]).map_err(|_| ProtocolError::BadHeader)?;
    let n = digits.parse::<i64>().map_err(|_| ProtocolError::BadHeader)?;
    Ok(Some((n, at + end + 2)))
}

/// Reads the command at the front of `buf`: its arguments (the command name
/// first) and the number of bytes it took, or `None` while it is incomplete.
/// An empty argument list (a blank inline line, `*0`) is a command to skip.
/// Never buffers past the limits: a header announcing more fails at once.
pub fn parse_command(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

fn parse_multibulk(buf: &[u8]) -> Parsed {
    let Some((count, mut at)) = header(buf, 0)? else { return Ok(None) };
    if count > MAX_ARGS as i64 {
        return Err(ProtocolError::ArgCount(count));
    }
    // Redis skips an empty or null multibulk.
    let count = usize::try_from(count).unwrap_or(0);
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&b) => return Err(ProtocolError::ExpectedBulk(b)),
        }
        let Some((len, start)) = header(buf, at)? else { return Ok(None) };
        let len =
            usize::try_from(len).ok().filter(|&l| l <= MAX_ARG_LEN).ok_or(ProtocolError::BulkLength(len))?;
        let Some(arg) = buf.get(start..start + len + 2) else { return Ok(None) };
        if &arg[len..] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        args.push(arg[..len].to_vec());
        at = start + len + 2;
    }
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8]) -> Parsed {
    let Some(end) = buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE { Err(ProtocolError::InlineTooLong) } else { Ok(None) };
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let args: Vec<Vec<u8>> =
        line.split(|b| b.is_ascii_whitespace()).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect();
    if args.len() > MAX_ARGS {
        return Err(ProtocolError::ArgCount(args.len() as i64));
    }
    Ok(Some((args, end + 1)))
}

/// The protocol version a connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// RESP2: no maps, nulls or pushes (they are sent as their RESP2 forms,
    /// and pushes not at all).
    Resp2,
    /// RESP3.
    Resp3,
}

/// A reply or push, encoded for either protocol version by
/// [`Value::encode`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-CODE message`: the first word is the code clients match.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// RESP3 `_`; RESP2 `$-1` (a null bulk string).
    Null,
    /// RESP3 `#t`; RESP2 `:1` / `:0`.
    Bool(bool),
    /// `*N`.
    Array(Vec<Value>),
    /// RESP3 `%N`; RESP2 a flat array of keys and values.
    Map(Vec<(Value, Value)>),
    /// RESP3 `>N`; RESP2 an array (only sent where the client asked for a
    /// stream of them).
    Push(Vec<Value>),
}

impl Value {
    /// A bulk string.
    pub fn bulk(s: impl Into<Vec<u8>>) -> Value {
        Value::Bulk(s.into())
    }

    /// An error reply: `code` (upper case, no spaces) then `message`.
    pub fn error(code: &str, message: impl fmt::Display) -> Value {
        Value::Error(format!("{code} {message}"))
    }

    /// An unsigned number as a RESP integer (saturating at `i64::MAX`).
    pub fn uint(n: u64) -> Value {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// Appends the encoding of `self` in protocol `proto` to `out`.
    pub fn encode(&self, proto: Proto, out: &mut Vec<u8>) {
        let resp3 = proto == Proto::Resp3;
        match self {
            Value::Simple(s) => line(out, b'+', s),
            Value::Error(s) => line(out, b'-', s),
            Value::Int(n) => {
                out.push(b':');
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Value::Bulk(b) => {
                head(out, b'$', b.len());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Value::Null => out.extend_from_slice(b"$-1\r\n"),
            Value::Bool(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Value::Bool(b) => out.extend_from_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
            Value::Array(items) => {
                head(out, b'*', items.len());
                items.iter().for_each(|v| v.encode(proto, out));
            }
            Value::Push(items) => {
                head(out, if resp3 { b'>' } else { b'*' }, items.len());
                items.iter().for_each(|v| v.encode(proto, out));
            }
            Value::Map(pairs) => {
                if resp3 {
                    head(out, b'%', pairs.len());
                } else {
                    head(out, b'*', pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }

    /// `self` encoded in protocol `proto`.
    pub fn to_bytes(&self, proto: Proto) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(proto, &mut out);
        out
    }

    /// The value of `key` in a map (or, as RESP2 sends a map, a flat array
    /// of keys and values).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v),
            Value::Array(items) => {
                items.chunks(2).find(|kv| kv[0].as_text() == Some(key)).and_then(|kv| kv.get(1))
            }
            _ => None,
        }
    }

    /// A bulk or simple string as text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Bulk(b) => std::str::from_utf8(b).ok(),
            Value::Simple(s) => Some(s),
            _ => None,
        }
    }

    /// An integer (or a bulk string holding one).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bool(b) => Some(i64::from(*b)),
            other => other.as_text()?.parse().ok(),
        }
    }

    /// The items of an array (or push).
    pub fn as_items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) | Value::Push(items) => Some(items),
            _ => None,
        }
    }
}

/// A simple string or error line; CR and LF would end it early, so they
/// become spaces.
fn line(out: &mut Vec<u8>, kind: u8, s: &str) {
    out.push(kind);
    out.extend(s.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

fn head(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A command as a client sends it: an array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    head(out, b'*', args.len());
    for a in args {
        let a = a.as_ref();
        head(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn reads_multibulk_and_inline_commands() {
        let buf = b"*2\r\n$4\r\nLOCK\r\n$1\r\na\r\nPING\r\n";
        let (first, used) = parse_command(buf).unwrap().unwrap();
        assert_eq!(first, args(&["LOCK", "a"]));
        let (second, used2) = parse_command(&buf[used..]).unwrap().unwrap();
        assert_eq!(second, args(&["PING"]));
        assert_eq!(used + used2, buf.len());
        assert_eq!(parse_command(b"lock  a 100\n").unwrap().unwrap().0, args(&["lock", "a", "100"]));
        assert_eq!(parse_command(b"\r\n").unwrap().unwrap(), (vec![], 2));
        assert_eq!(parse_command(b"*0\r\n").unwrap().unwrap(), (vec![], 4));
        // Binary-safe: a bulk argument may hold CRLF and non-UTF-8 bytes.
        let (odd, _) = parse_command(b"*1\r\n$4\r\n\r\n\xff\xfe\r\n").unwrap().unwrap();
        assert_eq!(odd, vec![b"\r\n\xff\xfe".to_vec()]);
    }

    #[test]
    fn waits_for_the_rest_of_a_command() {
        let whole = b"*2\r\n$4\r\nLOCK\r\n$10\r\n0123456789\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse_command(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_command(b"PING"), Ok(None));
    }

    #[test]
    fn refuses_what_is_over_the_limits_on_its_header() {
        // A 600 MB bulk is refused from its header alone.
        assert_eq!(parse_command(b"*2\r\n$600000000\r\n"), Err(ProtocolError::BulkLength(600_000_000)));
        assert_eq!(parse_command(b"*1\r\n$-5\r\n"), Err(ProtocolError::BulkLength(-5)));
        assert_eq!(parse_command(b"*1000000\r\n"), Err(ProtocolError::ArgCount(1_000_000)));
        assert_eq!(parse_command(b"*1\r\n:5\r\n"), Err(ProtocolError::ExpectedBulk(b':')));
        assert_eq!(parse_command(b"*1\r\n*1\r\n"), Err(ProtocolError::ExpectedBulk(b'*')));
        assert_eq!(parse_command(b"*x\r\n"), Err(ProtocolError::BadHeader));
        assert_eq!(parse_command(&[b'*'; 40]), Err(ProtocolError::BadHeader));
        assert_eq!(parse_command(b"*1\r\n$1\r\nab\r\n"), Err(ProtocolError::MissingCrlf));
        assert_eq!(parse_command(&[b'a'; MAX_INLINE + 1]), Err(ProtocolError::InlineTooLong));
        let max = format!("*1\r\n${MAX_ARG_LEN}\r\n");
        assert_eq!(parse_command(max.as_bytes()), Ok(None), "the largest argument is waited for");
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,12}".prop_map(Value::Simple),
            "[A-Z]{1,8} [a-z ]{0,12}".prop_map(Value::Error),
            any::<i64>().prop_map(Value::Int),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bulk),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z_]{1,8}".prop_map(Value::bulk), inner.clone()), 0..4)
                    .prop_map(Value::Map),
                prop::collection::vec(inner, 1..4).prop_map(Value::Push),
            ]
        })
    }

    /// What `redis-protocol`, an independent codec, reads from RESP3 bytes,
    /// in this module's terms.
    fn from_resp3(frame: redis_protocol::resp3::types::OwnedFrame) -> Value {
        use redis_protocol::resp3::types::OwnedFrame as F;
        match frame {
            F::SimpleString { data, .. } => Value::Simple(String::from_utf8(data).unwrap()),
            F::SimpleError { data, .. } => Value::Error(data),
            F::Number { data, .. } => Value::Int(data),
            F::BlobString { data, .. } => Value::Bulk(data),
            F::Null => Value::Null,
            F::Boolean { data, .. } => Value::Bool(data),
            F::Array { data, .. } => Value::Array(data.into_iter().map(from_resp3).collect()),
            F::Push { data, .. } => Value::Push(data.into_iter().map(from_resp3).collect()),
            F::Map { data, .. } => {
                Value::Map(data.into_iter().map(|(k, v)| (from_resp3(k), from_resp3(v))).collect())
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }

    fn sorted_maps(v: Value) -> Value {
        match v {
            Value::Array(items) => Value::Array(items.into_iter().map(sorted_maps).collect()),
            Value::Push(items) => Value::Push(items.into_iter().map(sorted_maps).collect()),
            Value::Map(pairs) => {
                let mut pairs: Vec<_> = pairs.into_iter().map(|(k, v)| (k, sorted_maps(v))).collect();
                pairs.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
                pairs.dedup_by(|a, b| a.0 == b.0);
                Value::Map(pairs)
            }
            other => other,
        }
    }

    fn unique_keys(v: &Value) -> bool {
        match v {
            Value::Array(items) | Value::Push(items) => items.iter().all(unique_keys),
            Value::Map(pairs) => {
                let mut keys: Vec<_> = pairs.iter().map(|(k, _)| format!("{k:?}")).collect();
                keys.sort();
                keys.windows(2).all(|w| w[0] != w[1]) && pairs.iter().all(|(_, v)| unique_keys(v))
            }
            _ => true,
        }
    }

    proptest! {
        #[test]
        fn resp3_encoding_reads_back_with_an_independent_codec(v in value()) {
            prop_assume!(unique_keys(&v));
            let bytes = v.to_bytes(Proto::Resp3);
            let (frame, used) = redis_protocol::resp3::decode::complete::decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(sorted_maps(from_resp3(frame)), sorted_maps(v));
        }

        #[test]
        fn resp2_encoding_is_valid_resp2(v in value()) {
            let bytes = v.to_bytes(Proto::Resp2);
            let (_, used) = redis_protocol::resp2::decode::decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
        }

        #[test]
        fn commands_round_trip(a in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..MAX_ARGS)) {
            let mut bytes = Vec::new();
            encode_command(&a, &mut bytes);
            prop_assert_eq!(parse_command(&bytes).unwrap(), Some((a, bytes.len())));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_command(&bytes);
        }
    }

    #[test]
    fn resp2_forms_of_resp3_types() {
        assert_eq!(Value::Null.to_bytes(Proto::Resp2), b"$-1\r\n");
        assert_eq!(Value::Null.to_bytes(Proto::Resp3), b"_\r\n");
        let map = Value::Map(vec![(Value::bulk("proto"), Value::Int(2))]);
        assert_eq!(map.to_bytes(Proto::Resp2), b"*2\r\n$5\r\nproto\r\n:2\r\n");
        assert_eq!(map.to_bytes(Proto::Resp3), b"%1\r\n$5\r\nproto\r\n:2\r\n");
        assert_eq!(map.get("proto"), Some(&Value::Int(2)));
        let flat = Value::Array(vec![Value::bulk("proto"), Value::Int(2)]);
        assert_eq!(flat.get("proto"), Some(&Value::Int(2)));
        // A line break cannot end an error line early.
        assert_eq!(Value::Error("ERR a\r\nb".into()).to_bytes(Proto::Resp2), b"-ERR a  b\r\n");
    }
}
