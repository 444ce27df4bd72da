//! A TCP proxy that can cut every connection on command: the tests' way to make the
//! database (or Redis) unreachable, or to drop it mid-transaction, and bring it back. It can
//! also lose the answer to one COMMIT: the server commits, the client sees its connection
//! drop (what a network failure after the server's commit looks like from the client); and
//! freeze the connections open at a moment: they stay open and carry nothing more, as a
//! half-open connection to a server that vanished does, while new connections work.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub struct FaultProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped to cut the connections open at that moment.
    cut: watch::Sender<u64>,
    /// Bumped to freeze the connections open at that moment.
    freeze: watch::Sender<u64>,
    lose: Arc<LoseCommit>,
}

/// One armed "lose the answer to a COMMIT" fault.
#[derive(Default)]
struct LoseCommit {
    /// What the connection's transaction must have sent, each of them, before its COMMIT.
    after: Mutex<Option<Vec<Vec<u8>>>>,
    lost: AtomicUsize,
}

/// A MySQL COM_QUERY packet carrying `COMMIT` (payload length 7, any sequence id, 0x03), or
/// the end of a script whose last statement is `COMMIT` (statements sent together, as the
/// order path's batches send theirs).
fn is_commit(buf: &[u8]) -> bool {
    buf.windows(11)
        .any(|w| w[..3] == [7, 0, 0] && &w[4..] == b"\x03COMMIT")
        || buf.ends_with(b"COMMIT;\n")
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let cut_rx = cut.subscribe();
        let (freeze, _) = watch::channel(0u64);
        let freeze_rx = freeze.subscribe();
        let up_flag = up.clone();
        let lose = Arc::new(LoseCommit::default());
        let lose_in = lose.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !up_flag.load(Ordering::SeqCst) {
                    drop(client); // refused while down
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                cut_rx.mark_unchanged();
                let mut freeze_rx = freeze_rx.clone();
                freeze_rx.mark_unchanged();
                let lose = lose_in.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = relay(client, server, lose, freeze_rx) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            freeze,
            lose,
        }
    }

    /// Refuses new connections and cuts the open ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Cuts the open connections but keeps accepting new ones.
    pub fn cut_connections(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Freezes the connections open now: they stay open and nothing more crosses them, either
    /// way (what is sent is swallowed), until they are cut. New connections work.
    pub fn freeze_connections(&self) {
        self.freeze.send_modify(|n| *n += 1);
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Arms a one-shot fault: on the first connection whose transaction sends every one of
    /// `markers` (a statement's text, a bound value; the client must not cache prepared
    /// statements, or a statement's text crosses only once per connection) and then COMMIT,
    /// the COMMIT reaches the server, which commits and answers; the answer is dropped and
    /// the connection cut.
    pub fn lose_answer_to_commit_after(&self, markers: &[&[u8]]) {
        *self.lose.after.lock().unwrap() = Some(markers.iter().map(|m| m.to_vec()).collect());
    }

    /// How many COMMIT answers have been lost.
    pub fn commit_answers_lost(&self) -> usize {
        self.lose.lost.load(Ordering::SeqCst)
    }
}

/// A proxy going away cuts what it carries: connections it froze would otherwise keep their
/// sessions (and their locks) alive on the server after the test, and a test database could
/// not be dropped.
impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Copies both ways until either side closes, applying an armed [`LoseCommit`]; once
/// `freeze` changes, it copies nothing more and keeps both connections open.
async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    lose: Arc<LoseCommit>,
    mut freeze: watch::Receiver<u64>,
) {
    let (mut client_rx, mut client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    // Set once this connection's COMMIT is the one whose answer is to be lost.
    let swallow = Arc::new(AtomicBool::new(false));
    let upstream = {
        let (swallow, lose) = (swallow.clone(), lose.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen: Vec<Vec<u8>> = Vec::new();
            loop {
                let n = match client_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let data = &buf[..n];
                let markers = lose.after.lock().unwrap().clone();
                if let Some(markers) = markers {
                    let found: Vec<Vec<u8>> = markers
                        .iter()
                        .filter(|m| data.windows(m.len()).any(|w| w == m.as_slice()))
                        .cloned()
                        .collect();
                    let commit = is_commit(data);
                    if found.is_empty() && !commit && data.get(4) == Some(&0x03) {
                        seen.clear(); // another plain query (BEGIN): a new transaction
                    }
                    seen.extend(found);
                    if commit
                        && markers.iter().all(|m| seen.contains(m))
                        && lose.after.lock().unwrap().take().is_some()
                    {
                        swallow.store(true, Ordering::SeqCst);
                        if server_tx.write_all(data).await.is_err() {
                            return;
                        }
                        // The connection ends once the answer has come back, and been
                        // dropped.
                        return std::future::pending().await;
                    }
                }
                if server_tx.write_all(data).await.is_err() {
                    return;
                }
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        // The answers swallowed so far: a script's statements answer one after another, and
        // the COMMIT, its last, has run only once its own answer has come.
        let mut swallowed = Vec::new();
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if swallow.load(Ordering::SeqCst) {
                swallowed.extend_from_slice(&buf[..n]);
                if ends_the_answers(&swallowed) {
                    lose.lost.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                continue;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection (both are dropped on return).
    tokio::select! {
        () = upstream => return,
        () = downstream => return,
        _ = freeze.changed() => {}
    }
    // Frozen: both connections stay open, and nothing is read from or written to them.
    std::future::pending::<()>().await;
    drop((client, server));
}

/// Whether `bytes`, the server's answers to one query, hold its last answer: an OK packet
/// without SERVER_MORE_RESULTS_EXISTS, or an error (the server stops a script at its first).
fn ends_the_answers(mut bytes: &[u8]) -> bool {
    const MORE_RESULTS_EXIST: u16 = 0x0008;
    while bytes.len() >= 4 {
        let len = usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
        let Some(payload) = bytes.get(4..4 + len) else {
            return false;
        };
        match payload.first() {
            Some(0xFF) => return true,
            Some(0x00) => {
                let mut rest = &payload[1..];
                // Affected rows and the last insert id: length-encoded integers.
                for _ in 0..2 {
                    let skip = match rest.first() {
                        Some(0xFC) => 3,
                        Some(0xFD) => 4,
                        Some(0xFE) => 9,
                        Some(_) => 1,
                        None => return false,
                    };
                    rest = rest.get(skip..).unwrap_or_default();
                }
                if let [lo, hi, ..] = rest {
                    if u16::from_le_bytes([*lo, *hi]) & MORE_RESULTS_EXIST == 0 {
                        return true;
                    }
                }
            }
            _ => {}
        }
        bytes = &bytes[4 + len..];
    }
    false
}

/// A server that accepts connections and never answers: a "slow" dependency.
pub async fn blackhole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind blackhole");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}
