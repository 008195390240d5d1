use std::io::{Cursor, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

#[test]
fn read_line_stops_at_the_newline() {
    let mut input = Cursor::new(b"4821-orbit\nrest".to_vec());
    assert_eq!(
        read_line(&mut input, MAX_LINE).expect("line").as_str(),
        "4821-orbit"
    );
    let mut rest = String::new();
    input.read_to_string(&mut rest).expect("rest");
    assert_eq!(rest, "rest", "nothing past the line is consumed");
}

#[test]
fn read_line_drops_a_carriage_return() {
    let mut input = Cursor::new(b"4821-orbit\r\n".to_vec());
    assert_eq!(
        read_line(&mut input, MAX_LINE).expect("line").as_str(),
        "4821-orbit"
    );
}

#[test]
fn read_line_takes_a_last_line_without_newline() {
    let mut input = Cursor::new(b"4821-orbit".to_vec());
    assert_eq!(
        read_line(&mut input, MAX_LINE).expect("line").as_str(),
        "4821-orbit"
    );
}

#[test]
fn read_line_eof_before_anything_is_an_error() {
    let err = read_line(&mut Cursor::new(Vec::new()), MAX_LINE).expect_err("eof");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn read_line_max_len() {
    let exact = vec![b'a'; 8];
    let line = read_line(&mut Cursor::new(exact), 8).expect("8 bytes fit");
    assert_eq!(line.len(), 8);
    let err = read_line(&mut Cursor::new(vec![b'a'; 9]), 8).expect_err("9 bytes");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn read_line_refuses_invalid_utf8() {
    let err = read_line(&mut Cursor::new(b"\xff\xfe\n".to_vec()), MAX_LINE).expect_err("bytes");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

fn typed(keys: &[u8]) -> io::Result<Zeroizing<String>> {
    read_line(&mut Cursor::new(keys.to_vec()), MAX_LINE)
}

#[test]
fn read_line_edits_like_the_terminal() {
    assert_eq!(typed(b"4821-orbx\x7fit\n").unwrap().as_str(), "4821-orbit");
    assert_eq!(typed(b"4821-orbx\x08it\n").unwrap().as_str(), "4821-orbit");
    assert_eq!(typed(b"wrong\x15right\n").unwrap().as_str(), "right");
    assert_eq!(
        typed(b"4821 orbit lemmon  \x17lemon\n").unwrap().as_str(),
        "4821 orbit lemon"
    );
    // A character of several bytes goes in one erase; erasing an empty
    // line does nothing.
    assert_eq!(
        typed("4821é\x7f-x\n".as_bytes()).unwrap().as_str(),
        "4821-x"
    );
    assert_eq!(typed(b"\x7f\x7fab\n").unwrap().as_str(), "ab");
    // Other control keys (Tab, Escape, Ctrl-Z) type nothing.
    assert_eq!(typed(b"a\tb\x1bc\x1ad\n").unwrap().as_str(), "abcd");
}

#[test]
fn read_line_ctrl_c_interrupts() {
    for key in [b'\x03', b'\x1c'] {
        let err = typed(&[b'4', b'8', key, b'\n']).expect_err("interrupted");
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
    }
}

#[test]
fn read_line_ctrl_d_ends_the_line() {
    assert_eq!(typed(b"4821\x04rest").unwrap().as_str(), "4821");
    let err = typed(b"\x04").expect_err("nothing typed");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn readable_by_others_looks_at_group_and_other_read_bits() {
    assert!(!readable_by_others(0o600));
    assert!(!readable_by_others(0o700));
    assert!(readable_by_others(0o640));
    assert!(readable_by_others(0o604));
    assert!(readable_by_others(0o644));
}

fn code_file(contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("code");
    std::fs::write(&path, contents).expect("write code file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (dir, path)
}

#[test]
fn code_file_first_non_empty_line() {
    let code = Code::generate();
    let (_dir, path) = code_file(&format!("\n  \n{code}\nignored\n"));
    let read = read_code_file(&path).expect("code");
    assert_eq!(&read.secret()[..], &code.secret()[..]);
}

#[test]
fn code_file_empty() {
    let (_dir, path) = code_file("\n \n\t\n");
    assert!(matches!(
        read_code_file(&path),
        Err(CodeFileError::Empty { .. })
    ));
}

#[test]
fn code_file_invalid_keeps_the_reason() {
    let (_dir, path) = code_file("4821-lemmon-lemon-lemon-lemon\n");
    let err = read_code_file(&path).expect_err("typo");
    let source = std::error::Error::source(&err)
        .expect("a source")
        .to_string();
    assert!(source.contains("did you mean 'lemon'"), "{source}");
}

#[test]
fn code_file_too_large() {
    let (_dir, path) = code_file(&"x".repeat(MAX_FILE as usize + 1));
    assert!(matches!(
        read_code_file(&path),
        Err(CodeFileError::TooLarge { .. })
    ));
}

#[test]
fn code_file_missing_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent");
    let err = read_code_file(&path).expect_err("missing");
    assert!(err.to_string().contains("absent"), "{err}");
}

/// Set for the copy of this test binary that the pseudo-terminal tests run.
const CHILD_ENV: &str = "XFER_TEST_PROMPT_CHILD";
const QUESTION: &str = "code please: ";
const CHILD_TEST: &str = "code::input::tests::prompt_child";

/// Not a test of its own: a no-op unless [`CHILD_ENV`] is set, when it is
/// the program under the pseudo-terminal. It prints what it read as hex, so
/// the typed text in the output can only be an echo.
#[test]
fn prompt_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let saved = (mode == "tty").then(|| {
        let tty = File::open("/dev/tty").expect("tty");
        termios::tcgetattr(&tty).expect("tcgetattr")
    });
    match prompt(QUESTION) {
        Ok(line) => {
            let hex: String = line.bytes().map(|b| format!("{b:02x}")).collect();
            println!("GOT[{hex}]");
        }
        Err(e) => println!("ERR[{e}]"),
    }
    if let Some(saved) = saved {
        let tty = File::open("/dev/tty").expect("tty");
        let now = termios::tcgetattr(&tty).expect("tcgetattr");
        println!(
            "ECHO={}",
            if now.local_modes.contains(LocalModes::ECHO) {
                "on"
            } else {
                "off"
            }
        );
        // The whole mode as it was: line mode, signal keys, VMIN/VTIME.
        let same = now.local_modes == saved.local_modes
            && [SpecialCodeIndex::VMIN, SpecialCodeIndex::VTIME]
                .into_iter()
                .all(|i| now.special_codes[i] == saved.special_codes[i]);
        println!("MODE={}", if same { "restored" } else { "changed" });
        // Nothing typed after an interrupted prompt is left for the next
        // reader of the terminal.
        let pending = rustix::io::ioctl_fionread(&tty).expect("FIONREAD");
        println!("PENDING={pending}");
    }
}

fn child_command(program: &str, mode: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env(CHILD_ENV, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

fn self_test_args() -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary path");
    vec![
        exe.display().to_string(),
        CHILD_TEST.into(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// Output of `child`, typing `input` once `wait_for` has appeared; killed
/// after `limit`.
fn run_bounded(mut child: Child, wait_for: &str, input: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take();
    let mut output = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => output.extend_from_slice(&chunk),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "child did not finish in {limit:?}; output so far: {:?}",
                    String::from_utf8_lossy(&output)
                );
            }
        }
        if String::from_utf8_lossy(&output).contains(wait_for) {
            if let Some(mut stdin) = stdin.take() {
                stdin.write_all(input.as_bytes()).expect("type the input");
                // Dropped here: end of input.
            }
        }
    }
    let _ = child.wait();
    String::from_utf8_lossy(&output).into_owned()
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The prompt child under script(1), a pseudo-terminal of its own,
/// with `keys` typed once the question shows: what it printed.
fn prompt_on_a_terminal(keys: &str) -> String {
    let child = child_command("script", "tty")
        .args(["-qefc", &self_test_args().join(" "), "/dev/null"])
        .spawn()
        .expect("spawn script");
    run_bounded(child, QUESTION, keys, Duration::from_secs(60))
}

#[test]
fn prompt_reads_a_line_without_echo_and_restores_it() {
    if !have("script") {
        eprintln!("skipped: util-linux 'script' is not installed");
        return;
    }
    // The question is written only after echo is off, so typing after it
    // appears is never echoed by the terminal.
    let typed = "4821-Typed-Not-Echoed";
    let output = prompt_on_a_terminal(&format!("{typed}\n"));
    let hex: String = typed.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(output.contains(&format!("GOT[{hex}]")), "{output}");
    assert!(!output.contains(typed), "the code was echoed: {output}");
    assert!(output.contains("ECHO=on"), "echo not restored: {output}");
    assert!(output.contains("MODE=restored"), "{output}");
}

/// Ctrl-C at the prompt is a key, not a signal that would kill the
/// process with echo still off: the prompt ends as interrupted, and the
/// terminal is as it was.
#[test]
fn prompt_ctrl_c_interrupts_and_restores_echo() {
    if !have("script") {
        eprintln!("skipped: util-linux 'script' is not installed");
        return;
    }
    let output = prompt_on_a_terminal("48\x03typed-after\n");
    assert!(output.contains("ERR[interrupted]"), "{output}");
    assert!(output.contains("ECHO=on"), "echo not restored: {output}");
    assert!(output.contains("MODE=restored"), "{output}");
    assert!(
        output.contains("PENDING=0"),
        "typed-ahead left for the shell: {output}"
    );
}

#[test]
fn prompt_without_a_terminal_says_what_to_do() {
    if !have("setsid") {
        eprintln!("skipped: util-linux 'setsid' is not installed");
        return;
    }
    // A new session has no controlling terminal, so /dev/tty cannot open.
    let child = child_command("setsid", "notty")
        .arg("-w")
        .args(self_test_args())
        .spawn()
        .expect("spawn setsid");
    let output = run_bounded(child, "\u{0}", "", Duration::from_secs(60));
    assert!(output.contains(&format!("ERR[{NO_TERMINAL}]")), "{output}");
}
