//! Lets processes inside a namespace reach a loopback service of the root
//! namespace (the test's etcd): a listener made inside the namespace whose
//! connections are relayed to the service from the root namespace. Sockets
//! keep the namespace they were created in, so one process can do both.
//! Traffic stays on the two loopbacks.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::netns::Netns;

pub struct PortForward {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl PortForward {
    /// Listens on 127.0.0.1:<free port> inside `ns`, relaying to `target`.
    pub fn into_ns(ns: &Netns, target: SocketAddr) -> Result<PortForward> {
        let listener = ns
            .in_ns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .with_context(|| format!("listening inside {}", ns.name()))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (stop, conns) = (stop.clone(), conns.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((inside, _)) => {
                            let _ = inside.set_nonblocking(false);
                            // A refused connection (etcd stopped) just closes
                            // the inside end, as a dead server would.
                            if let Ok(outside) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                                relay(inside, outside, &conns);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Ok(PortForward { port, stop, conns, acceptor: Some(acceptor) })
    }

    /// The port to use inside the namespace (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops every relayed connection (as a server crash would).
    pub fn cut_connections(&self) {
        for c in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn relay(inside: TcpStream, outside: TcpStream, conns: &Arc<Mutex<Vec<TcpStream>>>) {
    let _ = inside.set_nodelay(true);
    let _ = outside.set_nodelay(true);
    if let (Ok(a), Ok(b)) = (inside.try_clone(), outside.try_clone()) {
        let mut list = conns.lock().unwrap_or_else(|p| p.into_inner());
        list.push(a);
        list.push(b);
    }
    let (Ok(in2), Ok(out2)) = (inside.try_clone(), outside.try_clone()) else { return };
    thread::spawn(move || pump(inside, outside));
    thread::spawn(move || pump(out2, in2));
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut_connections();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}
