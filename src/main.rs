#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use xfer::cli::Cli;
use xfer::error::exit_code_of;

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    xfer::logging::init(cli.verbose >= 2);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(xfer::app::run(cli.command, cli.verbose >= 1)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", xfer::term::for_stderr(&format!("{err:#}")));
            ExitCode::from(exit_code_of(&err))
        }
    }
}

/// Keeps large buffers in the heap for reuse. Bodies move in chunks of up to
/// 1 MiB; above glibc's default threshold (128 KiB) every chunk would be a
/// fresh mmap, page-faulted in and unmapped again, which cost about as much
/// CPU as hashing it. Process-wide, so it is set here, before any thread.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; no threads exist yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    }
}
