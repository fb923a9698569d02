//! A child's stdout and stderr, line by line, into the broker's log under the module's name.
//! Lines printed before the module runs (during the handshake) are kept and replayed once it
//! has a port; the last few stderr lines are kept to explain a failure.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_module_api::Level;

use crate::module::BrokerPort;

/// Stderr lines kept to explain how a child ended.
const KEEP: usize = 5;
/// Lines held back before the module runs, at most.
const HOLD: usize = 200;

#[derive(Default)]
pub struct Output {
    state: Mutex<State>,
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
    /// Start forwarding the child's piped stdout and stderr.
    pub fn capture(process: &mut std::process::Child) -> Arc<Output> {
        let out = Arc::new(Output::default());
        if let Some(s) = process.stdout.take() {
            out.forward(s, Level::Info, false);
        }
        if let Some(s) = process.stderr.take() {
            out.forward(s, Level::Warn, true);
        }
        out
    }

    fn forward(self: &Arc<Self>, stream: impl Read + Send + 'static, default: Level, is_stderr: bool) {
        let me = self.clone();
        let _ = std::thread::Builder::new().name("mod-output".into()).stack_size(64 * 1024).spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                me.line(&line, default, is_stderr);
            }
        });
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
    pub fn last_words(&self) -> String {
        Self::settle();
        self.state.lock().last_stderr.back().cloned().unwrap_or_default()
    }

    /// The last line on stdout or stderr ("" if it printed nothing at all).
    pub fn last_line(&self) -> String {
        Self::settle();
        self.state.lock().last_line.clone()
    }

    /// Give the forwarding threads a moment to read what a dying child wrote last.
    fn settle() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A line may start with its level (`error: `, `warn: `, `info: `, `debug: `).
fn classify(line: &str, default: Level) -> (Level, &str) {
    for (prefix, level) in
        [("error: ", Level::Error), ("warn: ", Level::Warn), ("info: ", Level::Info), ("debug: ", Level::Debug)]
    {
        if let Some(rest) = line.strip_prefix(prefix) {
            return (level, rest);
        }
    }
    (default, line)
}
