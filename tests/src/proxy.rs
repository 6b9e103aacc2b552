//! A TCP fault proxy in front of a server (the Kafka broker or a Cassandra
//! node): it can cut every connection (an outage as clients see it, or one
//! dropped connection when restored at once) and delay traffic (latency),
//! while the server itself keeps running.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::TestkitError;

#[derive(Default)]
struct State {
    /// Whether traffic passes.
    up: AtomicBool,
    /// Set when the proxy is dropped.
    closed: AtomicBool,
    /// Delay added before forwarding each chunk, in ms.
    latency_ms: AtomicU64,
    /// Both ends of every open connection, to cut them.
    open: Mutex<Vec<TcpStream>>,
}

/// Forwards connections from its own port to a target; [`OutageProxy::cut`]
/// closes every connection and refuses new ones until [`OutageProxy::restore`].
pub struct OutageProxy {
    address: SocketAddr,
    state: Arc<State>,
}

impl OutageProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    pub fn start(target: SocketAddr) -> Result<Self, TestkitError> {
        OutageProxy::start_on(([127, 0, 0, 1], 0).into(), target)
    }

    /// Listens on `listen` and forwards to `target`.
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> Result<Self, TestkitError> {
        let listener = TcpListener::bind(listen)
            .map_err(TestkitError::io(format!("binding the proxy to {listen}")))?;
        let address = listener
            .local_addr()
            .map_err(TestkitError::io("reading the proxy address"))?;
        let state = Arc::new(State::default());
        state.up.store(true, Ordering::Release);
        let accepting = Arc::clone(&state);
        std::thread::Builder::new()
            .name("flumen-outage-proxy".into())
            .spawn(move || accept_loop(&listener, target, &accepting))
            .map_err(TestkitError::io("starting the proxy thread"))?;
        Ok(OutageProxy { address, state })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every open connection and refuses new ones (they are accepted
    /// and closed at once), as a broker that went away.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::Release);
        let open = std::mem::take(&mut *lock(&self.state.open));
        for stream in open {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::Release);
    }

    /// Closes every open connection; new ones are let through (clients see
    /// their connections dropped and reconnect).
    pub fn drop_connections(&self) {
        self.cut();
        self.restore();
    }

    /// Delays every chunk of traffic, both ways, by `latency` (zero: none).
    pub fn set_latency(&self, latency: std::time::Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.state.latency_ms.store(ms, Ordering::Release);
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        self.cut();
        // Wakes the accept loop so that it sees `closed`.
        let _ = TcpStream::connect(self.address);
    }
}

fn lock(m: &Mutex<Vec<TcpStream>>) -> std::sync::MutexGuard<'_, Vec<TcpStream>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, state: &Arc<State>) {
    for client in listener.incoming() {
        if state.closed.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = client else { continue };
        if !state.up.load(Ordering::Acquire) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let clones = (client.try_clone(), server.try_clone());
        let (Ok(client_out), Ok(server_in)) = clones else {
            continue;
        };
        {
            let mut open = lock(&state.open);
            for s in [&client, &server] {
                if let Ok(c) = s.try_clone() {
                    open.push(c);
                }
            }
        }
        spawn_pipe(client, server_in, Arc::clone(state));
        spawn_pipe(server, client_out, Arc::clone(state));
    }
}

/// Copies `from` to `to` until either side closes, then closes both.
fn spawn_pipe(mut from: TcpStream, mut to: TcpStream, state: Arc<State>) {
    let _ = std::thread::Builder::new()
        .name("flumen-proxy-pipe".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let latency = state.latency_ms.load(Ordering::Acquire);
                        if latency > 0 {
                            std::thread::sleep(std::time::Duration::from_millis(latency));
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
}
