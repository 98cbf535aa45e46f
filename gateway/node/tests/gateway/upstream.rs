//! The client of instances (decision 0031): a call's HEADERS and DATA leave in one write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::StatusCode;
use switchyard::bus::MemoryBus;
use switchyard::seams::{BoxFuture, Connector, Io};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::harness::{Gateway, Instance, http_with};

/// A TCP connection that counts the writes made on it.
struct Counted {
    inner: tokio::net::TcpStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(_))) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(_))) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Counting(Arc<AtomicUsize>);

impl Connector for Counting {
    fn connect(&self, authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let (authority, writes) = (authority.to_owned(), self.0.clone());
        Box::pin(async move {
            let inner = tokio::net::TcpStream::connect(authority).await?;
            inner.set_nodelay(true)?;
            Ok(Box::new(Counted { inner, writes }) as Box<dyn Io>)
        })
    }
}

#[tokio::test]
async fn each_call_leaves_in_one_write() {
    const CALLS: usize = 40;
    let writes = Arc::new(AtomicUsize::new(0));
    let gw = Gateway::start_with_connector(
        Arc::new(Counting(writes.clone())),
        MemoryBus::new(),
        |_| {},
        |b| b,
    )
    .await;
    let inst = Instance::start("once", "o-1").await;
    gw.register("once", "o-1", &inst.addr, 30_000).await;
    let url = format!("{}/once/echo", gw.public_url());
    let body = vec![b'x'; 1000];
    // The first calls open the connection: its preface, settings and their acknowledgement.
    for _ in 0..3 {
        let (status, _, _) = http_with("POST", &url, &[], body.clone()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let before = writes.load(Ordering::SeqCst);
    for _ in 0..CALLS {
        let (status, _, _) = http_with("POST", &url, &[], body.clone()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let per_call = writes.load(Ordering::SeqCst) - before;
    // HEADERS, then DATA, then an empty END_STREAM frame was three writes a call; a stray
    // control frame (a window update, a ping's answer) may add one now and then.
    assert!(
        per_call <= CALLS + 2,
        "{per_call} writes for {CALLS} calls, one at a time"
    );
    assert!(per_call >= CALLS, "{per_call} writes for {CALLS} calls");
}
