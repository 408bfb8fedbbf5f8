//! An in-process HTTP/1.1 server on a thread of its own, for the proxy and
//! the token server. Each server has its own single-threaded runtime, so
//! dropping the server stops it and every connection it was serving.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// Any error a response body can fail with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response our servers send.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response with a status and a plain-text body.
pub(crate) fn text_response(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(full(text.into()));
    *response.status_mut() = status;
    response
}

/// Lets a handler end the connection its request came on with a TCP reset
/// (RST) instead of an orderly close: found in every request's extensions.
#[derive(Clone, Debug, Default)]
pub(crate) struct Connection {
    reset: Arc<AtomicBool>,
}

impl Connection {
    /// From now on, closing the connection resets it. Set this, then fail
    /// the response body: hyper drops the connection, and the peer reads
    /// `ECONNRESET` rather than an end of stream.
    pub(crate) fn reset_on_close(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }
}

/// A served connection that closes with a reset when [`Connection`] says so.
struct ConnectionIo {
    io: TokioIo<tokio::net::TcpStream>,
    reset: Arc<AtomicBool>,
}

impl hyper::rt::Read for ConnectionIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ConnectionIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            // No FIN: the reset happens when the socket is dropped.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Drop for ConnectionIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // SO_LINGER 0: close() sends RST and drops unsent data.
            let _ = self.io.inner().set_zero_linger();
        }
    }
}

/// Answers the requests of one server.
pub(crate) trait Handler: Send + Sync + 'static {
    /// The response to `request`.
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub(crate) struct BackgroundServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundServer {
    /// Binds a free loopback port: the caller learns the address before the
    /// handler exists, for handlers that need to know their own address.
    pub(crate) fn bind() -> std::io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Serves `listener` with `handler` on a new thread named `name`.
    pub(crate) fn start<H: Handler>(
        name: &str,
        listener: std::net::TcpListener,
        handler: Arc<H>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shutdown, stop) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || runtime.block_on(serve(listener, handler, stop)))?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve<H: Handler>(
    listener: std::net::TcpListener,
    handler: Arc<H>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ocifs-tests: cannot serve: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = Arc::clone(&handler);
                let connection = Connection::default();
                let io = ConnectionIo {
                    io: TokioIo::new(stream),
                    reset: Arc::clone(&connection.reset),
                };
                tokio::spawn(async move {
                    let service = service_fn(move |mut request: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        request.extensions_mut().insert(connection.clone());
                        async move { Ok::<_, Infallible>(handler.handle(request).await) }
                    });
                    // A client that hangs up mid-request is not our failure.
                    let _ = http1::Builder::new().serve_connection(io, service).await;
                });
            }
        }
    }
}
