//! Origins the proxy under test talks to: a real HTTP/1.1 server (hyper) that records every
//! request it receives, and a raw TCP origin that answers with canned bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Default)]
struct Shared {
    connections: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    /// Off for soaks: millions of recorded requests would be the test's own leak.
    unrecorded: bool,
}

/// An HTTP origin on 127.0.0.1 with these routes:
/// `/small` 100 bytes; `/echo` the request body; `/chunked` a chunked body ("hello world");
/// `/big/N` N bytes (Content-Length); `/bigchunked/N` N bytes chunked; `/status/N` status N;
/// `/slow/MS` answers after MS milliseconds; `/ws` 101 upgrade then echo. `/big/N` honours
/// `Range: bytes=S-` with a 206. `/drip/N`: N bytes at 800 KB/s (Range too).
pub struct Origin {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Origin {
    pub async fn start() -> Origin {
        Origin::start_on("127.0.0.1:0").await
    }

    /// An origin on a given address, e.g. "[::1]:0".
    pub async fn start_on(bind: &str) -> Origin {
        Origin::start_with(bind, Shared::default()).await
    }

    /// An origin that keeps no record of requests (`requests()` stays empty), for long runs.
    pub async fn start_unrecorded() -> Origin {
        let shared = Shared {
            unrecorded: true,
            ..Shared::default()
        };
        Origin::start_with("127.0.0.1:0", shared).await
    }

    /// An origin on a listener bound elsewhere (in a lab namespace: a socket stays in the
    /// namespace it was made in), keeping no record of requests.
    pub async fn start_listening(listener: std::net::TcpListener) -> Origin {
        let _ = listener.set_nonblocking(true);
        let listener = TcpListener::from_std(listener)
            .unwrap_or_else(|error| panic!("origin listener: {error}"));
        let shared = Shared {
            unrecorded: true,
            ..Shared::default()
        };
        Origin::serve(listener, shared)
    }

    async fn start_with(bind: &str, shared: Shared) -> Origin {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|error| panic!("origin bind: {error}"));
        Origin::serve(listener, shared)
    }

    fn serve(listener: TcpListener, shared: Shared) -> Origin {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("origin addr: {error}"));
        let shared = Arc::new(shared);
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin { addr, shared }
    }

    /// `http://ADDR:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .requests
            .lock()
            .map(|requests| requests.clone())
            .unwrap_or_default()
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> OriginBody {
    http_body_util::Full::new(body.into()).boxed()
}

async fn handle(shared: Arc<Shared>, mut request: Request<Incoming>) -> Response<OriginBody> {
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = request.uri().path().to_owned();
    let range = (request.headers().get("range"))
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut request);
        record(&shared, method, uri, headers, Vec::new());
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 4096];
                while let Ok(read) = io.read(&mut buf).await {
                    if read == 0 || io.write_all(&buf[..read]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(Bytes::new()))
            .unwrap_or_default();
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    record(&shared, method, uri, headers, body.clone());
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let route = parts.next().unwrap_or_default();
    let argument: u64 = parts.next().and_then(|arg| arg.parse().ok()).unwrap_or(0);
    match route {
        "small" => Response::new(full(vec![b'x'; 100])),
        "echo" => Response::new(full(body)),
        "chunked" => Response::new(
            Chunks {
                parts: vec![Bytes::from_static(b"hello"), Bytes::from_static(b" world")],
            }
            .boxed(),
        ),
        // `Range: bytes=S-` is honoured (206), so a cut download can resume (`curl -C -`).
        "big" => ranged(argument, &range, false),
        // `/drip/N`: the same at 800 KB/s (16 KiB every 20 ms): a download that stays in
        // flight, read as it arrives.
        "drip" => ranged(argument, &range, true),
        "bigchunked" => Response::new(Repeat::new(argument, false, false).boxed()),
        "status" => Response::builder()
            .status(StatusCode::from_u16(argument as u16).unwrap_or(StatusCode::OK))
            .body(full(Bytes::new()))
            .unwrap_or_default(),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(argument)).await;
            Response::new(full("slow"))
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found"))
            .unwrap_or_default(),
    }
}

fn record(
    shared: &Shared,
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) {
    if shared.unrecorded {
        return;
    }
    if let Ok(mut requests) = shared.requests.lock() {
        requests.push(Recorded {
            method,
            uri,
            headers,
            body,
        });
    }
}

/// A body of `remaining` bytes in 64 KiB frames, with or without a known length.
/// `len` bytes of a repeated byte with Content-Length, from the start of `range` if it asks
/// for one inside them (206), paced or not.
fn ranged(len: u64, range: &Option<String>, paced: bool) -> Response<OriginBody> {
    let start = range_start(range).filter(|start| *start < len);
    let body = Repeat::new(len - start.unwrap_or(0), true, paced).boxed();
    match start {
        Some(start) => Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header("content-range", format!("bytes {start}-{}/{len}", len - 1))
            .body(body)
            .unwrap_or_default(),
        None => Response::new(body),
    }
}

/// A paced body's chunk and the pause after each.
const DRIP_CHUNK: usize = 16 * 1024;
const DRIP_EVERY: Duration = Duration::from_millis(20);

/// N of a `Range: bytes=N-` header.
fn range_start(range: &Option<String>) -> Option<u64> {
    range
        .as_deref()?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

struct Repeat {
    remaining: u64,
    exact: bool,
    /// Paced: [`DRIP_CHUNK`] bytes every [`DRIP_EVERY`] (the pause before the next chunk).
    paced: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Repeat {
    fn new(remaining: u64, exact: bool, paced: bool) -> Repeat {
        Repeat {
            remaining,
            exact,
            paced,
            pause: None,
        }
    }
}

static BLOCK: [u8; 64 * 1024] = [b'z'; 64 * 1024];

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if let Some(pause) = self.pause.as_mut()
            && pause.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
        let chunk = if self.paced {
            self.pause = Some(Box::pin(tokio::time::sleep(DRIP_EVERY)));
            DRIP_CHUNK
        } else {
            BLOCK.len()
        };
        let take = self.remaining.min(chunk as u64) as usize;
        self.remaining -= take as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&BLOCK[..take])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// A body sent as separate frames with no length (so hyper chunks it).
struct Chunks {
    parts: Vec<Bytes>,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.parts.is_empty() {
            return Poll::Ready(None);
        }
        let part = self.parts.remove(0);
        Poll::Ready(Some(Ok(Frame::data(part))))
    }
}

/// A TCP origin that reads one request head per connection, records the raw bytes it got,
/// writes `response` and closes. For framings a well-behaved server would not produce.
pub struct RawOrigin {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawOrigin {
    pub async fn start(response: &'static [u8]) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("raw origin bind: {error}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("raw origin addr: {error}"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.windows(4).any(|window| window == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => got.extend_from_slice(&buf[..read]),
                        }
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push(got);
                    }
                    let _ = stream.write_all(response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawOrigin { addr, received }
    }

    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .map(|received| received.clone())
            .unwrap_or_default()
    }
}
