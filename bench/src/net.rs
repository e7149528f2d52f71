//! Addresses and sockets: `ws://` and `http://` URLs, client sockets bound to a chosen source
//! address (so more than one ephemeral port range's worth of connections fits on loopback),
//! the WebSocket opening handshake over a socket, and reading into one buffer per thread.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::task::Poll;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::ws;

/// A parsed `ws://` or `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port` as written, for the `Host` header.
    pub host: String,
    pub path: String,
    pub addr: SocketAddr,
}

impl Url {
    /// Parses and resolves `text`, which must use `scheme` (TLS schemes are not supported: the
    /// tool measures brokers, not TLS).
    pub fn parse(text: &str, scheme: &str) -> anyhow::Result<Url> {
        let rest = text
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .with_context(|| format!("{text:?}: expected a {scheme}:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("{text:?}: no host");
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(h, p)| {
            !h.ends_with(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
        }) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("{text:?}: cannot resolve {with_port}"))?
            .next()
            .with_context(|| format!("{text:?}: {with_port} resolves to nothing"))?;
        Ok(Url {
            host: authority.to_string(),
            path: path.to_string(),
            addr,
        })
    }
}

/// Source addresses for `count` loopback connections: 127.0.0.1 ..= 127.0.0.count.
pub fn loopback_sources(count: usize) -> Vec<IpAddr> {
    (1..=count)
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, (k >> 8) as u8, (k & 0xFF) as u8)))
        .collect()
}

/// A TCP connection to `addr` from `source` (any port) when given, with Nagle off: the tool's
/// writes are whole batches already, and a SUBSCRIBE must not wait for an ACK.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Performs the client's opening handshake; returns the bytes that followed the server's
/// HTTP head (the start of the WebSocket stream, usually empty).
pub async fn client_handshake(
    stream: &mut TcpStream,
    url: &Url,
    protocols: &[String],
    rng: &mut ws::Rng,
) -> anyhow::Result<Vec<u8>> {
    let key = ws::client_key(rng);
    stream
        .write_all(ws::client_request(&url.host, &url.path, &key, protocols).as_bytes())
        .await
        .context("sending the upgrade request")?;
    let mut buf = Vec::with_capacity(512);
    let head = read_head(stream, &mut buf)
        .await
        .context("reading the upgrade response")?;
    ws::check_response(&buf[..head], &key)?;
    Ok(buf.split_off(head))
}

/// Reads until `buf` holds a whole HTTP head; returns its length.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    loop {
        if let Some(len) = ws::head_len(buf) {
            return Ok(len);
        }
        if buf.len() >= ws::MAX_HEAD {
            bail!("HTTP head longer than {} bytes", ws::MAX_HEAD);
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The one read buffer of each runtime thread. A connection's bytes are processed the moment
/// they are read, so connections keep no buffer of their own and 10,000 idle ones cost the
/// tool almost nothing.
const THREAD_BUF: usize = 64 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; THREAD_BUF]);
}

/// Waits for data on `reader` and hands what one read got to `process`, which must finish with
/// it synchronously. Returns the byte count (0 at end of stream). Going through `poll_read`
/// rather than `try_read` lets tokio see a short read as "drained", saving the extra read
/// that would otherwise find the socket empty.
pub async fn read_with<R, T>(
    reader: &mut R,
    mut process: impl FnMut(&mut [u8]) -> T,
) -> io::Result<(usize, Option<T>)>
where
    R: AsyncRead + Unpin,
{
    poll_fn(|cx| {
        READ_BUF.with_borrow_mut(|buf| {
            let mut read_buf = ReadBuf::new(buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(Ok((0, None)));
                    }
                    Poll::Ready(Ok((n, Some(process(&mut buf[..n])))))
                }
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("ws://127.0.0.1:8080/ws", "ws").unwrap();
        assert_eq!(u.host, "127.0.0.1:8080");
        assert_eq!(u.path, "/ws");
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        let u = Url::parse("http://127.0.0.1", "http").unwrap();
        assert_eq!(u.path, "/");
        assert_eq!(u.addr.port(), 80);
        let u = Url::parse("http://127.0.0.1:9/api/v1/tenants/default/publish", "http").unwrap();
        assert_eq!(u.path, "/api/v1/tenants/default/publish");
        assert!(Url::parse("wss://127.0.0.1/ws", "ws").is_err());
        assert!(Url::parse("ws:///ws", "ws").is_err());
    }

    #[test]
    fn loopback_source_addresses() {
        let ips = loopback_sources(300);
        assert_eq!(ips[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ips[255], "127.0.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(ips.len(), 300);
    }
}
