//! Finding xfer peers on the LAN without typing an address: DNS-SD service
//! records over mDNS (RFC 6762/6763), through the `mdns-sd` crate (its own
//! thread and sockets; nothing here builds a packet).
//!
//! A peer [`announce`]s `_xfer._tcp.local.` with its port and a few TXT keys
//! ([`txt`]); [`browse`] collects the peers of one [`PeerRole`] seen within
//! a bounded wait. What is found is a hint, never trust: only a code's PAKE
//! authenticates the peer (SECURITY.md, "Discovery").
//!
//! [`select`] is the sender's choice among what was seen, a pure function;
//! [`present`] is what a person or a script sees of it all.
//!
//! Both calls block (browsing for as long as asked); call them from
//! `spawn_blocking` in async code.

pub mod present;
mod select;
pub mod txt;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use mdns_sd::{
    DaemonEvent, IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo,
};

use crate::error::Error;
use crate::sender::Destination;

pub use select::{select, Choice, Wanted};

/// The DNS-SD service type every xfer peer announces.
pub const SERVICE_TYPE: &str = "_xfer._tcp.local.";

/// How long `xfer send` without an address looks for receivers: long
/// enough for a second query (mdns-sd repeats its first one after 1 s) and
/// the responders' random delay of up to 120 ms.
pub const SEND_BROWSE_WAIT: Duration = Duration::from_millis(1500);

/// Longest instance name DNS allows in one label.
pub const MAX_NAME_LEN: usize = 63;

/// How long to wait for the mDNS thread to confirm a withdrawal or a stop.
const DAEMON_REPLY: Duration = Duration::from_secs(1);

/// How long a browse that found what it wanted still takes in updates.
const MORE_ADDRESSES: Duration = Duration::from_millis(200);

/// mdns-sd sends each goodbye once more after 120 ms; stay that long.
const GOODBYE_REPEAT: Duration = Duration::from_millis(150);

/// What a peer offers, as its TXT `role` key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerRole {
    /// `xfer recv`: takes files pushed to it.
    Recv,
    /// `xfer serve`: offers files to be pulled.
    Serve,
}

impl PeerRole {
    /// The TXT value.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Recv => "recv",
            PeerRole::Serve => "serve",
        }
    }

    fn from_txt(value: &str) -> Option<PeerRole> {
        match value {
            "recv" => Some(PeerRole::Recv),
            "serve" => Some(PeerRole::Serve),
            _ => None,
        }
    }
}

/// What to announce.
#[derive(Debug, Clone)]
pub struct Advert {
    /// Instance name, as people pick it with `--to` (see [`check_name`]).
    pub name: String,
    pub role: PeerRole,
    /// The bound listening socket: its port, and which addresses to name.
    pub listen: SocketAddr,
    /// The public number of the code this peer requires, if any.
    pub code_number: Option<u16>,
}

/// An xfer peer seen on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The instance name (`--name` of that peer).
    pub name: String,
    pub role: PeerRole,
    /// The host name its SRV record points at.
    pub host: String,
    pub port: u16,
    /// Its addresses, the most useful first (see [`rank`]); IPv6 link-local
    /// ones carry the scope id of the interface they were seen on.
    pub addrs: Vec<SocketAddr>,
    /// Its protocol version (TXT `proto`), when it said one.
    pub protocol: Option<u32>,
    /// It requires a code (TXT `code=yes`).
    pub code_required: bool,
    /// The public number of that code (TXT `num`).
    pub code_number: Option<u16>,
}

impl Peer {
    /// The address to connect to first.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addrs.first().copied()
    }

    /// Where `xfer send` goes for this peer: its best address, then the
    /// others it announced in turn when that one cannot be reached. A
    /// scoped IPv6 address keeps its `%index` (the resolver understands it).
    pub fn destination(&self) -> Option<Destination> {
        self.addr().map(|addr| Destination {
            host: match addr {
                SocketAddr::V6(v6) if v6.scope_id() != 0 => {
                    format!("{}%{}", v6.ip(), v6.scope_id())
                }
                other => other.ip().to_string(),
            },
            port: addr.port(),
            fallback: self.addrs.iter().skip(1).copied().collect(),
        })
    }
}

/// A live announcement. Dropping it (or [`Announcement::withdraw`]) says
/// goodbye: the records go out once more with TTL 0, so browsers forget the
/// peer at once instead of after the records' lifetime.
pub struct Announcement {
    daemon: Option<ServiceDaemon>,
    fullname: String,
    name: String,
}

impl Announcement {
    /// The instance name announced.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Withdraws the announcement now, waiting (bounded) for the goodbyes
    /// to leave.
    pub fn withdraw(mut self) {
        self.goodbye();
    }

    fn goodbye(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        match daemon.unregister(&self.fullname) {
            Ok(status) => {
                if status.recv_timeout(DAEMON_REPLY).is_ok() {
                    std::thread::sleep(GOODBYE_REPEAT);
                }
            }
            Err(e) => log::debug!("mDNS: cannot withdraw '{}': {e}", self.name),
        }
        stop(daemon);
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        self.goodbye();
    }
}

impl std::fmt::Debug for Announcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcement")
            .field("name", &self.name)
            .finish()
    }
}

/// Checks an instance name: 1 to 63 bytes of UTF-8 without control
/// characters (RFC 6763 §4.1.1).
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::Usage(format!(
            "invalid --name '{name}': it must be 1 to {MAX_NAME_LEN} bytes long"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::Usage(
            "invalid --name: it contains control characters".into(),
        ));
    }
    Ok(())
}

/// This machine's host name, cut to a valid instance name: the default
/// `--name`.
pub fn default_name() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host = host.split('.').next().unwrap_or_default();
    let mut name: String = host.chars().filter(|c| !c.is_control()).collect();
    while name.len() > MAX_NAME_LEN {
        name.pop();
    }
    if name.is_empty() {
        "xfer".to_owned()
    } else {
        name
    }
}

/// Announces `advert` on every interface its listener is reachable on, or
/// returns `None` when it listens on loopback only (nobody else could
/// connect). A failure to start mDNS is an error; the caller decides
/// whether that is fatal.
pub fn announce(advert: &Advert) -> Result<Option<Announcement>, Error> {
    let ip = advert.listen.ip();
    if ip.is_loopback() {
        return Ok(None);
    }
    check_name(&advert.name)?;
    let daemon = start()?;
    let host = host_name(advert.listen.port());
    let properties = txt::encode(advert.role, advert.code_number);
    let (addrs, interfaces) = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => (Vec::new(), vec![IfKind::IPv4]),
        // `[::]` is dual-stack on Linux (bindv6only is off by default).
        IpAddr::V6(v6) if v6.is_unspecified() => (Vec::new(), vec![IfKind::All]),
        specific => (vec![specific], vec![IfKind::Addr(specific)]),
    };
    let auto = addrs.is_empty();
    let mut info = ServiceInfo::new(
        SERVICE_TYPE,
        &advert.name,
        &host,
        addrs.as_slice(),
        advert.listen.port(),
        properties.as_slice(),
    )
    .map_err(|e| discovery_error("cannot build the announcement", &e))?;
    if auto {
        info = info.enable_addr_auto();
    }
    info.set_interfaces(interfaces);
    let fullname = info.get_fullname().to_owned();
    watch_renames(&daemon);
    daemon
        .register(info)
        .map_err(|e| discovery_error("cannot announce", &e))?;
    Ok(Some(Announcement {
        daemon: Some(daemon),
        fullname,
        name: advert.name.clone(),
    }))
}

/// The peers of `role` seen within `wait`, sorted by name.
pub fn browse(role: Option<PeerRole>, wait: Duration) -> Result<Vec<Peer>, Error> {
    browse_until(role, wait, |_| false)
}

/// Like [`browse`], but stops soon (200 ms, for the rest of its addresses)
/// after `enough` says yes to a peer.
pub fn browse_until(
    role: Option<PeerRole>,
    wait: Duration,
    mut enough: impl FnMut(&Peer) -> bool,
) -> Result<Vec<Peer>, Error> {
    let daemon = start()?;
    let events = daemon
        .browse(SERVICE_TYPE)
        .map_err(|e| discovery_error("cannot browse", &e))?;
    let mut deadline = Instant::now() + wait;
    let mut found = BTreeMap::new();
    while let Ok(event) = events.recv_deadline(deadline) {
        match event {
            ServiceEvent::ServiceResolved(resolved) => {
                let Some(peer) = peer_of(&resolved) else {
                    continue;
                };
                if role.is_some_and(|r| r != peer.role) {
                    continue;
                }
                if enough(&peer) {
                    // Answers on the other interfaces and address families
                    // come right behind the first: wait for them briefly,
                    // so an IPv4 address is not passed over for a later one.
                    deadline = deadline.min(Instant::now() + MORE_ADDRESSES);
                }
                found.insert(resolved.fullname.to_lowercase(), peer);
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                found.remove(&fullname.to_lowercase());
            }
            _ => {}
        }
    }
    stop(daemon);
    let mut peers: Vec<Peer> = found.into_values().collect();
    peers.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
    Ok(peers)
}

/// Says so when mDNS probing finds the instance name taken and the daemon
/// renames ours (`NAME (2)`): `--to` must then use the new name. The
/// daemon may report one rename more than once on an interface (once per
/// address family probed); it is said once per interface. The thread ends when the daemon
/// stops and closes the channel.
fn watch_renames(daemon: &ServiceDaemon) {
    let Ok(events) = daemon.monitor() else {
        return;
    };
    let watch = move || {
        let mut said = std::collections::HashSet::new();
        while let Ok(event) = events.recv() {
            if let DaemonEvent::NameChange(change) = event {
                let (Some(old), Some(new)) = (
                    instance_name(&change.original),
                    instance_name(&change.new_name),
                ) else {
                    continue;
                };
                if !said.insert((new.clone(), change.intf_name.clone())) {
                    continue;
                }
                log::warn!(
                    "the name '{old}' is taken on the LAN ({}); announced as '{new}' there",
                    change.intf_name
                );
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("mdns-renames".into())
        .spawn(watch)
    {
        log::debug!("mDNS: cannot watch for renames: {e}");
    }
}

/// A daemon on every interface but loopback: a loopback-only peer is not
/// announced, and answers from this machine arrive on its other interfaces.
fn start() -> Result<ServiceDaemon, Error> {
    let daemon = ServiceDaemon::new().map_err(|e| discovery_error("cannot start mDNS", &e))?;
    if let Err(e) = daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6]) {
        log::debug!("mDNS: cannot leave loopback out: {e}");
    }
    Ok(daemon)
}

fn stop(daemon: ServiceDaemon) {
    if let Ok(status) = daemon.shutdown() {
        let _ = status.recv_timeout(DAEMON_REPLY);
    }
}

fn discovery_error(what: &str, e: &mdns_sd::Error) -> Error {
    Error::Discovery(format!("{what} on the LAN (mDNS): {e}"))
}

/// The SRV target: this host's name with the port, so two receivers on one
/// machine never publish different addresses under one name, and no name
/// the system's own mDNS responder owns is claimed.
fn host_name(port: u16) -> String {
    let label: String = default_name()
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{}-xfer-{port}.local.", label.trim_matches('-'))
}

/// A resolved service as a [`Peer`], or `None` when it is not an xfer
/// peer this build understands (unknown role, no usable address).
fn peer_of(resolved: &ResolvedService) -> Option<Peer> {
    let name = instance_name(&resolved.fullname)?;
    let keys = txt::decode(|key| resolved.get_property_val_str(key))?;
    let addrs = rank(resolved.addresses.iter().filter_map(scoped), resolved.port);
    if addrs.is_empty() {
        return None;
    }
    Some(Peer {
        name,
        role: keys.role,
        host: resolved.host.trim_end_matches('.').to_owned(),
        port: resolved.port,
        addrs,
        protocol: keys.protocol,
        code_required: keys.code_required,
        code_number: keys.code_number,
    })
}

/// An address with the scope id of the interface it was seen on (IPv6).
fn scoped(ip: &ScopedIp) -> Option<(IpAddr, u32)> {
    match ip {
        ScopedIp::V4(v4) => Some((IpAddr::V4(*v4.addr()), 0)),
        ScopedIp::V6(v6) => Some((IpAddr::V6(*v6.addr()), v6.scope_id().index)),
        _ => None,
    }
}

/// The instance part of `<instance>._xfer._tcp.local.`, unescaped (DNS-SD
/// escapes `.` and `\` inside an instance label).
fn instance_name(fullname: &str) -> Option<String> {
    let escaped = fullname
        .strip_suffix(SERVICE_TYPE)
        .or_else(|| fullname.strip_suffix(SERVICE_TYPE.trim_end_matches('.')))?
        .strip_suffix('.')?;
    let mut name = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => name.push(chars.next()?),
            c => name.push(c),
        }
    }
    (!name.is_empty()).then_some(name)
}

/// Usable socket addresses, best first: IPv4 (link-local 169.254/16 last
/// of those), then routable IPv6, then IPv6 link-local — which needs its
/// scope id, and is dropped without one. Loopback and unspecified
/// addresses are dropped: they would name the sender's own machine.
fn rank(ips: impl Iterator<Item = (IpAddr, u32)>, port: u16) -> Vec<SocketAddr> {
    let mut ranked: Vec<(u8, SocketAddr)> = ips
        .filter(|(ip, _)| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast())
        .filter_map(|(ip, scope)| match ip {
            IpAddr::V4(v4) => Some((u8::from(v4.is_link_local()), SocketAddr::new(ip, port))),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => {
                (scope != 0).then(|| (3, SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))))
            }
            IpAddr::V6(_) => Some((2, SocketAddr::new(ip, port))),
        })
        .collect();
    ranked.sort();
    ranked.dedup();
    ranked.into_iter().map(|(_, addr)| addr).collect()
}

#[cfg(test)]
mod tests;
