//! A small Redis client (RESP2 over TCP), synchronous and bounded: every call takes a
//! deadline, and every socket read and write is given what is left of it, so a server
//! that stops answering, or drips one byte at a time, costs at most the deadline. Replies
//! are bounded too: a bulk string larger than [`Limits::max_bulk`], an array longer than
//! [`Limits::max_array`], a line longer than [`MAX_LINE`] or nesting deeper than
//! [`MAX_DEPTH`] is a protocol error, never an allocation.
//!
//! Why not the `redis` crate: its timeouts are per socket operation (a dripping server
//! resets them with every byte), its replies are unbounded, and the tier uses a dozen
//! commands. This file is all of the protocol xcache speaks.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Longest status, error or number line accepted.
pub const MAX_LINE: usize = 64 << 10;

/// Deepest nesting of arrays accepted (xcache's commands reply with at most 2).
pub const MAX_DEPTH: usize = 4;

/// Bounds on what a reply may make the client allocate.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string.
    pub max_bulk: usize,
    /// Most elements of one array.
    pub max_array: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 1 << 30,
            max_array: 1 << 20,
        }
    }
}

/// Where a Redis server is, parsed from `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Address {
    /// Host name or address (IPv6 without its brackets).
    pub host: String,
    /// Port (6379 when absent).
    pub port: u16,
    /// ACL user, when given.
    pub user: Option<String>,
    /// Password, when given.
    pub password: Option<String>,
    /// Database number.
    pub db: u32,
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Address({}:{}/{})", self.host, self.port, self.db)
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a `%` not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-escapes that are not UTF-8".to_string())
}

impl Address {
    /// Parses a `redis://` URL. The error says what is wrong (without the password).
    pub fn parse(url: &str) -> Result<Address, String> {
        let rest = url.strip_prefix("redis://").ok_or(
            "it does not start with redis:// (rediss:// and unix sockets are not supported)",
        )?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (hostport, db) = match hostpart.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, db)) => (
                hp,
                db.parse::<u32>()
                    .map_err(|_| format!("the database {db:?} is not a number"))?,
            ),
            None => (hostpart, 0),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or("an IPv6 address without its `]`")?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err("it names no host".into());
        }
        let port = match port {
            None | Some("") => 6379,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("the port {p:?} is not a number up to 65535"))?,
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => {
                let (u, p) = match a.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (a, None),
                };
                let u = (!u.is_empty()).then(|| percent_decode(u)).transpose()?;
                let p = p
                    .filter(|p| !p.is_empty())
                    .map(percent_decode)
                    .transpose()?;
                // `redis://secret@host`: a lone word before `@` is the password (as
                // redis-cli -u reads it).
                match (u, p) {
                    (Some(u), None) => (None, Some(u)),
                    other => other,
                }
            }
        };
        Ok(Address {
            host,
            port,
            user,
            password,
            db,
        })
    }
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A null bulk string or array.
    Nil,
    /// An integer.
    Int(i64),
    /// A status reply (`+OK`).
    Status(String),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// An error reply (`-ERR …`), as the server worded it.
    Error(String),
}

impl Value {
    /// The bytes of a bulk or status reply.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Status(s) => Some(s.into_bytes()),
            _ => None,
        }
    }

    /// The integer of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// What went wrong talking to the server.
#[derive(Debug)]
pub enum RespError {
    /// The connection could not be made.
    Connect(io::Error),
    /// The deadline passed.
    Timeout,
    /// The connection failed or was closed.
    Io(io::Error),
    /// The server said something that is not RESP, or more than the limits allow.
    Protocol(String),
    /// The server answered with an error reply.
    Server(String),
}

impl RespError {
    /// The error reply's code (`NOAUTH`, `WRONGPASS`, `OOM`, …), if it is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RespError::Server(m) => m.split_whitespace().next(),
            _ => None,
        }
    }
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Connect(e) => write!(f, "cannot connect: {e}"),
            RespError::Timeout => f.write_str("no complete answer before the deadline"),
            RespError::Io(e) => write!(f, "{e}"),
            RespError::Protocol(m) => write!(f, "protocol error: {m}"),
            RespError::Server(m) => write!(f, "the server answered: {m}"),
        }
    }
}

impl std::error::Error for RespError {}

fn left(deadline: Instant) -> Result<Duration, RespError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(RespError::Timeout);
    }
    // A socket timeout of zero means "none": never ask for it.
    Ok((deadline - now).max(Duration::from_millis(1)))
}

fn io_err(e: io::Error) -> RespError {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        RespError::Timeout
    } else {
        RespError::Io(e)
    }
}

/// Encodes one command in RESP (an array of bulk strings).
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A source of reply bytes that can be refilled (a socket, or a slice in tests).
pub trait Fill {
    /// Reads more bytes into `buf`, by the deadline; 0 means closed.
    fn fill(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, RespError>;
}

impl Fill for TcpStream {
    fn fill(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, RespError> {
        loop {
            self.set_read_timeout(Some(left(deadline)?))
                .map_err(RespError::Io)?;
            match self.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r.map_err(io_err),
            }
        }
    }
}

impl Fill for &[u8] {
    fn fill(&mut self, buf: &mut [u8], _deadline: Instant) -> Result<usize, RespError> {
        Ok(self.read(buf).expect("reading a slice"))
    }
}

/// Reads replies from a [`Fill`], within the limits.
pub struct Reader<F> {
    src: F,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limits: Limits,
}

impl<F: Fill> Reader<F> {
    /// A reader of `src`.
    pub fn new(src: F, limits: Limits) -> Reader<F> {
        Reader {
            src,
            buf: vec![0; 16 << 10],
            start: 0,
            end: 0,
            limits,
        }
    }

    /// The source.
    pub fn get_mut(&mut self) -> &mut F {
        &mut self.src
    }

    fn more(&mut self, deadline: Instant) -> Result<(), RespError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.src.fill(&mut self.buf[self.end..], deadline)?;
        if n == 0 {
            return Err(RespError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        self.end += n;
        Ok(())
    }

    fn line(&mut self, deadline: Instant) -> Result<String, RespError> {
        // Bytes after `start` already searched for the newline.
        let mut scanned = 0;
        loop {
            let from = self.start + scanned;
            if let Some(i) = self.buf[from..self.end].iter().position(|&b| b == b'\n') {
                let nl = from + i;
                if nl == self.start || self.buf[nl - 1] != b'\r' {
                    return Err(RespError::Protocol("a line not ended by CRLF".into()));
                }
                let s = String::from_utf8_lossy(&self.buf[self.start..nl - 1]).into_owned();
                self.start = nl + 1;
                return Ok(s);
            }
            scanned = self.end - self.start;
            if scanned > MAX_LINE {
                return Err(RespError::Protocol(format!(
                    "a line longer than {MAX_LINE} bytes"
                )));
            }
            self.more(deadline)?;
        }
    }

    fn exact(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, RespError> {
        // Allocated as the bytes arrive, never ahead of them: a server that declares a
        // large value and sends little costs what it sent.
        let mut out = Vec::with_capacity(n.min(1 << 20));
        loop {
            let take = (n - out.len()).min(self.end - self.start);
            out.extend_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
            if out.len() == n {
                return Ok(out);
            }
            self.start = 0;
            self.end = 0;
            self.more(deadline)?;
        }
    }

    fn len(&mut self, text: &str, max: usize, what: &str) -> Result<Option<usize>, RespError> {
        let n: i64 = text
            .parse()
            .map_err(|_| RespError::Protocol(format!("a {what} length {text:?}")))?;
        if n < 0 {
            return Ok(None);
        }
        if n as u64 > max as u64 {
            return Err(RespError::Protocol(format!(
                "a {what} of {n} (more than the {max} accepted)"
            )));
        }
        Ok(Some(n as usize))
    }

    /// Reads one reply, by the deadline.
    pub fn value(&mut self, deadline: Instant) -> Result<Value, RespError> {
        self.value_at(deadline, 0)
    }

    fn value_at(&mut self, deadline: Instant, depth: usize) -> Result<Value, RespError> {
        let line = self.line(deadline)?;
        let (kind, rest) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
        match kind {
            "+" => Ok(Value::Status(rest.to_string())),
            "-" => Ok(Value::Error(rest.to_string())),
            ":" => rest
                .parse()
                .map(Value::Int)
                .map_err(|_| RespError::Protocol(format!("an integer {rest:?}"))),
            "$" => match self.len(rest, self.limits.max_bulk, "bulk string")? {
                None => Ok(Value::Nil),
                Some(n) => {
                    let mut b = self.exact(n + 2, deadline)?;
                    if !b.ends_with(b"\r\n") {
                        return Err(RespError::Protocol(
                            "a bulk string not ended by CRLF".into(),
                        ));
                    }
                    b.truncate(n);
                    Ok(Value::Bulk(b))
                }
            },
            "*" => match self.len(rest, self.limits.max_array, "array")? {
                None => Ok(Value::Nil),
                Some(n) => {
                    if depth >= MAX_DEPTH {
                        return Err(RespError::Protocol(format!(
                            "arrays nested deeper than {MAX_DEPTH}"
                        )));
                    }
                    let mut v = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        v.push(self.value_at(deadline, depth + 1)?);
                    }
                    Ok(Value::Array(v))
                }
            },
            _ => Err(RespError::Protocol(format!(
                "a reply starting with {:?}",
                line.chars().take(16).collect::<String>()
            ))),
        }
    }
}

/// A connection to a Redis server.
pub struct Conn {
    reader: Reader<TcpStream>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

impl Conn {
    /// Connects (within `connect_timeout` and the deadline, whichever comes first),
    /// authenticates and selects the database.
    pub fn connect(
        addr: &Address,
        connect_timeout: Duration,
        deadline: Instant,
        limits: Limits,
    ) -> Result<Conn, RespError> {
        let budget = left(deadline)?.min(connect_timeout.max(Duration::from_millis(1)));
        let until = Instant::now() + budget;
        let netloc = if addr.host.contains(':') {
            format!("[{}]:{}", addr.host, addr.port)
        } else {
            format!("{}:{}", addr.host, addr.port)
        };
        // By the deadline: a resolver that does not answer is a timeout, not a hang.
        let addrs = crate::remote::resolve::lookup(&netloc, until, crate::remote::resolve::system)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::TimedOut {
                    RespError::Timeout
                } else {
                    RespError::Connect(e)
                }
            })?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        let mut stream = None;
        for a in addrs {
            let Some(t) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            match TcpStream::connect_timeout(&a, t.max(Duration::from_millis(1))) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| {
            if matches!(
                last.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) {
                RespError::Timeout
            } else {
                RespError::Connect(last)
            }
        })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            reader: Reader::new(stream, limits),
        };
        let mut hello: Vec<Vec<Vec<u8>>> = Vec::new();
        match (&addr.user, &addr.password) {
            (Some(u), Some(p)) => hello.push(vec![
                b"AUTH".to_vec(),
                u.as_bytes().to_vec(),
                p.as_bytes().to_vec(),
            ]),
            (None, Some(p)) => hello.push(vec![b"AUTH".to_vec(), p.as_bytes().to_vec()]),
            _ => {}
        }
        if addr.db != 0 {
            hello.push(vec![b"SELECT".to_vec(), addr.db.to_string().into_bytes()]);
        }
        if !hello.is_empty() {
            for v in conn.pipeline(&hello, deadline)? {
                if let Value::Error(e) = v {
                    return Err(RespError::Server(e));
                }
            }
        }
        Ok(conn)
    }

    fn send(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), RespError> {
        let s = self.reader.get_mut();
        let mut at = 0;
        while at < bytes.len() {
            s.set_write_timeout(Some(left(deadline)?))
                .map_err(RespError::Io)?;
            match s.write(&bytes[at..]) {
                Ok(0) => {
                    return Err(RespError::Io(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the server stopped reading",
                    )))
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    }

    /// Sends one command and reads its reply; an error reply is [`RespError::Server`].
    pub fn query(&mut self, args: &[&[u8]], deadline: Instant) -> Result<Value, RespError> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.send(&out, deadline)?;
        match self.reader.value(deadline)? {
            Value::Error(e) => Err(RespError::Server(e)),
            v => Ok(v),
        }
    }

    /// Sends several commands at once and reads their replies, in order (error replies
    /// are returned as [`Value::Error`] among them).
    pub fn pipeline(
        &mut self,
        cmds: &[Vec<Vec<u8>>],
        deadline: Instant,
    ) -> Result<Vec<Value>, RespError> {
        let mut out = Vec::new();
        for c in cmds {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            encode(&mut out, &args);
        }
        self.send(&out, deadline)?;
        (0..cmds.len())
            .map(|_| self.reader.value(deadline))
            .collect()
    }
}

/// Parses every reply in `bytes` (for the fuzzer and tests): `Err` at the first that
/// is malformed or incomplete.
pub fn parse_all(bytes: &[u8], limits: Limits) -> Result<Vec<Value>, RespError> {
    let far = Instant::now() + Duration::from_secs(3600);
    let mut r = Reader::new(bytes, limits);
    let mut out = Vec::new();
    loop {
        if r.start == r.end {
            match r.more(far) {
                Err(RespError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(out)
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        out.push(r.value(far)?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn addresses_parse_as_redis_cli_reads_them() {
        let a = Address::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("127.0.0.1", 6380, 2));
        assert_eq!((a.user, a.password), (None, None));
        let a = Address::parse("redis://:s3%40cret@cache.example/0").unwrap();
        assert_eq!(a.password.as_deref(), Some("s3@cret"));
        assert_eq!(a.port, 6379);
        let a = Address::parse("redis://ci:pw@[::1]:7000").unwrap();
        assert_eq!(
            (a.user.as_deref(), a.password.as_deref(), a.host.as_str()),
            (Some("ci"), Some("pw"), "::1")
        );
        let a = Address::parse("redis://secret@h").unwrap();
        assert_eq!((a.user, a.password.as_deref()), (None, Some("secret")));
        for bad in [
            "http://h",
            "redis://",
            "redis://h:99999",
            "redis://h/x",
            "redis://%zz@h",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        // The password never shows in Debug.
        let a = Address::parse("redis://:topsecret@h").unwrap();
        assert!(!format!("{a:?}").contains("topsecret"));
    }

    #[test]
    fn replies_parse_and_limits_hold() {
        let v = parse_all(
            b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n-ERR no\r\n",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                Value::Status("OK".into()),
                Value::Int(42),
                Value::Bulk(b"abc".to_vec()),
                Value::Nil,
                Value::Array(vec![
                    Value::Bulk(b"a".to_vec()),
                    Value::Array(vec![Value::Int(1)])
                ]),
                Value::Error("ERR no".into()),
            ]
        );
        let small = Limits {
            max_bulk: 10,
            max_array: 3,
        };
        for bad in [
            &b"$11\r\n"[..],
            b"*4\r\n",
            b"$99999999999999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"?x\r\n",
            b"$3\r\nabcd\r\n",
            b":x\r\n",
            b"+no crlf\n",
        ] {
            assert!(
                matches!(parse_all(bad, small), Err(RespError::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A line without end is refused once longer than MAX_LINE, not buffered on.
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(matches!(
            parse_all(&long, Limits::default()),
            Err(RespError::Protocol(_))
        ));
        // Truncated input is an error, never a panic.
        assert!(parse_all(b"$5\r\nab", Limits::default()).is_err());
    }

    /// A server that answers one byte every `gap`: the deadline bounds the whole reply,
    /// not each read.
    #[test]
    fn a_dripping_server_costs_at_most_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 64];
            let _ = s.read(&mut req);
            for b in b"$100000\r\n".iter().chain([b'x'; 100].iter()).cycle() {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let addr = Address::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(300);
        let mut c =
            Conn::connect(&addr, Duration::from_secs(1), deadline, Limits::default()).unwrap();
        let r = c.query(&[b"GET", b"k"], deadline);
        let spent = start.elapsed();
        assert!(matches!(r, Err(RespError::Timeout)), "{r:?}");
        assert!(spent < Duration::from_millis(1000), "{spent:?}");
        drop(c);
        server.join().unwrap();
    }

    /// A host given by name is looked up (by the deadline) and connected to.
    #[test]
    fn a_host_by_name_is_looked_up_and_connected() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 64];
            let _ = s.read(&mut req);
            s.write_all(b"$2\r\nhi\r\n").unwrap();
        });
        let addr = Address::parse(&format!("redis://localhost:{port}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c =
            Conn::connect(&addr, Duration::from_secs(5), deadline, Limits::default()).unwrap();
        let r = c.query(&[b"GET", b"k"], deadline).unwrap();
        assert_eq!(r.into_bytes().as_deref(), Some(&b"hi"[..]));
        server.join().unwrap();
    }
}
