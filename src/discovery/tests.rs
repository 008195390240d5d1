use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

fn peer(name: &str, port: u16, code_number: Option<u16>) -> Peer {
    Peer {
        name: name.into(),
        role: PeerRole::Recv,
        host: "h-xfer-7171.local".into(),
        port,
        addrs: vec![SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), port)],
        protocol: Some(1),
        code_required: code_number.is_some(),
        code_number,
    }
}

fn keys_of(pairs: &[(&str, &str)]) -> Option<txt::Keys> {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    txt::decode(|key| map.get(key).copied())
}

#[test]
fn txt_keys_round_trip() {
    for number in [None, Some(7), Some(4821)] {
        let pairs = txt::encode(PeerRole::Recv, number);
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let keys = keys_of(&borrowed).unwrap();
        assert_eq!(keys.role, PeerRole::Recv);
        assert_eq!(keys.protocol, Some(crate::protocol::PROTOCOL_VERSION));
        assert_eq!(keys.code_required, number.is_some());
        assert_eq!(keys.code_number, number);
    }
    let serve = txt::encode(PeerRole::Serve, None);
    assert!(serve.contains(&("role", "serve".to_owned())));
    assert!(txt::encode(PeerRole::Recv, Some(7)).contains(&("num", "0007".to_owned())));
}

#[test]
fn txt_is_read_leniently_but_never_guesses_a_role() {
    assert_eq!(keys_of(&[("code", "yes")]), None, "no role");
    assert_eq!(keys_of(&[("role", "printer")]), None, "unknown role");
    assert_eq!(keys_of(&[("role", "recv"), ("txtvers", "2")]), None);
    let bare = keys_of(&[("role", "recv"), ("extra", "x")]).unwrap();
    assert_eq!((bare.protocol, bare.code_required), (None, false));
    // A number without code=yes, or one that is not 4 digits, is ignored.
    let stray = keys_of(&[("role", "recv"), ("num", "1234")]).unwrap();
    assert_eq!(stray.code_number, None);
    let odd = keys_of(&[("role", "recv"), ("code", "yes"), ("num", "+123")]).unwrap();
    assert_eq!((odd.code_required, odd.code_number), (true, None));
}

#[test]
fn instance_names_are_unescaped() {
    assert_eq!(
        instance_name("laptop._xfer._tcp.local.").as_deref(),
        Some("laptop")
    );
    assert_eq!(
        instance_name(r"Ann\.s Mac\\x._xfer._tcp.local.").as_deref(),
        Some(r"Ann.s Mac\x")
    );
    assert_eq!(instance_name("._xfer._tcp.local."), None);
    assert_eq!(instance_name("laptop._http._tcp.local."), None);
}

#[test]
fn addresses_rank_ipv4_then_ipv6_and_link_local_needs_a_scope() {
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5));
    let v4_ll = IpAddr::V4(Ipv4Addr::new(169, 254, 3, 4));
    let v6: IpAddr = "2001:db8::5".parse::<Ipv6Addr>().unwrap().into();
    let v6_ll: IpAddr = "fe80::5".parse::<Ipv6Addr>().unwrap().into();
    let ranked = rank(
        [
            (v6_ll, 0),
            (v6_ll, 3),
            (v6, 0),
            (v4_ll, 0),
            (IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            (v4, 0),
            (v4, 0),
        ]
        .into_iter(),
        9000,
    );
    let shown: Vec<String> = ranked.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "192.168.1.5:9000",
            "169.254.3.4:9000",
            "[2001:db8::5]:9000",
            "[fe80::5%3]:9000"
        ]
    );
}

#[test]
fn a_scoped_address_becomes_a_destination_the_resolver_reads() {
    let mut p = peer("a", 7171, None);
    p.addrs = vec!["[fe80::5%3]:7171".parse().unwrap()];
    let d = p.destination().unwrap();
    assert_eq!((d.host.as_str(), d.port), ("fe80::5%3", 7171));
    let resolved: Vec<SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(d.host.as_str(), d.port))
            .unwrap()
            .collect();
    assert_eq!(resolved, p.addrs);
}

#[test]
fn a_peer_with_several_addresses_keeps_the_others_to_fall_back_on() {
    let mut p = peer("a", 7171, None);
    p.addrs = ["192.168.1.5:7171", "10.0.0.5:7171", "[fe80::5%3]:7171"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let d = p.destination().unwrap();
    assert_eq!((d.host.as_str(), d.port), ("192.168.1.5", 7171));
    assert_eq!(d.fallback, p.addrs[1..]);
    p.addrs.truncate(1);
    assert!(p.destination().unwrap().fallback.is_empty());
}

#[test]
fn an_announced_service_reads_back_as_a_peer() {
    let pairs = txt::encode(PeerRole::Recv, Some(4821));
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        "Ann.s laptop",
        "ann-xfer-7171.local.",
        "192.168.1.5,fe80::1",
        7171,
        pairs.as_slice(),
    )
    .unwrap();
    let peer = peer_of(&info.as_resolved_service()).unwrap();
    assert_eq!(peer.name, "Ann.s laptop");
    assert_eq!(peer.role, PeerRole::Recv);
    assert_eq!(peer.host, "ann-xfer-7171.local");
    assert_eq!(
        (peer.port, peer.code_required, peer.code_number),
        (7171, true, Some(4821))
    );
    // fe80::1 came without a scope, so it cannot be used.
    assert_eq!(peer.addrs, ["192.168.1.5:7171".parse().unwrap()]);
}

#[test]
fn names_are_checked() {
    assert!(check_name("laptop").is_ok());
    assert!(check_name(&"é".repeat(31)).is_ok());
    for bad in ["", "a\u{1b}[2J", &"x".repeat(64)] {
        assert!(matches!(check_name(bad), Err(Error::Usage(_))), "{bad:?}");
    }
    let name = default_name();
    assert!(check_name(&name).is_ok(), "{name:?}");
    assert!(host_name(7171).ends_with("-xfer-7171.local."));
}

#[test]
fn one_uncoded_receiver_is_chosen_and_coded_ones_are_left_out() {
    let seen = vec![peer("a", 1, Some(1234)), peer("b", 2, None)];
    assert_eq!(
        select(seen.clone(), &Wanted::default()),
        Choice::One(seen[1].clone())
    );
    let coded_only = vec![peer("a", 1, Some(1234))];
    assert_eq!(
        select(coded_only.clone(), &Wanted::default()),
        Choice::Nothing { seen: coded_only }
    );
}

#[test]
fn several_fitting_receivers_are_for_the_user_to_pick() {
    let seen = vec![peer("a", 1, None), peer("b", 2, None)];
    assert_eq!(select(seen.clone(), &Wanted::default()), Choice::Many(seen));
    assert_eq!(
        select(Vec::new(), &Wanted::default()),
        Choice::Nothing { seen: Vec::new() }
    );
}

#[test]
fn the_codes_number_picks_its_receiver() {
    let seen = vec![
        peer("a", 1, Some(1234)),
        peer("b", 2, Some(4821)),
        peer("c", 3, None),
    ];
    let wanted = Wanted {
        name: None,
        code_number: Some(4821),
    };
    assert_eq!(select(seen.clone(), &wanted), Choice::One(seen[1].clone()));
    let other = Wanted {
        name: None,
        code_number: Some(9),
    };
    assert!(matches!(select(seen, &other), Choice::Nothing { .. }));
}

#[test]
fn a_name_picks_its_receiver_whatever_its_code() {
    let seen = vec![peer("Alpha", 1, Some(1234)), peer("beta", 2, None)];
    for name in ["alpha", "ALPHA", "alpha.local", "Alpha.local."] {
        let wanted = Wanted {
            name: Some(name),
            code_number: None,
        };
        assert_eq!(
            select(seen.clone(), &wanted),
            Choice::One(seen[0].clone()),
            "{name}"
        );
    }
    let wanted = Wanted {
        name: Some("gamma"),
        code_number: None,
    };
    assert!(matches!(select(seen, &wanted), Choice::Nothing { .. }));
}
