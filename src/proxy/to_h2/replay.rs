//! A client's request body as it goes to an h2 worker, able to go again to another one
//! when the first never processed it (a refused stream, a stream above a GOAWAY's last
//! stream id).
//!
//! Each attempt's body streams from a task of its own (`pipe`), so it cannot simply be
//! asked back: each attempt's [`Replay`] hands its state back through a channel when the
//! task drops it. What it gave out so far is kept (reference-
//! counted `Bytes`, no copy) up to [`KEEP`] bytes, and given again first on the next
//! attempt; past that, the body cannot be replayed, and a refused stream is a 502.
//! It also stamps the upload's progress, for the response timeout that counts from the
//! last byte of the request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::ring::state::now_ms;

/// Bytes of a body kept for a replay. gRPC unary requests and ordinary uploads fit; a
/// stream bigger than this is, once past it, sent once.
pub const KEEP: usize = 64 * 1024;

/// How long a refused attempt's body may take to come back from its task.
const BACK_WITHIN: Duration = Duration::from_secs(1);

/// How far the upload is, for the response timeout.
pub struct Progress {
    /// When a frame last went out (`now_ms()`).
    pub last_ms: AtomicU64,
    /// The whole body went out.
    pub done: AtomicBool,
}

/// One request's body across its attempts.
pub struct Upload<B> {
    /// `None` while an attempt has it, or once it could not be recovered.
    state: Option<State<B>>,
    pub progress: Arc<Progress>,
    /// There was no body: nothing is streamed, and no attempt takes it.
    pub bodiless: bool,
    /// Counts the body bytes read from the client, for the access log (`None`: no log).
    counted: Option<Arc<AtomicU64>>,
}

struct State<B> {
    kept: Vec<Kept>,
    kept_bytes: usize,
    /// More than `KEEP` went out: what was sent cannot be sent again.
    overflowed: bool,
    source: B,
    /// The client's body ended (or broke): nothing more comes from `source`.
    ended: bool,
}

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl<B: Source> Upload<B> {
    /// `counted`: where the body's bytes are counted as they come, if anywhere.
    pub fn new(source: B, counted: Option<Arc<AtomicU64>>) -> Upload<B> {
        let ended = source.is_end_stream();
        Upload {
            state: Some(State {
                kept: Vec::new(),
                kept_bytes: 0,
                overflowed: false,
                source,
                ended,
            }),
            progress: Arc::new(Progress {
                last_ms: AtomicU64::new(now_ms()),
                done: AtomicBool::new(ended),
            }),
            bodiless: ended,
            counted,
        }
    }

    /// The body for the next attempt, and where it comes back once it is dropped;
    /// `None` when the last attempt's body did not come back.
    pub fn attempt(&mut self) -> Option<(Replay<B>, oneshot::Receiver<StateBack<B>>)> {
        let state = self.state.take()?;
        let (back, returned) = oneshot::channel();
        let body = Replay {
            state: Some(state),
            cursor: 0,
            back: Some(back),
            progress: self.progress.clone(),
            counted: self.counted.clone(),
        };
        Some((body, returned))
    }

    /// After an attempt that reached no worker: takes its body back (`returned`; `None`: no
    /// attempt took it). `false` when it cannot go again (more than `KEEP` went out, or it
    /// did not come back).
    pub async fn recover(&mut self, returned: Option<oneshot::Receiver<StateBack<B>>>) -> bool {
        let Some(returned) = returned else {
            return self.state.is_some();
        };
        match tokio::time::timeout(BACK_WITHIN, returned).await {
            Ok(Ok(StateBack(state))) if !state.overflowed => {
                self.state = Some(state);
                true
            }
            _ => false,
        }
    }
}

/// A body's state on its way back from hyper.
pub struct StateBack<B>(State<B>);

/// One attempt's body: what was kept first, then the rest of the client's body.
pub struct Replay<B> {
    state: Option<State<B>>,
    /// The next kept frame to give again.
    cursor: usize,
    back: Option<oneshot::Sender<StateBack<B>>>,
    progress: Arc<Progress>,
    counted: Option<Arc<AtomicU64>>,
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        if let (Some(state), Some(back)) = (self.state.take(), self.back.take()) {
            let _ = back.send(StateBack(state));
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a client's body can be: an HTTP/2 stream (`Incoming`), or any body of bytes.
pub trait Source: Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static {}

impl<B> Source for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static {}

impl<B: Source> Body for Replay<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let state = this.state.as_mut().expect("held until dropped");
        if let Some(kept) = state.kept.get(this.cursor) {
            this.cursor += 1;
            return Poll::Ready(Some(Ok(match kept {
                Kept::Data(data) => Frame::data(data.clone()),
                Kept::Trailers(t) => Frame::trailers(t.clone()),
            })));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut state.source).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.progress.last_ms.store(now_ms(), Ordering::Relaxed);
                if let (Some(n), Some(data)) = (&this.counted, frame.data_ref()) {
                    n.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if !state.overflowed {
                    let kept = match (frame.data_ref(), frame.trailers_ref()) {
                        (Some(data), _) => Some((Kept::Data(data.clone()), data.len())),
                        (_, Some(t)) => Some((Kept::Trailers(t.clone()), 0)),
                        _ => None,
                    };
                    if let Some((kept, n)) = kept {
                        state.kept_bytes += n;
                        if state.kept_bytes > KEEP {
                            state.overflowed = true;
                            state.kept = Vec::new();
                        } else {
                            state.kept.push(kept);
                            this.cursor += 1;
                        }
                    }
                }
            }
            Poll::Ready(None) => {
                state.ended = true;
                this.progress.done.store(true, Ordering::Relaxed);
            }
            // The client's stream broke: this attempt fails with it, and so would any other.
            Poll::Ready(Some(Err(_))) => {
                state.ended = true;
                state.overflowed = true;
            }
            Poll::Pending => {}
        }
        polled.map_err(|e| e.into())
    }

    fn is_end_stream(&self) -> bool {
        let state = self.state.as_ref().expect("held until dropped");
        self.cursor >= state.kept.len() && (state.ended || state.source.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.state.as_ref().expect("held until dropped");
        if state.kept.is_empty() && !state.ended {
            state.source.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody as Frames};

    type Source =
        Frames<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

    fn source(frames: Vec<Frame<Bytes>>) -> Source {
        Frames::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    /// Reads `n` frames of an attempt (all when `None`), then drops it.
    async fn read(body: &mut Replay<Source>, n: Option<usize>) -> Vec<String> {
        let mut seen = Vec::new();
        while n.is_none_or(|n| seen.len() < n) {
            match body.frame().await {
                None => break,
                Some(Ok(f)) => seen.push(match f.into_data() {
                    Ok(d) => String::from_utf8_lossy(&d).into_owned(),
                    Err(f) => format!("trailers {:?}", f.into_trailers().unwrap().len()),
                }),
                Some(Err(e)) => panic!("{e}"),
            }
        }
        seen
    }

    #[tokio::test]
    async fn a_refused_attempt_gives_its_body_back_to_be_sent_again_whole() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-x", "1".parse().unwrap());
        let counted = Arc::new(AtomicU64::new(0));
        let mut upload = Upload::new(
            source(vec![
                Frame::data(Bytes::from_static(b"ab")),
                Frame::data(Bytes::from_static(b"cd")),
                Frame::data(Bytes::from_static(b"ef")),
                Frame::trailers(trailers),
            ]),
            Some(counted.clone()),
        );
        let (mut body, back) = upload.attempt().unwrap();
        assert_eq!(read(&mut body, Some(2)).await, ["ab", "cd"]);
        drop(body);
        assert!(upload.recover(Some(back)).await, "it came back");
        let (mut body, back) = upload.attempt().unwrap();
        assert_eq!(
            read(&mut body, None).await,
            ["ab", "cd", "ef", "trailers 1"]
        );
        assert!(body.is_end_stream());
        assert!(upload.progress.done.load(Ordering::Relaxed));
        drop(body);
        // A third attempt (the second was refused after all of it went) replays it all.
        assert!(upload.recover(Some(back)).await);
        let (mut body, _) = upload.attempt().unwrap();
        assert_eq!(
            read(&mut body, None).await,
            ["ab", "cd", "ef", "trailers 1"]
        );
    }

    #[tokio::test]
    async fn past_keep_bytes_a_body_cannot_go_again() {
        let big = Bytes::from(vec![b'x'; KEEP]);
        let mut upload = Upload::new(
            source(vec![
                Frame::data(Bytes::from_static(b"a")),
                Frame::data(big),
            ]),
            None,
        );
        let (mut body, back) = upload.attempt().unwrap();
        assert_eq!(read(&mut body, None).await.len(), 2);
        drop(body);
        assert!(!upload.recover(Some(back)).await, "KEEP + 1 bytes went out");
        assert!(upload.attempt().is_none());
    }

    #[tokio::test]
    async fn an_empty_body_is_at_its_end_from_the_start() {
        let mut upload = Upload::new(http_body_util::Empty::<Bytes>::new(), None);
        let (body, _) = upload.attempt().unwrap();
        assert!(body.is_end_stream());
        assert!(upload.progress.done.load(Ordering::Relaxed));
    }
}
