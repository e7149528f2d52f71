//! Socket work shared by the transports and the WebSocket layer: reads that allocate a buffer
//! only once data is there (an idle connection holds none), and gathered writes that send
//! queued frames straight from their shared bytes.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;

/// How much a read reserves at least.
const READ_CHUNK: usize = 4096;

/// Most slices in one `writev` (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Waits until the socket is readable, then appends what is there to `buf`; `Ok(0)` at end
/// of stream. Cancel-safe.
///
/// The bytes pass through a stack buffer so that `buf` grows by what arrived, not by a read
/// chunk: an idle connection holds no buffer, and a message body (a slice of `buf` kept until
/// every subscriber got it) keeps alive only the read it came in.
pub async fn read_ready(read: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        read.readable().await?;
        let mut chunk = [0u8; READ_CHUNK];
        match read.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes every slice, in as few system calls as the kernel allows.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    out: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let upto = slices.len().min(MAX_SLICES);
        let written = out.write_vectored(&slices[..upto]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    out.flush().await
}
