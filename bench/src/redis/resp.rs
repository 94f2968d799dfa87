//! A minimal RESP2 client: commands as arrays of bulk strings, replies read one at a time
//! (arrays element by element, without recursion) over a TCP_NODELAY socket. No Redis crate
//! is needed for the handful of commands the bench sends; pipelining is writing several
//! commands before reading their replies.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::{Context as _, Result};

/// One RESP2 reply.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A RESP2 connection: one command, one reply.
pub struct Connection {
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl Connection {
    /// Connects to redis on loopback `port`.
    pub async fn open(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .context(format!("cannot connect to redis on port {port}"))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        Ok(Connection { stream: BufReader::new(stream), out: Vec::new(), line: Vec::new() })
    }

    /// Sends commands already encoded with [`encode`] (a pipeline); read their replies with
    /// [`Connection::reply`].
    pub async fn send(&mut self, encoded: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(encoded).await
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.out.clear();
        encode(&mut self.out, args);
        self.stream.get_mut().write_all(&self.out).await?;
        self.reply().await
    }

    /// Reads one reply; arrays are read element by element without recursion.
    pub async fn reply(&mut self) -> std::io::Result<Reply> {
        // Open arrays: (elements still to read, elements read so far).
        let mut open: Vec<(usize, Vec<Reply>)> = Vec::new();
        loop {
            let mut value = match self.header().await? {
                Header::Done(reply) => reply,
                Header::Array(0) => Reply::Array(Some(Vec::new())),
                Header::Array(n) => {
                    open.push((n, Vec::with_capacity(n)));
                    continue;
                }
            };
            loop {
                let Some((left, items)) = open.last_mut() else {
                    return Ok(value);
                };
                items.push(value);
                *left -= 1;
                if *left > 0 {
                    break;
                }
                let (_, items) = open.pop().unwrap_or_default();
                value = Reply::Array(Some(items));
            }
        }
    }

    async fn header(&mut self) -> std::io::Result<Header> {
        self.line.clear();
        let n = self.stream.read_until(b'\n', &mut self.line).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        // Parsed from the bytes: a page of 100 entries has ~700 reply lines, and the loader
        // should not allocate for each.
        let line = self.line.strip_suffix(b"\r\n").unwrap_or(&self.line);
        let (kind, rest) = line.split_first().ok_or_else(|| invalid(line))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        let number = || {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| invalid(line))
        };
        Ok(match kind {
            b'+' => Header::Done(Reply::Simple(text())),
            b'-' => Header::Done(Reply::Error(text())),
            b':' => Header::Done(Reply::Integer(number()?)),
            b'$' => match number()? {
                n if n < 0 => Header::Done(Reply::Bulk(None)),
                n => {
                    let mut body = vec![0; n as usize + 2];
                    self.stream.read_exact(&mut body).await?;
                    body.truncate(n as usize);
                    Header::Done(Reply::Bulk(Some(body)))
                }
            },
            b'*' => match number()? {
                n if n < 0 => Header::Done(Reply::Array(None)),
                n => Header::Array(n as usize),
            },
            _ => return Err(invalid(line)),
        })
    }
}

impl Reply {
    /// The elements of an array reply (`None` for a nil array or another kind).
    pub fn into_array(self) -> Option<Vec<Reply>> {
        match self {
            Reply::Array(items) => items,
            _ => None,
        }
    }

    /// The bytes of a bulk string reply.
    pub fn as_bulk(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(bytes)) => Some(bytes),
            _ => None,
        }
    }
}

/// What a reply's first line says.
enum Header {
    Done(Reply),
    Array(usize),
}

fn invalid(line: &[u8]) -> std::io::Error {
    let line = String::from_utf8_lossy(line);
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a RESP2 reply: {line:?}"))
}

/// Encodes a command as a RESP2 array of bulk strings: `*N\r\n$len\r\narg\r\n…`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"XADD", b"events", b"*"]);
        assert_eq!(out, b"*3\r\n$4\r\nXADD\r\n$6\r\nevents\r\n$1\r\n*\r\n");
    }

    #[tokio::test]
    async fn replies_of_every_kind_are_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = socket.read(&mut buf).await;
            let replies = b"$5\r\n1-0\r\n\r\n*2\r\n:7\r\n*1\r\n+OK\r\n-ERR nope\r\n$-1\r\n";
            socket.write_all(replies).await.unwrap();
        });
        let mut connection = Connection::open(port).await.unwrap();
        let first = connection.command(&[b"PING"]).await.unwrap();
        assert_eq!(first, Reply::Bulk(Some(b"1-0\r\n".to_vec())));
        let nested = Reply::Array(Some(vec![
            Reply::Integer(7),
            Reply::Array(Some(vec![Reply::Simple("OK".into())])),
        ]));
        assert_eq!(connection.reply().await.unwrap(), nested);
        assert_eq!(connection.reply().await.unwrap(), Reply::Error("ERR nope".into()));
        assert_eq!(connection.reply().await.unwrap(), Reply::Bulk(None));
    }
}
