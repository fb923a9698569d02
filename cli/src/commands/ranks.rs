//! `--rank`: which ranks a command names, the one request sent to each of them at once on
//! modctl's connection (RFC 7 §7), and how each rank's failure is reported. What each command
//! prints for a rank that answered is the command's own.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use switchboard_client::{Client, ClientError};
use switchboard_protocol::{mgmt::BrokerInfo, ranks::RankSet, Errno, Message};

use crate::{CliError, Context};

/// The most ranks one `--rank` list may name: far more than any instance has, and few enough
/// that a typo such as `0-4000000000` is refused instead of sending billions of requests.
const MAX_RANKS: u64 = 1 << 20;

/// The ranks `set` names, in order. `all` asks the broker modctl is connected to how many the
/// instance has (`broker.info`); a list is taken as written, so ranks the instance does not
/// have are sent too and fail one by one, as the broker answers them (EHOSTUNREACH).
pub fn resolve(client: &mut Client, set: &RankSet) -> Result<Vec<u32>, CliError> {
    match set {
        RankSet::All => Ok((0..size(client)?).collect()),
        RankSet::Ranges(ranges) => {
            let count: u64 = ranges.iter().map(|&(lo, hi)| u64::from(hi - lo) + 1).sum();
            if count > MAX_RANKS {
                return Err(CliError::Usage(format!(
                    "--rank {set} names {count} ranks; at most {MAX_RANKS} at once (write 'all' for every rank)"
                )));
            }
            Ok(ranges.iter().flat_map(|&(lo, hi)| lo..=hi).collect())
        }
    }
}

/// How many brokers the instance of the broker modctl is connected to has (`broker.info`).
pub fn size(client: &mut Client) -> Result<u32, CliError> {
    let reply = client.rpc("broker.info", &()).doing("broker.info (to learn the instance's size)")?;
    let info: BrokerInfo = reply
        .decode()
        .map_err(|e| CliError::Usage(format!("broker.info: the broker sent an unexpected reply: {e}")))?;
    Ok(info.size.max(1))
}

/// One rank's answer: its decoded reply, or the error to print for it.
pub struct Answer<T> {
    pub rank: u32,
    /// From the request's write to its response.
    pub elapsed: Duration,
    pub result: Result<T, String>,
    /// The error number when the broker answered with an error.
    pub errno: Option<Errno>,
}

/// `topic` with `payload` to every rank at once (pipelined, one matchtag each); the answers
/// in rank order, each decoded into `T`. `Err` only when the connection itself fails.
pub fn each<T: DeserializeOwned>(
    client: &mut Client,
    ranks: &[u32],
    what: &str,
    topic: &str,
    payload: Bytes,
    timeout: Option<Duration>,
) -> Result<Vec<Answer<T>>, CliError> {
    Ok(each_raw(client, ranks, what, topic, payload, timeout)?
        .into_iter()
        .map(|a| Answer {
            rank: a.rank,
            elapsed: a.elapsed,
            result: a.result.and_then(|m| m.decode().map_err(|e| format!("the broker sent an unexpected reply: {e}"))),
            errno: a.errno,
        })
        .collect())
}

/// `each` without decoding: the response messages themselves.
pub fn each_raw(
    client: &mut Client,
    ranks: &[u32],
    what: &str,
    topic: &str,
    payload: Bytes,
    timeout: Option<Duration>,
) -> Result<Vec<Answer<Message>>, CliError> {
    let replies = client.rpc_ranks(ranks, topic, payload, timeout).doing(what)?;
    let error = |e: ClientError| match (e, timeout) {
        (ClientError::Timeout, Some(t)) => {
            let ms = t.as_millis();
            format!("no response within {ms} ms (--timeout {ms})")
        }
        (e, _) => e.to_string(),
    };
    Ok(replies
        .into_iter()
        .map(|r| {
            let errno = match &r.result {
                Err(ClientError::Remote(e)) => Some(e.errnum),
                _ => None,
            };
            Answer { rank: r.rank, elapsed: r.elapsed, result: r.result.map_err(error), errno }
        })
        .collect())
}

/// A request's msgpack payload.
pub fn payload<T: serde::Serialize + ?Sized>(value: &T) -> Result<Bytes, CliError> {
    Message::encode_payload(value).map_err(|e| CliError::Usage(format!("payload: {e}")))
}

/// The failures seen so far, and how many ranks were asked.
pub struct Failures {
    what: String,
    failed: Vec<u32>,
    asked: usize,
}

impl Failures {
    pub fn new(what: impl Into<String>, asked: usize) -> Self {
        Failures { what: what.into(), failed: Vec::new(), asked }
    }

    /// Print `modctl: rank N: WHAT: ERROR` on standard error and remember rank N.
    pub fn fail(&mut self, rank: u32, error: &str) {
        eprintln!("modctl: rank {rank}: {}: {error}", self.what);
        self.failed.push(rank);
    }

    /// The answer's value, or None after reporting its failure.
    pub fn take<T>(&mut self, answer: Answer<T>) -> Option<(u32, T)> {
        match answer.result {
            Ok(v) => Some((answer.rank, v)),
            Err(e) => {
                self.fail(answer.rank, &e);
                None
            }
        }
    }

    /// Whether some rank failed so far.
    pub fn any(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Whether every rank asked failed (none answered).
    pub fn all(&self) -> bool {
        self.failed.len() >= self.asked
    }

    /// Ok if no rank failed; otherwise the error that ends modctl with status 1, naming them.
    pub fn finish(self) -> Result<(), CliError> {
        if self.failed.is_empty() {
            return Ok(());
        }
        let failed: RankSet = self.failed.iter().copied().collect();
        let mut distinct = self.failed;
        distinct.sort_unstable();
        distinct.dedup();
        Err(CliError::Ranks { what: self.what, failed, count: distinct.len(), asked: self.asked })
    }
}

/// One rank's entry in a `--json` answer: `{"rank": N, KEY: VALUE}` or `{"rank": N, "error":
/// TEXT}`, the rank first.
#[derive(serde::Serialize)]
pub struct RankJson {
    rank: u32,
    #[serde(flatten)]
    entry: std::collections::BTreeMap<String, serde_json::Value>,
}

impl RankJson {
    pub fn new<T: serde::Serialize>(rank: u32, key: &str, result: Result<&T, &str>) -> Self {
        let (key, value) = match result {
            Ok(v) => (key, serde_json::to_value(v).unwrap_or_default()),
            Err(e) => ("error", serde_json::Value::from(e)),
        };
        RankJson { rank, entry: [(key.to_string(), value)].into() }
    }
}

/// Refuse `--rank` for a command that cannot take it, saying why.
pub fn refuse(command: &str, why: &str) -> CliError {
    CliError::Usage(format!("--rank does not apply to {command}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_end_with_the_ranks_written_as_a_set() {
        let mut f = Failures::new("load echo", 4);
        assert!(f.take(Answer { rank: 0, elapsed: Duration::ZERO, result: Ok(()), errno: None }).is_some());
        for r in [6, 3, 5] {
            f.fail(r, "EHOSTUNREACH: gone");
        }
        let e = f.finish().expect_err("three ranks failed");
        assert_eq!(e.to_string(), "load echo: failed on ranks 3,5-6 (3 of 4)");
        let mut f = Failures::new("list", 1);
        f.fail(3, "EHOSTUNREACH: gone");
        // A rank failing twice (two ping rounds) counts once.
        f.fail(3, "EHOSTUNREACH: gone");
        assert_eq!(f.finish().expect_err("one rank failed").to_string(), "list: failed on rank 3 (1 of 1)");
        assert!(Failures::new("list", 2).finish().is_ok());
    }

    #[test]
    fn a_rank_in_json_comes_first_with_its_answer_or_its_error() {
        let ok = serde_json::to_string(&RankJson::new(2, "modules", Ok(&vec![1, 2]))).expect("json");
        assert_eq!(ok, r#"{"rank":2,"modules":[1,2]}"#);
        let err = serde_json::to_string(&RankJson::new::<()>(3, "modules", Err("EHOSTUNREACH: gone"))).expect("json");
        assert_eq!(err, r#"{"rank":3,"error":"EHOSTUNREACH: gone"}"#);
    }
}
