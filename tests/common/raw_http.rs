//! HTTP/1.1 over a bare TCP socket, for what a client library hides. A server that refuses
//! a body early answers (413) and closes while the client is still sending it; reqwest then
//! reports a failed send (hyper's `IncompleteMessage`, or a reset) although the answer came.
//! Here the answer is read while the request is written, so it is seen whatever became of
//! the write.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What came back on the connection.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status of the answer; `None` when the server closed without answering.
    pub status: Option<u16>,
    /// The answer's body (empty when there is none).
    pub body: String,
    /// Whether the whole request was written before the server closed.
    pub sent_whole: bool,
}

impl RawAnswer {
    /// The body as JSON (panics, naming the answer, when it is not).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the answer's body is not JSON ({e}): {self:?}"))
    }
}

/// Sends `request` as is on a fresh connection, reading the answer while it is written; a
/// write the server cut short is part of the outcome, not an error of the test.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawAnswer {
    let conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the service");
    let (mut reader, mut writer) = conn.into_split();
    // The write half stays open until the answer is read: a half-closed request is one
    // hyper may drop without answering.
    let write = async { writer.write_all(request).await.is_ok() };
    let read = async move {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        // A reset after the answer ends the read; the bytes read before it are the answer.
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
        raw
    };
    let (sent_whole, raw) = tokio::join!(write, read);
    drop(writer);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse::<u16>().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    RawAnswer {
        status,
        body,
        sent_whole,
    }
}

/// A POST of a JSON `body` with a Content-Length, closing the connection after the answer.
pub fn post(path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

/// A POST of a JSON `body` sent chunked (no Content-Length): the limit must hold while the
/// body streams in.
pub fn post_chunked(path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    for chunk in body.as_bytes().chunks(8 * 1024) {
        request.push_str(&format!("{:x}\r\n", chunk.len()));
        request.push_str(std::str::from_utf8(chunk).expect("ASCII body"));
        request.push_str("\r\n");
    }
    request.push_str("0\r\n\r\n");
    request.into_bytes()
}
