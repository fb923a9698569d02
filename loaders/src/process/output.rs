//! A child's stdout and stderr, line by line, into the broker's log under the module's name.
//! Each stream is read by a task on the broker's runtime (no thread), which ends at the
//! stream's end of file. Lines printed before the module runs (during the handshake) are
//! kept, up to `HOLD`, and replayed once it has a port; the last few stderr lines are kept
//! to explain a failure. Logging never blocks, so neither does a pump.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_protocol::Level;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::module::BrokerPort;

/// Stderr lines kept to explain how a child ended.
const KEEP: usize = 5;
/// Lines held back before the module runs, at most.
const HOLD: usize = 200;
/// The longest line logged as one record; a longer one is cut into pieces this long.
const MAX_LINE: usize = 64 << 10;
/// How long an explanation waits for the streams to end (a grandchild may keep them open).
const SETTLE: Duration = Duration::from_millis(100);

pub struct Output {
    state: Mutex<State>,
    /// How many of the child's two streams have ended.
    ended: watch::Sender<u8>,
}

#[derive(Default)]
struct State {
    port: Option<Arc<dyn BrokerPort>>,
    held: Vec<(Level, String)>,
    last_stderr: VecDeque<String>,
    /// The last non-empty line on either stream.
    last_line: String,
}

impl Output {
    /// Start forwarding the child's stdout and stderr, each from a task of the runtime this
    /// thread is in (a task, or `Handle::enter`).
    pub fn capture(stdout: pipe::Receiver, stderr: pipe::Receiver) -> Arc<Output> {
        let out = Arc::new(Output { state: Mutex::default(), ended: watch::Sender::new(0) });
        tokio::spawn(out.clone().pump(stdout, Level::Info, false));
        tokio::spawn(out.clone().pump(stderr, Level::Warn, true));
        out
    }

    async fn pump(self: Arc<Self>, stream: impl AsyncRead + Unpin, default: Level, is_stderr: bool) {
        let mut stream = BufReader::new(stream);
        let mut line = Vec::new();
        // Read to the end whatever comes (a child must never block on a full pipe): a line
        // that is not UTF-8 is logged with replacement characters, one longer than
        // `MAX_LINE` in pieces of that size, and the last one even without its newline.
        loop {
            let chunk = match stream.fill_buf().await {
                Ok(chunk) if !chunk.is_empty() => chunk,
                _ => break,
            };
            let end = chunk.iter().position(|&b| b == b'\n');
            let take = end.map_or(chunk.len(), |i| i + 1).min(MAX_LINE - line.len());
            line.extend_from_slice(&chunk[..take]);
            stream.consume(take);
            if line.ends_with(b"\n") || line.len() == MAX_LINE {
                self.emit(&line, default, is_stderr);
                line.clear();
            }
        }
        if !line.is_empty() {
            self.emit(&line, default, is_stderr);
        }
        self.ended.send_modify(|n| *n += 1);
    }

    fn emit(&self, line: &[u8], default: Level, is_stderr: bool) {
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        self.line(text.strip_suffix('\r').unwrap_or(text), default, is_stderr);
    }

    fn line(&self, line: &str, default: Level, is_stderr: bool) {
        let (level, text) = classify(line, default);
        let mut st = self.state.lock();
        if !text.trim().is_empty() {
            text.clone_into(&mut st.last_line);
        }
        if is_stderr && !text.trim().is_empty() {
            if st.last_stderr.len() == KEEP {
                st.last_stderr.pop_front();
            }
            st.last_stderr.push_back(text.to_string());
        }
        match &st.port {
            Some(port) => port.log(level, text),
            None if st.held.len() < HOLD => st.held.push((level, text.to_string())),
            None => {}
        }
    }

    /// From now on, log through `port`; replay what came before.
    pub fn attach(&self, port: Arc<dyn BrokerPort>) {
        let mut st = self.state.lock();
        for (level, text) in st.held.drain(..) {
            port.log(level, &text);
        }
        st.port = Some(port);
    }

    /// The last stderr line, to append to a failure reason ("" if none).
    pub async fn last_words(&self) -> String {
        self.settle().await;
        self.state.lock().last_stderr.back().cloned().unwrap_or_default()
    }

    /// The last line on stdout or stderr ("" if it printed nothing at all).
    pub async fn last_line(&self) -> String {
        self.settle().await;
        self.state.lock().last_line.clone()
    }

    /// Let the pumps read what a dying child wrote last: until both streams have ended, or
    /// `SETTLE` at most.
    async fn settle(&self) {
        let mut ended = self.ended.subscribe();
        let _ = tokio::time::timeout(SETTLE, ended.wait_for(|n| *n >= 2)).await;
    }
}

/// A line may start with its level (`error: `, `warn: `, `info: `, `debug: `).
fn classify(line: &str, default: Level) -> (Level, &str) {
    Level::strip_tag(line).unwrap_or((default, line))
}
