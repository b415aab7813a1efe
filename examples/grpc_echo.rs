//! A gRPC echo server for benchmarks: `/bench.Echo/Unary` answers each call with the request's
//! payload. It is the worker behind load_balancer in `bench/grpc-unary.sh`, where h2load is
//! the client. On SIGTERM or SIGINT it prints `grpc_echo: N calls` to stderr and exits: h2load
//! counts HTTP statuses, and a gRPC failure is an HTTP 200 too, so the benchmark compares
//! this count with the calls it sent to know that every one reached a worker.
//!
//! usage: cargo run --release --example grpc_echo -- [ADDR] [THREADS]
//!        (ADDR defaults to 127.0.0.1:50051, THREADS — tokio worker threads — to 1)
//!
//! No protoc and no build script: the two messages are derived with prost by hand, and the
//! service is the routing `tonic-build` would generate, written out for one unary method
//! (tonic's `Grpc::unary` does the framing, decoding, encoding and trailers). The proto it
//! implements:
//!
//! ```proto
//! package bench;
//! message EchoRequest { bytes payload = 1; }
//! message EchoResponse { bytes payload = 1; }
//! service Echo { rpc Unary(EchoRequest) returns (EchoResponse); }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
}

/// Calls answered with `OK`, reported on exit.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// The method's handler: the payload goes back as it came.
struct Unary;

impl UnaryService<EchoRequest> for Unary {
    type Response = EchoResponse;
    type Future = std::future::Ready<Result<Response<EchoResponse>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let payload = request.into_inner().payload;
        CALLS.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(Response::new(EchoResponse { payload })))
    }
}

/// The service `bench.Echo`: routes by path as generated code does, so an unknown method gets
/// `UNIMPLEMENTED` (grpc-status 12) rather than an HTTP error.
#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "bench.Echo";
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match req.uri().path() {
            "/bench.Echo/Unary" => Box::pin(async move {
                let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Unary, req).await)
            }),
            _ => Box::pin(async {
                Ok(Status::unimplemented("bench.Echo has one method: Unary").into_http())
            }),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:50051")
        .parse()?;
    let threads: usize = args.next().as_deref().unwrap_or("1").parse()?;
    if threads == 0 {
        return Err("THREADS must be at least 1".into());
    }
    // A fixed number of threads rather than one per core, so the server's share of a small
    // machine is chosen by the benchmark (and it can be pinned with taskset to match).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let serve = tonic::transport::Server::builder()
            .add_service(Echo)
            .serve(addr);
        eprintln!("grpc_echo: /bench.Echo/Unary on {addr}, {threads} worker thread(s)");
        // No graceful shutdown: the benchmark stops its servers after the load, and a proxy's
        // idle pooled connections must not hold the exit back.
        tokio::select! {
            served = serve => served?,
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("grpc_echo: {} calls", CALLS.load(Ordering::Relaxed));
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
