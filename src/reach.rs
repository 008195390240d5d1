//! How the other machine reaches this one: the addresses a listener can be
//! reached at, for the "on the other machine: xfer send FILE IP:PORT" lines.

use std::net::{IpAddr, SocketAddr};

/// At most this many addresses are listed; a machine with more is a router.
const MAX_LISTED: usize = 6;

/// The addresses another machine on the LAN could use to reach a listener
/// bound to `local`: the bound address itself, or for a wildcard every
/// interface address of its family (IPv4 too for `[::]`, which accepts both
/// on Linux). Loopback is never listed, nor IPv6 link-local addresses,
/// which need an interface name on the other side.
pub fn addresses(local: SocketAddr) -> Vec<SocketAddr> {
    let ips = if local.ip().is_unspecified() {
        interface_ips(local.is_ipv6())
    } else {
        vec![local.ip()]
    };
    let mut seen: Vec<SocketAddr> = Vec::new();
    for ip in ips.into_iter().filter(usable) {
        let addr = SocketAddr::new(ip, local.port());
        if !seen.contains(&addr) && seen.len() < MAX_LISTED {
            seen.push(addr);
        }
    }
    seen
}

fn interface_ips(with_v6: bool) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    if !with_v6 {
        ips.retain(IpAddr::is_ipv4);
    }
    // IPv4 first: shorter to type, and what most LANs use.
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

/// Worth telling another machine: not loopback, unspecified, multicast or
/// IPv6 link-local.
fn usable(ip: &IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80 && v6.to_ipv4_mapped().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listeners_have_nothing_to_tell() {
        assert!(addresses("127.0.0.1:7171".parse().unwrap()).is_empty());
        assert!(addresses("[::1]:7171".parse().unwrap()).is_empty());
    }

    #[test]
    fn a_bound_address_is_the_one_listed() {
        assert_eq!(
            addresses("192.168.1.20:7171".parse().unwrap()),
            vec!["192.168.1.20:7171".parse::<SocketAddr>().unwrap()]
        );
        assert!(addresses("[fe80::1]:7171".parse().unwrap()).is_empty());
    }

    #[test]
    fn a_wildcard_lists_interface_addresses_but_never_loopback() {
        let listed = addresses("0.0.0.0:7171".parse().unwrap());
        assert!(listed.len() <= MAX_LISTED);
        for addr in &listed {
            assert!(addr.is_ipv4() && !addr.ip().is_loopback(), "{addr}");
            assert_eq!(addr.port(), 7171);
        }
        let from_interfaces: Vec<IpAddr> = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .map(|i| i.ip())
            .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
            .collect();
        assert_eq!(
            listed.len(),
            from_interfaces.len().min(MAX_LISTED),
            "{listed:?} vs {from_interfaces:?}"
        );
    }
}
