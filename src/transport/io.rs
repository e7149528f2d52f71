//! Socket reads and writes shared by the TCP and WebSocket transports: reads that allocate a
//! buffer only once data is there (an idle connection holds none), and gathered writes that
//! send queued frames straight from their shared bytes.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;

/// How much a read reserves at least.
const READ_CHUNK: usize = 4096;

/// Most slices in one `writev` (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Waits until the socket is readable, then reads what is there into `buf`; `Ok(0)` at end
/// of stream. Cancel-safe. Waiting before reserving keeps idle connections bufferless.
pub async fn read_ready(read: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        read.readable().await?;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match read.try_read_buf(buf) {
            Ok(n) => return Ok(n),
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
