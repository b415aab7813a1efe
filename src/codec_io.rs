//! What both HTTP/2 connection drivers do alike around the codec, which does no I/O of its
//! own: writing the codec's frames to the socket (`poll_write_out`), and the wakers a
//! stream's handles park while they wait for their driver (`park`, `wake`). The drivers
//! are `proxy::http2::conn` (a client's connection) and `upstream::h2::conn` (a worker's);
//! each keeps its own state and lock, so what differs between them stays with them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

/// Writes `writing` to `io` as far as the socket takes it. Each time it is empty, `refill`
/// swaps the codec's output buffer into it (the codec writes on into the emptied one, so
/// no frame is copied): `Ready(Ok)` once nothing is left to write.
pub(crate) fn poll_write_out<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    writing: &mut BytesMut,
    mut refill: impl FnMut(&mut BytesMut),
) -> Poll<io::Result<()>> {
    loop {
        if writing.is_empty() {
            // From the start of its capacity again, for the codec that gets it back.
            writing.clear();
            refill(writing);
            if writing.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
        match Pin::new(&mut *io).poll_write(cx, writing) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => writing.advance(n),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Wakes the task parked in `waker`, if any.
pub(crate) fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// Stores `cx`'s waker unless the one stored already wakes the same task.
pub(crate) fn park(waker: &mut Option<Waker>, cx: &Context<'_>) {
    match waker {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *waker = Some(cx.waker().clone()),
    }
}
