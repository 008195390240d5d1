use super::*;
use crate::sender::Destination;
use clap::CommandFactory;

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn destinations_parse() {
    let d = |h: &str, p| Destination {
        host: h.into(),
        port: p,
        fallback: Vec::new(),
    };
    assert_eq!(parse_destination("host:9").unwrap(), d("host", 9));
    assert_eq!(
        parse_destination("10.0.0.5").unwrap(),
        d("10.0.0.5", DEFAULT_PORT)
    );
    assert_eq!(parse_destination("[::1]:8000").unwrap(), d("::1", 8000));
    assert_eq!(
        parse_destination("[fe80::1]").unwrap(),
        d("fe80::1", DEFAULT_PORT)
    );
    assert_eq!(parse_destination("::1").unwrap(), d("::1", DEFAULT_PORT));
    assert_eq!(
        parse_destination("[::1]:8000").unwrap().to_string(),
        "[::1]:8000"
    );
    for bad in [
        "",
        ":80",
        "host:",
        "host:0",
        "host:65536",
        "host:http",
        "[::1",
        "[nope]:1",
        "a:b:c",
        "[::1]x",
    ] {
        assert!(
            matches!(parse_destination(bad), Err(Error::Usage(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn sizes_parse_plain_bytes() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("1500"), Ok(1500));
    assert_eq!(parse_size(" 1500 "), Ok(1500));
    assert_eq!(parse_size("1500B"), Ok(1500));
    assert_eq!(parse_size("1500b"), Ok(1500));
    assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
}

#[test]
fn sizes_parse_binary_units() {
    assert_eq!(parse_size("512K"), Ok(512 << 10));
    assert_eq!(parse_size("2k"), Ok(2048));
    assert_eq!(parse_size("10M"), Ok(10 << 20));
    assert_eq!(parse_size("10MiB"), Ok(10 << 20));
    assert_eq!(parse_size("10mib"), Ok(10 << 20));
    assert_eq!(parse_size("10Mi"), Ok(10 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
    assert_eq!(parse_size("3T"), Ok(3 << 40));
    assert_eq!(parse_size("3TiB"), Ok(3 << 40));
}

#[test]
fn sizes_parse_decimal_units() {
    assert_eq!(parse_size("10KB"), Ok(10_000));
    assert_eq!(parse_size("10MB"), Ok(10_000_000));
    assert_eq!(parse_size("10mb"), Ok(10_000_000));
    assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
    assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
}

#[test]
fn sizes_parse_fractions_rounding_down() {
    assert_eq!(parse_size("1.5G"), Ok(1_610_612_736));
    assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
    assert_eq!(parse_size("0.5K"), Ok(512));
    assert_eq!(parse_size(".5K"), Ok(512));
    assert_eq!(parse_size("2.K"), Ok(2048));
    // 0.001 KiB is 1.024 bytes, 1.9 bytes is 1 byte: fractions of a byte drop.
    assert_eq!(parse_size("0.001K"), Ok(1));
    assert_eq!(parse_size("1.9"), Ok(1));
    assert_eq!(
        parse_size("0.3333333333333333333333333333333T"),
        Ok(366_503_875_925)
    );
}

#[test]
fn sizes_reject_what_is_not_a_size() {
    for (bad, says) in [
        ("", "empty"),
        ("   ", "empty"),
        ("-1", "negative"),
        ("-1.5G", "negative"),
        ("+5M", "not a number"),
        ("G", "not a number"),
        (".", "not a number"),
        ("1.2.3M", "not a number"),
        ("nan", "not a number"),
        ("inf", "not a number"),
        ("NaN", "not a number"),
        ("1e6", "unknown unit 'e6'"),
        ("5X", "unknown unit 'X'"),
        ("5 MiBs", "unknown unit 'MiBs'"),
        ("5KiBB", "unknown unit 'KiBB'"),
        ("0x10", "unknown unit 'x10'"),
        ("18446744073709551616", "too large"),
        ("99999999T", "too large"),
        ("16777216T", "too large"),
        ("99999999999999999999999999999999999999999", "too large"),
    ] {
        let e = parse_size(bad).expect_err(bad);
        assert!(e.contains(says), "{bad:?}: {e}");
    }
    assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
}

#[test]
fn limit_rate_is_a_size_per_second_on_both_sides_and_zero_is_no_limit() {
    let send = |rate: &str| {
        let cli = Cli::try_parse_from(["xfer", "send", "--limit-rate", rate, "a", "h:1"])?;
        let Command::Send(args) = cli.command else {
            panic!("not send")
        };
        Ok::<_, clap::Error>(args.to_request().unwrap().limit_rate)
    };
    assert_eq!(send("50M").unwrap(), Some(50 << 20));
    assert_eq!(send("1.5MB").unwrap(), Some(1_500_000));
    assert_eq!(send("0").unwrap(), None);
    assert!(send("-1M").is_err());
    assert!(send("fast").is_err());
    let cli = Cli::try_parse_from(["xfer", "recv", "--limit-rate", "512K"]).unwrap();
    let Command::Recv(args) = cli.command else {
        panic!("not recv")
    };
    assert_eq!(args.to_config().unwrap().0.limit_rate, Some(512 << 10));
}

#[test]
fn listen_addresses_parse() {
    assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
    assert_eq!(parse_listen("[::]:99").unwrap().port(), 99);
    assert_eq!(parse_listen("::1").unwrap().port(), DEFAULT_PORT);
    assert!(parse_listen("localhost:1").is_err());
    assert!(parse_listen("1.2.3.4:99999").is_err());
}

#[test]
fn send_takes_paths_then_address() {
    let cli = Cli::try_parse_from(["xfer", "send", "a", "b/", "host:1"]).unwrap();
    let Command::Send(args) = cli.command else {
        panic!("not send")
    };
    let (paths, target) = args.target().unwrap();
    assert_eq!(paths, [PathBuf::from("a"), PathBuf::from("b/")]);
    assert_eq!(
        target,
        Target::Address(Destination {
            host: "host".into(),
            port: 1,
            fallback: Vec::new(),
        })
    );
}

fn target_of(args: &[&str]) -> Result<(Vec<PathBuf>, Target), Error> {
    let cli = Cli::try_parse_from(["xfer", "send"].iter().chain(args)).unwrap();
    let Command::Send(args) = cli.command else {
        panic!("not send")
    };
    args.target()
}

#[test]
fn the_last_argument_is_the_address_unless_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.txt");
    let laptop = dir.path().join("laptop");
    std::fs::write(&a, "a").unwrap();
    std::fs::write(&laptop, "l").unwrap();
    let (a, laptop) = (a.to_str().unwrap(), laptop.to_str().unwrap());
    let find = Target::Find { name: None };

    // Two existing files: both are sent, to a receiver found on the LAN.
    let (paths, target) = target_of(&[a, laptop]).unwrap();
    assert_eq!((paths.len(), target), (2, find.clone()));
    // One existing file alone.
    assert_eq!(target_of(&[a]).unwrap().1, find);
    // The old form: a last word that is not a path is the address,
    // parsed or rejected as before.
    let (paths, target) = target_of(&[a, "laptop"]).unwrap();
    assert_eq!(paths, [PathBuf::from(a)]);
    assert!(matches!(target, Target::Address(d) if d.host == "laptop"));
    assert!(matches!(
        target_of(&[a, "host:notaport"]),
        Err(Error::Usage(m)) if m.contains("invalid address 'host:notaport'")
    ));
    // A file here named like an address, last: which was meant?
    let odd = dir.path().join("10.0.0.5:7171");
    std::fs::write(&odd, "o").unwrap();
    assert!(matches!(
        target_of(&[a, odd.to_str().unwrap()]),
        Err(Error::Usage(m)) if m.contains("is both a file here and an address")
    ));
    // --to: every argument is a path.
    let (paths, target) = target_of(&["--to", "den", a, laptop]).unwrap();
    assert_eq!(paths.len(), 2);
    assert_eq!(
        target,
        Target::Find {
            name: Some("den".into())
        }
    );
}

#[test]
fn an_address_in_the_wrong_place_says_where_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.txt");
    std::fs::write(&a, "a").unwrap();
    let a = a.to_str().unwrap();
    for args in [
        &["10.0.0.5:7171", a][..],
        &["[::1]:9", a, "b.txt"],
        &["10.0.0.5"],
    ] {
        let Err(Error::Usage(message)) = target_of(args) else {
            panic!("{args:?} accepted")
        };
        assert!(
            message.contains("goes last") || message.contains("give the files first"),
            "{message}"
        );
    }
    let Err(Error::Usage(message)) = target_of(&["--to", "den", a, "10.0.0.5:7171"]) else {
        panic!("--to with an address accepted")
    };
    assert!(message.contains("not both"), "{message}");
    // Without an address, a missing path is reported before any search.
    let Err(Error::Usage(message)) = target_of(&[a, "--to", "den", "missing.txt"]) else {
        panic!("missing path accepted")
    };
    assert!(message.contains("cannot send 'missing.txt'"), "{message}");
}

#[test]
fn get_takes_an_address_or_finds_the_server() {
    let target = |args: &[&str]| {
        let cli = Cli::try_parse_from([&["xfer", "get"], args].concat())
            .map_err(|e| Error::Usage(e.to_string()))?;
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        args.target()
    };
    assert_eq!(target(&[]).unwrap(), Target::Find { name: None });
    assert_eq!(
        target(&["--to", "nas"]).unwrap(),
        Target::Find {
            name: Some("nas".into())
        }
    );
    assert!(matches!(
        target(&["nas:7000"]).unwrap(),
        Target::Address(d) if d.host == "nas" && d.port == 7000
    ));
    assert!(target(&["--to", "nas", "nas:7000"]).is_err());
    assert!(target(&["--to", ""]).is_err());
}

#[test]
fn waits_parse() {
    assert_eq!(parse_wait("1.5"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_wait("3"), Ok(Duration::from_secs(3)));
    for bad in ["0", "-1", "x", "7200", "NaN"] {
        assert!(parse_wait(bad).is_err(), "{bad}");
    }
}
