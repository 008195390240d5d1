//! A hand-driven peer speaking raw frames to a real receiver.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use xfer::protocol::{
    handshake, Action, Entry, EntryKind, FrameReader, FrameWriter, Message, Offer,
};

fn file_entry(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        size: 1,
        mode: 0o644,
        mtime_secs: 0,
        mtime_nanos: 0,
        sha256: None,
    }
}

#[tokio::test]
async fn traversal_and_hostile_names_are_refused_and_nothing_escapes() {
    let names: Vec<String> =
        serde_json::from_str(include_str!("../fixtures/hostile_paths.json")).unwrap();
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("inbox");
    let rx = Receiver::start(&dir).await;

    let stream = within(tokio::net::TcpStream::connect(rx.addr))
        .await
        .unwrap();
    let (r, w) = stream.into_split();
    let peer: Arc<str> = "receiver".into();
    let mut reader = FrameReader::new(r, peer.clone(), Duration::from_secs(10));
    let mut writer = FrameWriter::new(w, peer, Duration::from_secs(10));
    within(handshake(&mut reader, &mut writer)).await.unwrap();
    let entries = names.iter().map(|n| file_entry(n)).collect();
    writer
        .send(&Message::Offer(Offer {
            first_id: 0,
            entries,
        }))
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let Some(Message::Plan(plan)) = within(reader.read_message()).await.unwrap() else {
        panic!("expected a plan")
    };
    assert_eq!(plan.actions.len(), names.len());
    for (name, action) in names.iter().zip(&plan.actions) {
        assert!(
            matches!(action, Action::Refuse { reason } if reason.starts_with("unsafe path")),
            "{name:?} got {action:?}"
        );
    }
    writer.send(&Message::Done).await.unwrap();
    writer.flush().await.unwrap();
    assert!(matches!(
        within(reader.read_message()).await.unwrap(),
        Some(Message::Bye { files: 0, .. })
    ));
    assert!(tree_listing(&dir).is_empty(), "{:?}", tree_listing(&dir));
    let outside: Vec<_> = tree_listing(outer.path()).into_keys().collect();
    assert_eq!(outside, ["inbox"]);
    assert!(!std::path::Path::new("/etc/xfer-absolute").exists());
}

#[tokio::test]
async fn a_body_for_an_unplanned_file_ends_the_session_and_the_server_serves_on() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rx = Receiver::start(dst.path()).await;
    let stream = within(tokio::net::TcpStream::connect(rx.addr))
        .await
        .unwrap();
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, "receiver".into(), Duration::from_secs(10));
    let mut writer = FrameWriter::new(w, "receiver".into(), Duration::from_secs(10));
    within(handshake(&mut reader, &mut writer)).await.unwrap();
    writer
        .send(&Message::FileBegin { id: 5, offset: 0 })
        .await
        .unwrap();
    writer.send_raw(b"x").await.unwrap();
    writer.flush().await.unwrap();
    match within(reader.read_message()).await.unwrap() {
        Some(Message::Abort { reason }) => assert!(reason.contains("not planned"), "{reason}"),
        other => panic!("expected Abort, got {other:?}"),
    }
    let file = src.path().join("real.txt");
    write_random(&file, 10, 1);
    send(&[&file], rx.addr).await.0.unwrap();
    assert_same_tree(src.path(), dst.path());
}
