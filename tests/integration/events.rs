//! Every JSON Lines event the binary emits, checked against the schema in
//! docs/EVENTS.md (parsed from its tables, so the document is the test's
//! source of truth), and the one-final-event rule on both sides.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// event name -> field -> (type, required)
pub(crate) type Schema = BTreeMap<String, BTreeMap<String, (String, bool)>>;

pub(crate) fn schema() -> Schema {
    let doc = include_str!("../../docs/EVENTS.md");
    let mut schema = Schema::new();
    let mut current: Vec<String> = Vec::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            current = heading
                .split('/')
                .map(|n| n.trim().trim_matches('`').to_owned())
                .collect();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| field | type | required | meaning |" rows, header and rule excluded.
        if cells.len() < 5 || current.is_empty() || cells[1] == "field" || cells[1] == "---" {
            continue;
        }
        for name in &current {
            schema.entry(name.clone()).or_default().insert(
                cells[1].to_owned(),
                (cells[2].to_owned(), cells[3] == "yes"),
            );
        }
    }
    schema
}

/// Checks one line of output against the schema; returns the object.
pub(crate) fn check(schema: &Schema, line: &str) -> Value {
    let value: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let object = value.as_object().expect("an object per line");
    let event = object["event"].as_str().expect("event is a string");
    let fields = schema
        .get(event)
        .unwrap_or_else(|| panic!("event '{event}' is not in docs/EVENTS.md: {line}"));
    assert_eq!(object["v"], 1, "{line}");
    for (key, value) in object {
        let (kind, _) = fields
            .get(key)
            .unwrap_or_else(|| panic!("field '{key}' of '{event}' is undocumented: {line}"));
        let fits = match kind.as_str() {
            "string" => value.is_string(),
            "integer" => value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            other => panic!("unknown type '{other}' in docs/EVENTS.md"),
        };
        assert!(fits, "'{key}' of '{event}' is not a {kind}: {line}");
    }
    for (key, (_, required)) in fields {
        assert!(
            !required || object.contains_key(key),
            "'{event}' lacks required '{key}': {line}"
        );
    }
    if let Some(sha) = object.get("sha256").and_then(Value::as_str) {
        assert!(
            sha.len() == 64 && sha != "0".repeat(64),
            "placeholder digest: {line}"
        );
    }
    value
}

/// Runs `xfer send --json ARGS`; returns the exit code and checked events.
fn send_json(schema: &Schema, args: &[&str]) -> (i32, Vec<Value>) {
    let out = xfer_command()
        .arg("send")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout.lines().map(|l| check(schema, l)).collect();
    let summaries = events.iter().filter(|e| e["event"] == "summary").count();
    assert_eq!(summaries, 1, "exactly one summary: {stdout}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "summary", "the summary comes last: {stdout}");
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(last["exit_code"], code, "{stdout}");
    assert_eq!(last["verified"], code == 0, "{stdout}");
    (code, events)
}

/// Stops a `recv --json` process and returns its checked events.
fn recv_events(schema: &Schema, mut recv: XferProcess) -> Vec<Value> {
    recv.signal(libc::SIGTERM);
    let mut events = Vec::new();
    while let Some(line) = recv.next_line() {
        events.push(check(schema, &line));
    }
    let (status, _) = recv.wait(Duration::from_secs(10));
    assert!(status.success());
    events
}

fn recv_json(dir: &std::path::Path, extra: &[&str]) -> (XferProcess, String) {
    let mut args = vec![
        "recv",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut recv = XferProcess::spawn(&args);
    let first: Value = serde_json::from_str(&recv.next_line().unwrap()).unwrap();
    assert_eq!(first["event"], "listening");
    let addr = first["addr"].as_str().unwrap().to_owned();
    (recv, addr)
}

#[test]
fn every_event_of_a_delivery_a_skip_and_a_refusal_fits_the_schema() {
    let schema = schema();
    assert!(schema.len() >= 7, "schema tables not found: {schema:?}");
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("tree");
    write_random(&tree.join("a.bin"), 3000, 1);
    write_random(&tree.join("sub/big.bin"), 2_000_000, 2);
    fs::create_dir_all(tree.join("empty")).unwrap();
    let (recv, addr) = recv_json(dst.path(), &["--max-size", "2M"]);

    let (code, sent) = send_json(&schema, &["--quiet", tree.to_str().unwrap(), &addr]);
    assert_eq!(code, 0);
    let files: Vec<&Value> = sent.iter().filter(|e| e["event"] == "sent").collect();
    assert_eq!(files.len(), 2);
    assert!(files.iter().all(|f| f["sha256"].is_string()));

    // Again: both files already there.
    let (code, again) = send_json(&schema, &["--quiet", tree.to_str().unwrap(), &addr]);
    assert_eq!(code, 0);
    let summary = again.last().unwrap();
    assert_eq!(
        (summary["files"].as_u64(), summary["skipped"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(again
        .iter()
        .filter(|e| e["event"] == "sent")
        .all(|e| e["skipped"] == true && e["sha256"].is_string()));

    // Over --max-size: a refusal on both sides, and exit 1.
    let large = src.path().join("large.bin");
    write_random(&large, 3 << 20, 3);
    let (code, refused) = send_json(&schema, &["--quiet", large.to_str().unwrap(), &addr]);
    assert_eq!(code, 1);
    assert_eq!(refused[0]["event"], "refused");
    assert_eq!(refused.last().unwrap()["refused"], 1);

    let received = recv_events(&schema, recv);
    let sessions: Vec<&Value> = received
        .iter()
        .filter(|e| e["event"] == "session")
        .collect();
    assert_eq!(sessions.len(), 3, "one session event per sender");
    assert_eq!(sessions[0]["stored"], 2);
    assert_eq!(sessions[1]["skipped"], 2);
    // A refusal is an outcome on the receiver too: an event, and counted.
    assert_eq!(sessions[2]["refused"], 1);
    assert_eq!(sessions[2]["ok"], false);
    let refusals: Vec<_> = received
        .iter()
        .filter(|e| e["event"] == "refused")
        .collect();
    assert_eq!(refusals.len(), 1);
    assert!(refusals[0]["reason"]
        .as_str()
        .unwrap()
        .contains("--max-size"));
}

#[test]
fn a_send_that_never_connects_still_ends_with_one_summary() {
    let schema = schema();
    let file = tempfile::NamedTempFile::new().unwrap();
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, events) = send_json(&schema, &[file.path().to_str().unwrap(), &addr]);
    assert_eq!(code, 3);
    assert!(events[0]["error"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));

    let (code, events) = send_json(&schema, &["/no/such/file", &addr]);
    assert_eq!(code, 2);
    assert_eq!(events.len(), 1);

    // Flags clap accepts but xfer refuses: still one summary, exit 2.
    let path = file.path().to_str().unwrap();
    for args in [
        &[path, "127.0.0.1:0"][..],
        &["--idle-timeout", "0", path, &addr],
        &["--code=not a code", path, &addr],
    ] {
        let (code, events) = send_json(&schema, args);
        assert_eq!((code, events.len()), (2, 1), "{args:?}: {events:?}");
    }
}

#[test]
fn a_get_refused_before_it_connects_still_ends_with_one_session() {
    let schema = schema();
    let dst = tempfile::tempdir().unwrap();
    let dir = dst.path().to_str().unwrap();
    for args in [
        &["127.0.0.1:0", "--dir", dir][..],
        &["127.0.0.1:9", "--idle-timeout", "0", "--dir", dir],
    ] {
        let (code, events) = get_json(&schema, args);
        assert_eq!((code, events.len()), (2, 1), "{args:?}: {events:?}");
        assert_eq!(events[0]["event"], "session");
    }
}

#[test]
fn a_coded_receiver_announces_its_code_and_its_events_fit_the_schema() {
    let schema = schema();
    let dst = tempfile::tempdir().unwrap();
    let mut recv = XferProcess::spawn(&[
        "recv",
        "--json",
        "--code",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dst.path().to_str().unwrap(),
    ]);
    let listening = check(&schema, &recv.next_line().unwrap());
    assert_eq!(listening["event"], "listening");
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let code = check(&schema, &recv.next_line().unwrap());
    assert_eq!(
        (&code["event"], &code["generated"]),
        (&"code".into(), &true.into())
    );
    let text = code["code"].as_str().unwrap().to_owned();
    assert_eq!(
        text.split('-').next().unwrap().parse::<u64>().unwrap(),
        code["number"].as_u64().unwrap()
    );
    assert!(code["command"].as_str().unwrap().contains(&addr));

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"sealed").unwrap();
    let out = xfer_command()
        .env("XFER_CODE", &text)
        .args([
            "send",
            "--json",
            "--code",
            file.path().to_str().unwrap(),
            &addr,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let sent: Vec<Value> = stdout.lines().map(|l| check(&schema, l)).collect();
    assert_eq!(sent[0]["event"], "sent");
    let received = recv_events(&schema, recv);
    assert!(received.iter().any(|e| e["event"] == "received"));
    assert!(received
        .iter()
        .any(|e| e["event"] == "session" && e["ok"] == true));
}

/// Runs `xfer get --json ARGS`; returns the exit code and checked events,
/// which end with their one `session`.
fn get_json(schema: &Schema, args: &[&str]) -> (i32, Vec<Value>) {
    let out = xfer_command()
        .arg("get")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout.lines().map(|l| check(schema, l)).collect();
    let sessions = events.iter().filter(|e| e["event"] == "session").count();
    assert_eq!(sessions, 1, "exactly one session: {stdout}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "session", "the session comes last: {stdout}");
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(last["ok"], code == 0, "{stdout}");
    (code, events)
}

#[test]
fn serve_and_get_events_fit_the_schema_and_each_connection_ends_once() {
    let schema = schema();
    let (src, dst, other) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let tree = src.path().join("tree");
    write_random(&tree.join("a.bin"), 3000, 1);
    write_random(&tree.join("sub/big.bin"), 2_000_000, 2);
    fs::create_dir_all(tree.join("empty")).unwrap();
    let mut serve = XferProcess::spawn(&[
        "serve",
        "--json",
        "--no-cache",
        "--listen",
        "127.0.0.1:0",
        tree.to_str().unwrap(),
    ]);
    let listening = check(&schema, &serve.next_line().unwrap());
    assert_eq!(listening["event"], "listening");
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let dir = dst.path().to_str().unwrap();

    let (code, got) = get_json(&schema, &[&addr, "--dir", dir]);
    assert_eq!(code, 0);
    let files: Vec<&Value> = got.iter().filter(|e| e["event"] == "received").collect();
    assert_eq!(files.len(), 2);
    assert!(files
        .iter()
        .all(|f| f["sha256"].is_string() && f["peer"] == addr));
    assert_eq!(got.last().unwrap()["stored"], 2);

    let (code, again) = get_json(&schema, &[&addr, "--dir", dir]);
    assert_eq!(code, 0);
    assert_eq!(again.last().unwrap()["skipped"], 2);

    let (code, refused) = get_json(
        &schema,
        &[
            &addr,
            "--dir",
            other.path().to_str().unwrap(),
            "--max-size",
            "1M",
        ],
    );
    assert_eq!(code, 1);
    assert!(refused.iter().any(|e| e["event"] == "refused"));
    let last = refused.last().unwrap();
    assert_eq!((&last["refused"], &last["stored"]), (&1.into(), &1.into()));
    assert!(last["error"].as_str().unwrap().contains("not stored"));

    // A sender at the server: its summary says what to run, exit 4.
    let (code, sent) = send_json(&schema, &["--no-cache", tree.to_str().unwrap(), &addr]);
    assert_eq!(code, 4);
    assert!(sent[0]["error"].as_str().unwrap().contains("xfer get"));

    let served = recv_events(&schema, serve);
    let summaries: Vec<&Value> = served.iter().filter(|e| e["event"] == "summary").collect();
    assert_eq!(summaries.len(), 4, "one summary per connection: {served:?}");
    assert_eq!(
        summaries.iter().filter(|s| s["verified"] == true).count(),
        2
    );
    let failed: Vec<_> = summaries
        .iter()
        .filter(|s| s["verified"] == false)
        .collect();
    let codes: Vec<_> = failed.iter().map(|s| s["exit_code"].as_u64()).collect();
    assert!(
        codes.contains(&Some(1)) && codes.contains(&Some(4)),
        "{codes:?}"
    );
    let sent = served.iter().filter(|e| e["event"] == "sent").count();
    assert_eq!(sent, 2 + 2 + 1, "stored, skipped, and the one that fit");
}

#[test]
fn a_get_that_never_connects_or_cannot_store_still_ends_with_one_session() {
    let schema = schema();
    let dst = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let dir = dst.path().to_str().unwrap();
    let (code, events) = get_json(&schema, &[&addr, "--dir", dir]);
    assert_eq!(code, 3);
    let error = events[0]["error"].as_str().unwrap();
    assert!(
        error.contains("cannot connect") && error.contains("'xfer serve'"),
        "{error}"
    );

    let file = dst.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let under_a_file = file.join("inbox");
    let (code, events) = get_json(&schema, &[&addr, "--dir", under_a_file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(events.len(), 1);
    assert!(events[0]["error"]
        .as_str()
        .unwrap()
        .contains("receiving directory"));
}
