//! An instance of several `switchboard` processes joined by the overlay (RFC 7), for the
//! end-to-end tests: a fresh certificate from `switchboard keygen`, a site file whose
//! `[overlay]` puts every rank on loopback TCP ports that were free when chosen, and one
//! broker process per rank started with `--rank`. Ranks can be killed and restarted.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use switchboard_client::Client;

use crate::{bin, json, rpc, wait_until, Broker};

pub struct Instance {
    pub dir: tempfile::TempDir,
    pub site: PathBuf,
    pub size: u32,
    brokers: Vec<Option<Broker>>,
    /// The user every broker runs as (None: this test's).
    uid: Option<u32>,
}

/// A loopback TCP port nobody listens on, held until the listener is dropped (so that a
/// second call does not get the same port).
pub fn free_port() -> (u16, std::net::TcpListener) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    (l.local_addr().expect("local address").port(), l)
}

/// `switchboard keygen PATH`.
pub fn keygen(path: &std::path::Path) {
    let out = Command::new(bin("switchboard")).arg("keygen").arg(path).output().expect("run switchboard keygen");
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `[overlay]` table of an instance of `size` brokers on loopback, certificate `cert`.
pub fn overlay_table(size: u32, fanout: u32, cert: &str) -> String {
    let mut hosts = String::new();
    let mut held = Vec::new();
    for r in 0..size {
        let has_children = u64::from(r) * u64::from(fanout) + 1 < u64::from(size);
        if has_children {
            let (p, listener) = free_port();
            held.push(listener);
            hosts.push_str(&format!(
                "  {{ host = \"127.0.0.1\", bind = \"tcp://127.0.0.1:{p}\", connect = \"tcp://127.0.0.1:{p}\" }},\n"
            ));
        } else {
            hosts.push_str("  { host = \"127.0.0.1\" },\n");
        }
    }
    format!("[overlay]\ncurve_cert = \"{cert}\"\nfanout = {fanout}\nhosts = [\n{hosts}]\n")
}

impl Instance {
    /// Start `size` brokers in a tree of fanout `fanout`, with `modules` (site file text,
    /// `[[module]]` tables) appended to the site file, and wait until every rank is `full`.
    pub fn start(size: u32, fanout: u32, modules: &str) -> Instance {
        Self::start_as(size, fanout, modules, None)
    }

    /// `start`, every broker running as user `uid` (root only) and admitting guests, so this
    /// test's clients are guests.
    pub fn start_as(size: u32, fanout: u32, modules: &str, uid: Option<u32>) -> Instance {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert");
        keygen(&cert);
        if let Some(uid) = uid {
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::chown(&cert, Some(uid), None).expect("chown the certificate");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let site = dir.path().join("site.toml");
        std::fs::write(&site, format!("{}\n{modules}", overlay_table(size, fanout, "cert"))).expect("write site");
        let mut inst = Instance { dir, site, size, brokers: Vec::new(), uid };
        for r in 0..size {
            let b = inst.spawn(r);
            inst.brokers.push(Some(b));
        }
        inst.wait_full();
        inst
    }

    fn spawn(&self, rank: u32) -> Broker {
        let site = self.site.display().to_string();
        Broker::start_site_args(&["--config", &site, "--rank", &rank.to_string()], self.uid)
    }

    pub fn broker(&self, rank: u32) -> &Broker {
        self.brokers[rank as usize].as_ref().expect("rank is running")
    }

    pub fn client(&self, rank: u32) -> Client {
        self.broker(rank).client()
    }

    /// SIGKILL rank `rank`'s broker.
    pub fn kill(&mut self, rank: u32) {
        if let Some(mut b) = self.brokers[rank as usize].take() {
            b.kill();
        }
    }

    /// Start rank `rank` again (after `kill`).
    pub fn restart(&mut self, rank: u32) {
        let b = self.spawn(rank);
        self.brokers[rank as usize] = Some(b);
    }

    /// `overlay.status` of rank 0.
    pub fn status(&self) -> Value {
        let mut c = self.client(0);
        json(&rpc(&mut c, "overlay.status", serde_json::json!({})).expect("overlay.status"))
    }

    /// Wait until every rank is `full` in rank 0's view.
    pub fn wait_full(&self) {
        let ok = wait_until(|| all_states(&self.status()).iter().all(|(_, s)| s == "full"));
        assert!(ok, "the instance never became full: {:#}\nrank 0's log:\n{}", self.status(), self.broker(0).log());
    }
}

/// (rank, state) of every rank in an `overlay.status` tree.
pub fn all_states(tree: &Value) -> Vec<(u64, String)> {
    let mut out = vec![(tree["rank"].as_u64().unwrap_or(u64::MAX), tree["state"].as_str().unwrap_or("").to_string())];
    for c in tree["children"].as_array().into_iter().flatten() {
        out.extend(all_states(c));
    }
    out
}
