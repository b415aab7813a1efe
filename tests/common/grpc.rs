//! A real gRPC stack around the proxy: the `test.Echo` service (messages derived with prost
//! by hand, no protoc), served by [`GrpcWorker`]s on 127.0.0.1:0 beside tonic-health's
//! `grpc.health.v1.Health`, and clients that open one tonic channel to the proxy.
//!
//! The service is tonic's own server machinery (`tonic::server::Grpc` with the prost codec)
//! on hyper's HTTP/2 server, as tonic's `Server` runs it, with one difference that the
//! tests need: tonic's `Server` enforces `grpc-timeout` itself (answering CANCELLED), which
//! would race the proxy's own cut and hide whether the proxy honours the deadline. These
//! workers ignore it, as a server in another language that does not check deadlines would.
//! A graceful shutdown is hyper's (the one tonic's `serve_with_incoming_shutdown` uses):
//! GOAWAY, the open streams finish, then the connections close.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::http;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_prost::ProstCodec;

use super::{Gauge, WAIT};

/// The largest message either side accepts: room for the 4 MiB payloads and their framing.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// `test.Echo`'s request, for every method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Echoed back (Unary, Bidi) or concatenated (ClientStream).
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    /// Non-zero: the call fails with this code (Unary at once; ServerStream after its
    /// messages, so the status travels in real trailers).
    #[prost(int32, tag = "2")]
    pub fail_code: i32,
    #[prost(string, tag = "3")]
    pub fail_message: String,
    /// ServerStream: how many replies.
    #[prost(uint32, tag = "4")]
    pub count: u32,
    /// ServerStream: after this many replies, wait for [`GrpcWorker::release`] before the
    /// rest (0: never).
    #[prost(uint32, tag = "5")]
    pub hold_after: u32,
    /// Unary: sleep this long before answering (the deadline tests).
    #[prost(uint32, tag = "6")]
    pub sleep_ms: u32,
}

/// `test.Echo`'s reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    /// The worker that served the call.
    #[prost(string, tag = "2")]
    pub server: String,
    /// ServerStream and Bidi: the reply's index; ClientStream: how many messages it got.
    #[prost(uint32, tag = "3")]
    pub seq: u32,
    /// The raw bytes of the request's `x-tag-bin` metadata, as the worker decoded them.
    #[prost(bytes = "vec", tag = "4")]
    pub tag: Vec<u8>,
}

pub const UNARY: &str = "/test.Echo/Unary";
pub const SERVER_STREAM: &str = "/test.Echo/ServerStream";
pub const CLIENT_STREAM: &str = "/test.Echo/ClientStream";
pub const BIDI: &str = "/test.Echo/Bidi";

/// The bytes every reply carries in its `x-trace-bin` trailer: every byte value a header
/// cannot hold as text, so only an untouched base64 round trip gives them back.
pub fn trace_bytes(server: &str) -> Vec<u8> {
    let mut bytes = vec![0x00, 0xff, 0x80, b'\n', b':'];
    bytes.extend_from_slice(server.as_bytes());
    bytes
}

/// What the worker's handlers share with the test.
struct Shared {
    name: String,
    /// `test.Echo` calls started (health checks and plain HTTP excluded).
    calls: AtomicUsize,
    /// Calls whose handler was dropped before it answered (the client or the proxy reset
    /// the stream).
    cancelled: AtomicUsize,
    /// Server streams parked at `hold_after`.
    holding: Arc<AtomicUsize>,
    /// `true` once the test releases the held streams.
    released: watch::Sender<bool>,
    /// The `te` header of the last `test.Echo` call (gRPC requires `te: trailers`).
    last_te: std::sync::Mutex<Option<String>>,
    /// `false`: no `grpc.health.v1.Health` here (its calls answer UNIMPLEMENTED).
    health_on: std::sync::atomic::AtomicBool,
}

/// A gRPC worker on 127.0.0.1:0: `test.Echo`, `grpc.health.v1.Health`, and `GET /name`
/// (its name as plain text, for HTTP/1.1 clients of an `h2` pool).
pub struct GrpcWorker {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    pub health: tonic_health::server::HealthReporter,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    /// Cancelled by [`GrpcWorker::shutdown`]: stop accepting, GOAWAY, let streams finish.
    graceful: CancellationToken,
    /// Cancelled by [`GrpcWorker::kill`]: every connection closes at once.
    killed: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl GrpcWorker {
    pub async fn start(name: &str) -> GrpcWorker {
        GrpcWorker::serving(name, None).await
    }

    /// A worker behind TLS with `config` (whose ALPN list the test chooses).
    pub async fn start_tls(name: &str, config: Arc<rustls::ServerConfig>) -> GrpcWorker {
        GrpcWorker::serving(name, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn serving(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> GrpcWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = tonic_health::server::HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        let shared = Arc::new(Shared {
            name: name.to_string(),
            calls: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            holding: Arc::new(AtomicUsize::new(0)),
            released: watch::channel(false).0,
            health_on: true.into(),
            last_te: Default::default(),
        });
        let service = Dispatch {
            shared: shared.clone(),
            health: health_service,
        };
        let open = Arc::new(AtomicUsize::new(0));
        let graceful = CancellationToken::new();
        let killed = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            tls,
            service,
            open.clone(),
            graceful.clone(),
            killed.clone(),
        ));
        GrpcWorker {
            name: name.to_string(),
            addr,
            shared,
            health,
            open,
            graceful,
            killed,
            task: Some(task),
        }
    }

    /// `test.Echo` calls started so far.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Calls dropped unanswered (reset by the client or the proxy).
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// The `te` header of the last `test.Echo` call, if it had one.
    pub fn last_te(&self) -> Option<String> {
        self.shared.last_te.lock().unwrap().clone()
    }

    /// Server streams parked at `hold_after` now.
    pub fn holding(&self) -> usize {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Lets every held server stream (and any that reaches its hold later) go on.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Whether the worker serves `grpc.health.v1.Health` at all.
    pub fn set_health_service(&self, on: bool) {
        self.shared.health_on.store(on, Ordering::SeqCst);
    }

    /// What `grpc.health.v1.Health/Check` answers for the whole server ("").
    pub async fn set_serving(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
    }

    /// A graceful shutdown: the listener closes, every connection gets a GOAWAY and
    /// closes once its open streams end. Returns when they all have (bounded by [`WAIT`]).
    pub async fn shutdown(&mut self) {
        self.graceful.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: streams still open {WAIT:?} after GOAWAY", self.name)
                })
                .unwrap();
        }
    }

    /// Starts a graceful shutdown and returns at once (the GOAWAYs are on their way).
    pub fn start_shutdown(&self) {
        self.graceful.cancel();
    }

    /// A crash: the listener and every connection close at once, no GOAWAY.
    pub fn kill(&self) {
        self.killed.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Drop for GrpcWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Accepts HTTP/2 (prior knowledge) connections until `graceful` (then waits for them to
/// end after their GOAWAY) or `killed`.
async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: Dispatch,
    open: Arc<AtomicUsize>,
    graceful: CancellationToken,
    killed: CancellationToken,
) {
    let watcher = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
            _ = graceful.cancelled() => break,
            _ = killed.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let gauge = Gauge::up(&open);
        let killed = killed.clone();
        match &tls {
            None => {
                let conn =
                    watcher.watch(http2().serve_connection(TokioIo::new(tcp), service.clone()));
                tokio::spawn(async move {
                    let _open = gauge;
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.cancelled() => {}
                    }
                });
            }
            // Not watched for a graceful shutdown: the TLS tests need none.
            Some(acceptor) => {
                let (acceptor, service) = (acceptor.clone(), service.clone());
                tokio::spawn(async move {
                    let _open = gauge;
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = http2().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.cancelled() => {}
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = watcher.shutdown() => {}
        _ = killed.cancelled() => {}
    }
}

/// The workers' HTTP/2 server settings.
fn http2() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // As tonic's server: windows that do not throttle 4 MiB messages.
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024);
    builder
}

/// Routes a request to `test.Echo`, the health service, or the plain `GET /name`.
#[derive(Clone)]
struct Dispatch {
    shared: Arc<Shared>,
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<http::Request<Incoming>> for Dispatch {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        let mut health = self.health.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            if path.starts_with("/grpc.health.v1.Health/")
                && shared.health_on.load(Ordering::SeqCst)
            {
                use tonic::codegen::Service;
                std::future::poll_fn(|cx| {
                    Service::<http::Request<Incoming>>::poll_ready(&mut health, cx)
                })
                .await
                .unwrap();
                return Ok(health.call(request).await.unwrap());
            }
            if path == "/name" {
                return Ok(http::Response::new(tonic::body::Body::new(
                    http_body_util::Full::new(Bytes::from(shared.name.clone()))
                        .map_err(|e| match e {}),
                )));
            }
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE);
            let echo = Echo(shared.clone());
            *shared.last_te.lock().unwrap() = request
                .headers()
                .get("te")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let response = match path.as_str() {
                UNARY => {
                    shared.calls.fetch_add(1, Ordering::SeqCst);
                    grpc.unary(echo, request).await
                }
                SERVER_STREAM => {
                    shared.calls.fetch_add(1, Ordering::SeqCst);
                    grpc.server_streaming(echo, request).await
                }
                CLIENT_STREAM => {
                    shared.calls.fetch_add(1, Ordering::SeqCst);
                    grpc.client_streaming(echo, request).await
                }
                BIDI => {
                    shared.calls.fetch_add(1, Ordering::SeqCst);
                    grpc.streaming(echo, request).await
                }
                _ => return Ok(Status::unimplemented(path).into_http()),
            };
            Ok(with_trailers(response, &shared.name))
        })
    }
}

/// Adds the worker's `x-served-by` and `x-trace-bin` to the trailers of a response that
/// has some (a trailers-only error answer has none).
fn with_trailers(
    response: http::Response<tonic::body::Body>,
    name: &str,
) -> http::Response<tonic::body::Body> {
    let served_by = http::HeaderValue::from_str(name).unwrap();
    let trace: MetadataValue<tonic::metadata::Binary> =
        MetadataValue::from_bytes(&trace_bytes(name));
    let (head, body) = response.into_parts();
    let body = body.map_frame(move |mut frame| {
        if let Some(trailers) = frame.trailers_mut() {
            trailers.insert("x-served-by", served_by.clone());
            let mut metadata = MetadataMap::new();
            metadata.insert_bin("x-trace-bin", trace.clone());
            trailers.extend(metadata.into_headers());
        }
        frame
    });
    http::Response::from_parts(head, tonic::body::Body::new(body))
}

/// The `test.Echo` handlers, one type for the four methods.
#[derive(Clone)]
struct Echo(Arc<Shared>);

/// Counts a handler dropped before it finished.
struct Unfinished<'a>(Option<&'a AtomicUsize>);

impl Unfinished<'_> {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0 {
            cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Echo {
    /// The reply to `request`'s metadata and message: the worker's name in the message and
    /// in an `x-server` header.
    fn reply<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        response
            .metadata_mut()
            .insert("x-server", self.0.name.parse().unwrap());
        response
    }

    fn failure(&self, code: i32, message: &str) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(
            "x-error-bin",
            MetadataValue::from_bytes(&trace_bytes(&self.0.name)),
        );
        metadata.insert("x-served-by", self.0.name.parse().unwrap());
        Status::with_metadata(Code::from(code), message, metadata)
    }
}

fn tag_of(metadata: &MetadataMap) -> Vec<u8> {
    metadata
        .get_bin("x-tag-bin")
        .and_then(|v| v.to_bytes().ok())
        .map_or_else(Vec::new, |b| b.to_vec())
}

impl tonic::server::UnaryService<EchoRequest> for Echo {
    type Response = EchoReply;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let tag = tag_of(request.metadata());
            let message = request.into_inner();
            if message.sleep_ms > 0 {
                let unfinished = Unfinished(Some(&echo.0.cancelled));
                tokio::time::sleep(Duration::from_millis(message.sleep_ms.into())).await;
                unfinished.finished();
            }
            if message.fail_code != 0 {
                return Err(echo.failure(message.fail_code, &message.fail_message));
            }
            Ok(echo.reply(EchoReply {
                payload: message.payload,
                server: echo.0.name.clone(),
                seq: 0,
                tag,
            }))
        })
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

impl tonic::server::ServerStreamingService<EchoRequest> for Echo {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let message = request.into_inner();
            let shared = echo.0.clone();
            let failure = (message.fail_code != 0)
                .then(|| echo.failure(message.fail_code, &message.fail_message));
            let replies = futures_util::stream::unfold(0u32, move |seq| {
                let shared = shared.clone();
                let payload = message.payload.clone();
                async move {
                    if seq >= message.count {
                        return None;
                    }
                    if message.hold_after != 0 && seq == message.hold_after {
                        // Counted down when released or when the stream is dropped (reset).
                        let _held = Gauge::up(&shared.holding);
                        let mut released = shared.released.subscribe();
                        let _ = released.wait_for(|r| *r).await;
                    }
                    let reply = EchoReply {
                        payload,
                        server: shared.name.clone(),
                        seq,
                        tag: Vec::new(),
                    };
                    Some((Ok(reply), seq + 1))
                }
            });
            let stream: ReplyStream = match failure {
                None => Box::pin(replies),
                Some(status) => {
                    Box::pin(replies.chain(futures_util::stream::once(async { Err(status) })))
                }
            };
            Ok(echo.reply(stream))
        })
    }
}

impl tonic::server::ClientStreamingService<EchoRequest> for Echo {
    type Response = EchoReply;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let mut messages = request.into_inner();
            let mut payload = Vec::new();
            let mut seq = 0;
            while let Some(message) = messages.message().await? {
                payload.extend_from_slice(&message.payload);
                seq += 1;
            }
            Ok(echo.reply(EchoReply {
                payload,
                server: echo.0.name.clone(),
                seq,
                tag: Vec::new(),
            }))
        })
    }
}

impl tonic::server::StreamingService<EchoRequest> for Echo {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let name = echo.0.name.clone();
            let replies = request.into_inner().enumerate().map(move |(seq, message)| {
                message.map(|m| EchoReply {
                    payload: m.payload,
                    server: name.clone(),
                    seq: seq as u32,
                    tag: Vec::new(),
                })
            });
            let stream: ReplyStream = Box::pin(replies);
            Ok(echo.reply(stream))
        })
    }
}

/// A `test.Echo` client on one tonic channel.
#[derive(Clone)]
pub struct EchoClient<T = tonic::transport::Channel> {
    grpc: tonic::client::Grpc<T>,
}

impl EchoClient {
    /// ONE channel (one HTTP/2 connection) to the proxy at `proxy`: whatever spreads over
    /// the workers is the proxy's doing, per call.
    pub async fn connect(proxy: SocketAddr) -> EchoClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
            .unwrap()
            .connect_timeout(WAIT)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("a channel to the proxy at {proxy}: {e}"));
        EchoClient::on(channel)
    }
}

/// The service under a client that has no timer of its own for `grpc-timeout`: what the
/// client sees is what the proxy sent.
pub type PlainHttp2 = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

impl EchoClient<PlainHttp2> {
    /// A client whose deadlines only travel as `grpc-timeout`: tonic's channel also runs a
    /// timer of its own (it answers CANCELLED when it fires first), which would race the
    /// proxy's cut; hyper's HTTP/2 client runs none.
    pub fn without_local_deadline(proxy: SocketAddr) -> EchoClient<PlainHttp2> {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        EchoClient {
            grpc: tonic::client::Grpc::with_origin(
                client,
                format!("http://{proxy}").parse().unwrap(),
            )
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        }
    }
}

impl<T> EchoClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    pub fn on(service: T) -> EchoClient<T> {
        EchoClient {
            grpc: tonic::client::Grpc::new(service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {}", e.into())))
    }

    pub async fn unary(
        &mut self,
        request: impl tonic::IntoRequest<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        self.grpc
            .unary(
                request.into_request(),
                PathAndQuery::from_static(UNARY),
                ProstCodec::default(),
            )
            .await
    }

    /// Unary's path as a stream on both sides: the reply's header metadata and its
    /// trailers apart, as they came.
    pub async fn unary_as_stream(
        &mut self,
        request: EchoRequest,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        self.grpc
            .streaming(
                Request::new(futures_util::stream::once(async { request })),
                PathAndQuery::from_static(UNARY),
                ProstCodec::default(),
            )
            .await
    }

    pub async fn server_stream(
        &mut self,
        request: impl tonic::IntoRequest<EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        self.grpc
            .server_streaming(
                request.into_request(),
                PathAndQuery::from_static(SERVER_STREAM),
                ProstCodec::default(),
            )
            .await
    }

    pub async fn client_stream(
        &mut self,
        requests: impl Stream<Item = EchoRequest> + Send + 'static,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        self.grpc
            .client_streaming(
                Request::new(requests),
                PathAndQuery::from_static(CLIENT_STREAM),
                ProstCodec::default(),
            )
            .await
    }

    pub async fn bidi(
        &mut self,
        requests: impl Stream<Item = EchoRequest> + Send + 'static,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        self.grpc
            .streaming(
                Request::new(requests),
                PathAndQuery::from_static(BIDI),
                ProstCodec::default(),
            )
            .await
    }
}

/// A request that just echoes `payload`.
pub fn echo(payload: &[u8]) -> EchoRequest {
    EchoRequest {
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// A stream of the messages sent into `tx`, for client-streaming and bidi calls that send
/// as they go.
pub fn sender() -> (
    tokio::sync::mpsc::Sender<EchoRequest>,
    impl Stream<Item = EchoRequest> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let message = rx.recv().await?;
        Some((message, rx))
    });
    (tx, stream)
}

/// The next message of `stream`, bounded by [`WAIT`].
pub async fn next<T>(stream: &mut Streaming<T>, what: &str) -> Result<Option<T>, Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no message within {WAIT:?}: {what}"))
}
