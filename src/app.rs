//! Runs a parsed command line: validated configuration in, library calls,
//! signals and output wired up. The one place that knows both the CLI and
//! the protocol side.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{CodeSource, Command, GetArgs, RecvArgs, SendArgs, ServeArgs};
use crate::error::{describe_io, Error};
use crate::progress::{Reporter, Role};
use crate::receiver::Server;

/// Runs one `xfer` command to completion.
/// `verbose` asks for a line per file.
pub async fn run(command: Command, verbose: bool) -> anyhow::Result<()> {
    match command {
        Command::Send(args) => send(&args, verbose).await,
        Command::Recv(args) => recv(&args, verbose).await,
        Command::Serve(args) => serve(&args, verbose).await,
        Command::Get(args) => get(&args, verbose).await,
    }
}

async fn send(args: &SendArgs, verbose: bool) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let reporter = Arc::new(Reporter::new(args.output.mode(verbose), Role::Send));
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signalled = stop_signal()?;
    tokio::spawn(async move {
        signalled.await;
        on_signal.cancel();
    });
    let result = crate::sender::send(&config, reporter.clone(), cancel).await;
    reporter.clear_bars();
    result.map(drop)
}

async fn recv(args: &RecvArgs, verbose: bool) -> anyhow::Result<()> {
    let (config, code_source) = args.to_config()?;
    let listen = config.listen;
    let once = config.once;
    let code = config
        .code
        .as_ref()
        .map(|code| (code.clone(), code_source == Some(CodeSource::Generated)));
    let server = Server::new(config)?;
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (is another 'xfer recv' running? pick another port with --listen)"
        } else {
            ""
        };
        Error::Listen {
            addr: listen.to_string(),
            detail: format!("{}{hint}", describe_io(&e)),
        }
    })?;
    let local = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let signalled = stop_signal()?;
    let reporter = Arc::new(Reporter::new(args.output.mode(verbose), Role::Recv));
    reporter.listening(&local);
    let flag = if code.is_some() { "--code " } else { "" };
    let mut commands: Vec<String> = crate::reach::addresses(local)
        .iter()
        .map(|addr| format!("xfer send {flag}FILE {addr}"))
        .collect();
    if let Some((code, generated)) = &code {
        if commands.is_empty() {
            commands.push(format!("xfer send --code FILE {}", reach(&local)));
        }
        reporter.code(code, *generated, &commands);
    } else {
        reporter.reach_by(&commands);
    }
    tokio::spawn(async move {
        signalled.await;
        log::debug!("stop requested; finishing");
        on_signal.cancel();
    });
    let report = server.serve(listener, reporter, shutdown).await?;
    // A stop request is a clean stop, whether or not a sender ever came;
    // only a session that ended by itself without storing everything fails.
    if once && report.failed_sessions > 0 {
        anyhow::bail!("the sender's session did not store every file (see the messages above)");
    }
    Ok(())
}

async fn serve(args: &ServeArgs, verbose: bool) -> anyhow::Result<()> {
    let (config, code_source) = args.to_config()?;
    let listen = config.listen;
    let once = config.once;
    let code = config
        .code
        .as_ref()
        .map(|code| (code.clone(), code_source == Some(CodeSource::Generated)));
    let server = crate::sender::serve::Server::new(config)?;
    let listener = bind(listen, "xfer serve").await?;
    let local = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let signalled = stop_signal()?;
    let reporter = Arc::new(Reporter::new(args.output.mode(verbose), Role::Send).pull_mode());
    reporter.listening(&local);
    let flag = if code.is_some() { "--code " } else { "" };
    let mut commands: Vec<String> = crate::reach::addresses(local)
        .iter()
        .map(|addr| format!("xfer get {flag}{addr}"))
        .collect();
    if let Some((code, generated)) = &code {
        if commands.is_empty() {
            commands.push(format!("xfer get --code {}", reach(&local)));
        }
        reporter.code(code, *generated, &commands);
    } else {
        reporter.reach_by(&commands);
    }
    tokio::spawn(async move {
        signalled.await;
        log::debug!("stop requested; finishing");
        on_signal.cancel();
    });
    let report = server.serve(listener, reporter, shutdown).await;
    if once && report.failed_sessions > 0 {
        anyhow::bail!("the getter's session did not store every file (see the messages above)");
    }
    Ok(())
}

async fn get(args: &GetArgs, verbose: bool) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let reporter = Arc::new(Reporter::new(args.output.mode(verbose), Role::Recv).pull_mode());
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signalled = stop_signal()?;
    tokio::spawn(async move {
        signalled.await;
        on_signal.cancel();
    });
    let result = crate::receiver::fetch(&config, reporter.clone(), cancel).await;
    reporter.clear_bars();
    result.map(drop)
}

/// Binds the listening socket of `command`, saying what to do when the
/// port is taken.
async fn bind(listen: std::net::SocketAddr, command: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(" (is another '{command}' running? pick another port with --listen)")
        } else {
            String::new()
        };
        Error::Listen {
            addr: listen.to_string(),
            detail: format!("{}{hint}", describe_io(&e)),
        }
        .into()
    })
}

/// How the other machine can reach `local`: its IP, or for a wildcard
/// listener the address this machine would send from (found by a UDP
/// connect, which sends nothing), with the port.
fn reach(local: &std::net::SocketAddr) -> String {
    let ip = if local.ip().is_unspecified() {
        let probe = std::net::UdpSocket::bind(("0.0.0.0", 0))
            .and_then(|s| s.connect(("192.0.2.1", 9)).map(|()| s))
            .and_then(|s| s.local_addr());
        match probe {
            Ok(addr) if !addr.ip().is_unspecified() => addr.ip(),
            _ => return format!("THIS-MACHINE:{}", local.port()),
        }
    } else {
        local.ip()
    };
    std::net::SocketAddr::new(ip, local.port()).to_string()
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed by this call,
/// before anything is announced, so an early signal is never lost to the
/// default action.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
