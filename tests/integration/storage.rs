//! The receiver's DIR under contention and misuse: two senders after the
//! same path at once, and a DIR that cannot be written.

use std::time::{Duration, Instant};

use crate::harness::*;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_path_being_received_is_refused_to_a_second_sender_at_plan_time() {
    let (first_src, second_src) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dst = tempfile::tempdir().unwrap();
    let first_file = first_src.path().join("same.bin");
    let second_file = second_src.path().join("same.bin");
    let data = write_random(&first_file, 16 * MIB as usize, 1);
    write_random(&second_file, MIB as usize, 2);
    let rx = Receiver::start(dst.path()).await;
    // 16 MiB at 2 MiB/s: the first body is still arriving for seconds.
    let proxy = Proxy::start(rx.addr, ProxyOptions::throttled(2 * MIB)).await;
    let first = tokio::spawn(async move { send(&[&first_file], proxy.addr).await });

    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("the first body to begin", || {
            partial_len(&dir, "same.bin").unwrap_or(0) >= MIB
        })
    })
    .await
    .unwrap();
    let started = Instant::now();
    let (_, second) = send(&[&second_file], rx.addr).await;
    let took = started.elapsed();
    let failed = second.failed();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]
            .1
            .contains("is being received from another sender right now; send it again when that transfer is done"),
        "{failed:?}"
    );
    // Refused at once, not after its body streamed (generous for a slow machine).
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");

    let (result, first) = within(first).await.unwrap();
    let summary = result.unwrap();
    assert_eq!(
        (summary.files, summary.failed),
        (1, 0),
        "{:?}",
        first.failed()
    );
    assert_eq!(std::fs::read(dst.path().join("same.bin")).unwrap(), data);
    assert_eq!(
        tree_listing(dst.path()).len(),
        1,
        "nothing else stored or left behind"
    );
}
