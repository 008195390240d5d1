use std::process::ExitCode;

use clap::Parser;
use xfer::cli::Cli;
use xfer::error::exit_code_of;
use xfer::paths::escape_for_terminal;

fn main() -> ExitCode {
    xfer::tune_allocator();
    let cli = Cli::parse();
    xfer::logging::init(cli.verbose);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(xfer::app::run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", escape_for_terminal(&format!("{err:#}")));
            ExitCode::from(exit_code_of(&err))
        }
    }
}
