//! The site file's `[overlay]` table checked (RFC 7 §2.2): the instance's hosts in rank order
//! with their bind and connect addresses (defaults and `%h`/`%p` filled in), the fanout, and
//! the certificate, read (and refused if others may read it). Finding this broker's own rank is
//! `OverlaySite::rank_of`. Nothing here opens a socket.

use std::path::{Path, PathBuf};

use super::file;
use crate::overlay::{Certificate, Topology};

/// Where a broker with children listens, unless its host or the table says otherwise.
pub const DEFAULT_BIND: &str = "tcp://*:%p";
/// Where a child finds its parent, unless said otherwise.
pub const DEFAULT_CONNECT: &str = "tcp://%h:%p";
pub const DEFAULT_PORT: u16 = 8050;
pub const DEFAULT_FANOUT: u32 = 2;

/// A checked `[overlay]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySite {
    pub curve_cert: PathBuf,
    /// Its keys, read when the file was checked.
    pub cert: Certificate,
    /// In rank order.
    pub hosts: Vec<HostSite>,
    pub fanout: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSite {
    pub host: String,
    /// None for a broker that has no children and so binds nothing.
    pub bind: Option<String>,
    pub connect: String,
}

/// A mistake in `[overlay]`: the byte span it is at, and what is wrong (naming the key).
pub type Mistake = (std::ops::Range<usize>, String);

impl OverlaySite {
    pub fn check(raw: &toml::Spanned<file::Overlay>, base: &Path) -> Result<OverlaySite, Mistake> {
        let table = raw.get_ref();
        let fanout = match &table.fanout {
            Some(f) if *f.get_ref() == 0 => return Err((f.span(), "key `fanout`: it must be at least 1".into())),
            Some(f) => *f.get_ref(),
            None => DEFAULT_FANOUT,
        };
        let port = match &table.default_port {
            Some(p) => match u16::try_from(*p.get_ref()) {
                Ok(port) if port > 0 => port,
                _ => {
                    return Err((
                        p.span(),
                        format!("key `default_port`: {} is not a port from 1 to 65535", p.get_ref()),
                    ))
                }
            },
            None => DEFAULT_PORT,
        };
        let hosts = table.hosts.get_ref();
        if hosts.is_empty() {
            return Err((table.hosts.span(), "key `hosts`: no hosts: list one table per rank, rank 0 first".into()));
        }
        let size = u32::try_from(hosts.len())
            .map_err(|_| (table.hosts.span(), "key `hosts`: more ranks than a rank can number".to_string()))?;
        let default_bind = table.default_bind.as_ref().map_or(DEFAULT_BIND, |b| b.get_ref().as_str());
        let default_connect = table.default_connect.as_ref().map_or(DEFAULT_CONNECT, |c| c.get_ref().as_str());
        let mut checked = Vec::with_capacity(hosts.len());
        for (rank, h) in (0..size).zip(hosts) {
            let entry = h.get_ref();
            if entry.host.trim().is_empty() {
                return Err((h.span(), format!("key `hosts`: rank {rank} has an empty `host`")));
            }
            let fill = |uri: &str| uri.replace("%h", &entry.host).replace("%p", &port.to_string());
            let has_children = Topology { rank, size, fanout }.children().next().is_some();
            let bind = entry.bind.as_deref().unwrap_or(default_bind);
            if has_children && bind.trim().is_empty() {
                return Err((h.span(), format!("key `hosts`: rank {rank} has children but no bind address")));
            }
            let connect = fill(entry.connect.as_deref().unwrap_or(default_connect));
            checked.push(HostSite { host: entry.host.clone(), bind: has_children.then(|| fill(bind)), connect });
        }
        let cert = &table.curve_cert;
        let curve_cert = super::absolute(base, cert.get_ref());
        let keys = Certificate::read(&curve_cert).map_err(|e| (cert.span(), format!("key `curve_cert`: {e}")))?;
        Ok(OverlaySite { curve_cert, cert: keys, hosts: checked, fanout })
    }

    pub fn size(&self) -> u32 {
        self.hosts.len() as u32
    }

    /// This broker's rank: `given` (`--rank`) if set, else the one host named as this
    /// machine (compared up to the first dot).
    pub fn rank_of(&self, hostname: &str, given: Option<u32>) -> Result<u32, String> {
        if let Some(rank) = given {
            return match rank < self.size() {
                true => Ok(rank),
                false => Err(format!("rank {rank} is out of range: the instance has {} brokers", self.size())),
            };
        }
        let short = |h: &str| h.split('.').next().unwrap_or(h).to_ascii_lowercase();
        let me = short(hostname);
        let mine: Vec<u32> = (0..self.size()).filter(|&r| short(&self.hosts[r as usize].host) == me).collect();
        match mine[..] {
            [rank] => Ok(rank),
            [] => Err(format!("no entry of `hosts` is this machine ({hostname}); give the broker --rank N")),
            _ => Err(format!("`hosts` names this machine ({hostname}) more than once; give each broker --rank N")),
        }
    }
}
