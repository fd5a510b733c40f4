//! A minimal Redis client: RESP2 over TCP, and only what the topic relay sends —
//! `AUTH`, `PING`, `PUBLISH`, `SUBSCRIBE`, `UNSUBSCRIBE` (docs/decisions.md says why
//! this is not the `redis` crate).

use std::fmt;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest bulk string (a message) accepted from the server.
const MAX_BULK: usize = 64 << 20;
/// Longest status, error or number line accepted from the server.
const MAX_LINE: usize = 64 << 10;
/// Most elements in one array reply.
const MAX_ARRAY: usize = 1 << 16;
/// Deepest nesting of array replies (pub/sub uses one level).
const MAX_DEPTH: usize = 4;

/// Why talking to Redis failed. Each failure ends the connection; the relay connects
/// again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent something that is not the RESP2 the client expects.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered with an error (`-ERR ...`, `-WRONGPASS ...`).
    #[error("server error: {0}")]
    Server(String),
}

/// A `redis://[[user]:password@]host[:port][/db]` URL, parsed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisUrl {
    /// A host name or an IP address (without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl RedisUrl {
    /// Parses `url`. Messages start with `field` and never repeat the password.
    pub(crate) fn parse(url: &str, field: &str) -> Result<Self, String> {
        let error = |what: &str| {
            format!("{field}: {what} (expected redis://[[user]:password@]host[:port][/db])")
        };
        let Some(rest) = url.strip_prefix("redis://") else {
            if url.starts_with("rediss://") {
                return Err(format!(
                    "{field}: rediss:// (TLS) is not supported; use redis:// on a private network"
                ));
            }
            return Err(error("must start with redis://"));
        };
        if rest.contains(['?', '#']) {
            return Err(error("query parameters are not supported"));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        let database = path.strip_prefix('/').unwrap_or("");
        if !database.is_empty() && database.parse::<u32>().is_err() {
            return Err(error("the path must be a database number"));
        }
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| error("a user name needs a password (user:password@)"))?;
                let user = percent_decode(user).ok_or_else(|| error("bad %-escape in the user"))?;
                let password = percent_decode(password)
                    .ok_or_else(|| error("bad %-escape in the password"))?;
                if password.is_empty() {
                    return Err(error("the password is empty"));
                }
                ((!user.is_empty()).then_some(user), Some(password))
            }
        };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| error("an IPv6 address needs a closing ]"))?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err(error("only a :port may follow an IPv6 address"));
            }
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(error("an IPv6 address must be in brackets"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        if host.is_empty() {
            return Err(error("no host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(error("the host has characters a host name cannot have"));
        }
        let port = match port {
            None => 6379,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(error("the port must be a number from 1 to 65535")),
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            username,
            password,
        })
    }

    /// `host:port`, for logs (no credentials).
    pub(crate) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Decodes `%XX` escapes; `None` for a malformed one or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nabc` (`None`: the null bulk string).
    Bulk(Option<Bytes>),
    /// `*2\r\n...` (`None`: the null array).
    Array(Option<Vec<Reply>>),
}

/// Appends a command (an array of bulk strings) to `out`.
pub(crate) fn encode(out: &mut BytesMut, args: &[&[u8]]) {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(16);
    let _ = write!(head, "*{}\r\n", args.len());
    out.extend_from_slice(head.as_bytes());
    for arg in args {
        head.clear();
        let _ = write!(head, "${}\r\n", arg.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Takes one whole reply from the front of `buf`; `None` until one has arrived.
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<Reply>, RedisError> {
    match parse_at(buf, 0, 0)? {
        Some((reply, end)) => {
            buf.advance(end);
            Ok(Some(reply))
        }
        None => Ok(None),
    }
}

/// The reply starting at `pos` and where it ends, if it is all there. Nothing is
/// copied before the whole of a bulk string has arrived.
fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, RedisError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(line_len) = buf[pos + 1..].windows(2).position(|w| w == b"\r\n") else {
        if buf.len() - pos > MAX_LINE {
            return Err(RedisError::Protocol("line too long".into()));
        }
        return Ok(None);
    };
    let line = &buf[pos + 1..pos + 1 + line_len];
    let after = pos + 1 + line_len + 2;
    let text =
        || String::from_utf8(line.to_vec()).map_err(|_| RedisError::Protocol("not UTF-8".into()));
    let number = || -> Result<i64, RedisError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| RedisError::Protocol(format!("bad number {:?}", text())))
    };
    let reply = match kind {
        b'+' => (Reply::Status(text()?), after),
        b'-' => (Reply::Error(text()?), after),
        b':' => (Reply::Integer(number()?), after),
        b'$' => match number()? {
            -1 => (Reply::Bulk(None), after),
            len if (0..=MAX_BULK as i64).contains(&len) => {
                let end = after + len as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(RedisError::Protocol("bulk string not ended by CRLF".into()));
                }
                let data = Bytes::copy_from_slice(&buf[after..end]);
                (Reply::Bulk(Some(data)), end + 2)
            }
            len => return Err(RedisError::Protocol(format!("bulk length {len}"))),
        },
        b'*' => match number()? {
            -1 => (Reply::Array(None), after),
            len if (0..=MAX_ARRAY as i64).contains(&len) => {
                if depth >= MAX_DEPTH {
                    return Err(RedisError::Protocol("arrays nested too deep".into()));
                }
                let mut items = Vec::with_capacity(len as usize);
                let mut next = after;
                for _ in 0..len {
                    let Some((item, end)) = parse_at(buf, next, depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    next = end;
                }
                (Reply::Array(Some(items)), next)
            }
            len => return Err(RedisError::Protocol(format!("array length {len}"))),
        },
        other => {
            return Err(RedisError::Protocol(format!(
                "unexpected reply type {:?}",
                char::from(other)
            )));
        }
    };
    Ok(Some(reply))
}

/// One connection to the server.
pub(crate) struct Connection {
    stream: TcpStream,
    buf: BytesMut,
}

impl Connection {
    /// Connects, authenticates when the URL has a password, and checks with `PING`
    /// that a Redis server answers; all within `limit`.
    pub(crate) async fn open(url: &RedisUrl, limit: Duration) -> Result<Self, RedisError> {
        let open = async {
            let stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
            let _ = stream.set_nodelay(true);
            let mut connection = Self {
                stream,
                buf: BytesMut::with_capacity(16 << 10),
            };
            let mut hello = BytesMut::new();
            if let Some(password) = &url.password {
                match &url.username {
                    Some(user) => {
                        encode(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()])
                    }
                    None => encode(&mut hello, &[b"AUTH", password.as_bytes()]),
                }
            }
            encode(&mut hello, &[b"PING"]);
            connection.write(&hello).await?;
            if url.password.is_some() {
                match connection.read().await? {
                    Reply::Status(_) => {}
                    Reply::Error(error) => return Err(RedisError::Server(error)),
                    other => return Err(unexpected(&other)),
                }
            }
            match connection.read().await? {
                Reply::Status(pong) if pong == "PONG" => Ok(connection),
                Reply::Error(error) => Err(RedisError::Server(error)),
                other => Err(unexpected(&other)),
            }
        };
        tokio::time::timeout(limit, open)
            .await
            .map_err(|_| RedisError::Timeout(limit))?
    }

    /// Writes `bytes` (encoded commands).
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), RedisError> {
        Ok(self.stream.write_all(bytes).await?)
    }

    /// The next reply (or pushed pub/sub message).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a reply that has partly arrived stays buffered for the next call.
    pub(crate) async fn read(&mut self) -> Result<Reply, RedisError> {
        loop {
            if let Some(reply) = parse(&mut self.buf)? {
                return Ok(reply);
            }
            self.buf.reserve(16 << 10);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(RedisError::Closed);
            }
        }
    }
}

/// The error for a reply of the wrong kind.
pub(crate) fn unexpected(reply: &Reply) -> RedisError {
    RedisError::Protocol(format!("unexpected reply {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode(&mut out, &[b"PUBLISH", b"room", b"hi\r\n"]);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$4\r\nhi\r\n\r\n"
        );
    }

    #[test]
    fn replies_are_parsed_once_whole() {
        let wire: &[u8] = b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\na\r\nb\r\n*-1\r\n";
        let want = [
            Reply::Status("OK".into()),
            Reply::Error("ERR no".into()),
            Reply::Integer(42),
            Reply::Bulk(None),
            Reply::Array(Some(vec![bulk("message"), bulk("c"), bulk("a\r\nb")])),
            Reply::Array(None),
        ];
        // Fed a byte at a time, every reply comes out whole, once.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[*byte]);
            while let Some(reply) = parse(&mut buf).unwrap() {
                got.push(reply);
            }
        }
        assert_eq!(got, want);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_replies_are_protocol_errors() {
        for wire in [
            &b"?x\r\n"[..],
            b":nope\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$999999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            let mut buf = BytesMut::from(wire);
            assert!(
                matches!(parse(&mut buf), Err(RedisError::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut endless = BytesMut::from(&b"+"[..]);
        endless.extend_from_slice(&vec![b'a'; MAX_LINE + 1]);
        assert!(parse(&mut endless).is_err());
    }

    /// A one-connection server that expects `request` and answers `reply`.
    async fn fake_server(request: &'static [u8], reply: &'static [u8]) -> RedisUrl {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut got = vec![0; request.len()];
            stream.read_exact(&mut got).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(request)
            );
            stream.write_all(reply).await.unwrap();
            // Keep the connection open until the client is done.
            let _ = stream.read(&mut [0]).await;
        });
        RedisUrl::parse(&format!("redis://:pw@127.0.0.1:{port}"), "f").unwrap()
    }

    #[tokio::test]
    async fn open_authenticates_and_pings() {
        let request = b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*1\r\n$4\r\nPING\r\n";
        let url = fake_server(request, b"+OK\r\n+PONG\r\n").await;
        Connection::open(&url, Duration::from_secs(5))
            .await
            .unwrap();
        let url = fake_server(request, b"-WRONGPASS invalid password\r\n+PONG\r\n").await;
        let error = Connection::open(&url, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("WRONGPASS"), "{error}");
        // Something that is not Redis.
        let url = fake_server(request, b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        assert!(
            Connection::open(&url, Duration::from_secs(5))
                .await
                .is_err()
        );
    }

    #[test]
    fn urls() {
        let url = RedisUrl::parse("redis://127.0.0.1:6380", "f").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 6380));
        assert_eq!((url.username, url.password), (None, None));
        let url = RedisUrl::parse("redis://cache.internal/3", "f").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("cache.internal", 6379));
        let url = RedisUrl::parse("redis://:s%40cret@[::1]:7000/", "f").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 7000));
        assert_eq!(url.address(), "[::1]:7000");
        assert_eq!(url.password.as_deref(), Some("s@cret"));
        assert_eq!(url.username, None);
        let url = RedisUrl::parse("redis://app:pw@redis", "f").unwrap();
        assert_eq!(url.username.as_deref(), Some("app"));
        assert!(!format!("{url:?}").contains("pw"));
        for (bad, why) in [
            ("http://x", "must start with redis://"),
            ("rediss://x", "TLS"),
            ("redis://", "no host"),
            ("redis://x:0", "port"),
            ("redis://x:99999", "port"),
            ("redis://x:y", "port"),
            ("redis://x/db", "database number"),
            ("redis://x?protocol=resp3", "query"),
            ("redis://user@x", "needs a password"),
            ("redis://:@x", "empty"),
            ("redis://:%zz@x", "escape"),
            ("redis://[::1:6379", "]"),
            ("redis://a b", "host"),
            ("redis://::1", "brackets"),
        ] {
            let message = RedisUrl::parse(bad, "topics.url").unwrap_err();
            assert!(message.starts_with("topics.url: "), "{message}");
            assert!(message.contains(why), "{bad}: {message}");
        }
        let message = RedisUrl::parse("redis://:hunter2@x:nope", "f").unwrap_err();
        assert!(!message.contains("hunter2"), "{message}");
    }
}
