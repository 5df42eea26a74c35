//! A slow, breakable link to a TCP server: a loopback proxy that passes
//! what the server sends at a set rate, so that a download takes long
//! enough to be cut off in the middle (the link cut, the agent killed),
//! and that can be cut and restored like a network that goes away.
//!
//! It records the head of each request the client sends (so a test can
//! see a download resumed with `Range`). One thread per direction per
//! connection: the tests' links carry a handful of requests.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes passed on at a time from the server to the client.
const CHUNK: usize = 512;

#[derive(Default)]
struct Shared {
    /// Dropped by the test: every thread ends.
    closed: AtomicBool,
    /// Cut: live connections are severed, new ones refused.
    cut: AtomicBool,
    /// Bumped on each cut: a connection made before it ends.
    epoch: AtomicU64,
    requests: Mutex<Vec<String>>,
    bytes_down: AtomicU64,
}

/// The proxy; it listens on [`SlowLink::addr`] until dropped.
pub struct SlowLink {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl SlowLink {
    /// A link to `upstream` passing at most `bytes_per_sec` towards the
    /// client (requests go up at full speed).
    pub fn start(upstream: SocketAddr, bytes_per_sec: u64) -> SlowLink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, addr, upstream, bytes_per_sec, s));
        SlowLink { addr, shared }
    }

    /// Severs every live connection and refuses new ones (the port is
    /// closed: connection refused) until [`SlowLink::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// The head of every request sent through the link, in order
    /// (request line and headers, as sent).
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Bytes passed from the server to clients.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    rate: u64,
    shared: Arc<Shared>,
) {
    let mut listener = Some(listener);
    while !shared.closed.load(Ordering::SeqCst) {
        if shared.cut.load(Ordering::SeqCst) {
            // Closed, so a connect is refused, as to a host that is gone.
            listener = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let Some(l) = listener.as_ref() else {
            // std sets SO_REUSEADDR: the same port binds again at once.
            match TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        };
        match l.accept() {
            Ok((client, _)) => {
                let shared = shared.clone();
                std::thread::spawn(move || serve(client, upstream, rate, shared));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(client: TcpStream, upstream: SocketAddr, rate: u64, shared: Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let epoch = shared.epoch.load(Ordering::SeqCst);
    let alive = {
        let shared = shared.clone();
        move || {
            !shared.closed.load(Ordering::SeqCst) && shared.epoch.load(Ordering::SeqCst) == epoch
        }
    };
    for s in [&client, &server] {
        // Short reads, so a cut is noticed within a tick.
        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    }
    let up = {
        let (from, to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let shared = shared.clone();
        let alive = alive.clone();
        std::thread::spawn(move || {
            let mut head = Vec::new();
            pump(from, to, 4096, &alive, |bytes| {
                record_heads(&mut head, bytes, &shared)
            });
        })
    };
    let pause = Duration::from_secs_f64(CHUNK as f64 / rate.max(1) as f64);
    let (from, to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    pump(from, to, CHUNK, &alive, |bytes| {
        shared
            .bytes_down
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        std::thread::sleep(pause.mul_f64(bytes.len() as f64 / CHUNK as f64));
    });
    for s in [&client, &server] {
        let _ = s.shutdown(Shutdown::Both);
    }
    let _ = up.join();
}

/// Copies `from` to `to`, `chunk` bytes at most at a time, calling
/// `passed` with each piece written, while `alive` and both ends are open.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    chunk: usize,
    alive: &impl Fn() -> bool,
    mut passed: impl FnMut(&[u8]),
) {
    let mut buf = vec![0u8; chunk];
    while alive() {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                passed(&buf[..n]);
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Collects request heads (up to the blank line) from the bytes a client
/// sends; bodies (the agent's GETs have none) are not looked at.
fn record_heads(head: &mut Vec<u8>, bytes: &[u8], shared: &Shared) {
    head.extend_from_slice(bytes);
    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        shared.requests.lock().unwrap().push(text);
        head.drain(..end + 4);
    }
}
