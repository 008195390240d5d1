//! Runs a parsed command line: validated configuration in, library calls,
//! signals and output wired up. The one place that knows both the CLI and
//! the protocol side.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{
    AnnounceArgs, CodeSource, Command, GetArgs, PeersArgs, RecvArgs, SendArgs, ServeArgs, Target,
};
use crate::discovery::present::FindOptions;
use crate::discovery::{Advert, Announcement, PeerRole};
use crate::error::{describe_io, exit_code_of, Error};
use crate::events::{Event, Observer, Summary};
use crate::manifest::{Manifest, Paths};
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
        Command::Completions(args) => Ok(crate::shell::completions(
            args.shell,
            &mut std::io::stdout(),
        )?),
        Command::Man => Ok(crate::shell::man_page(&mut std::io::stdout())?),
        Command::Peers(args) => peers(&args).await,
    }
}

async fn send(args: &SendArgs, verbose: bool) -> anyhow::Result<()> {
    let reporter = Arc::new(Reporter::new(args.output.mode(verbose), Role::Send));
    let base = std::env::current_dir().unwrap_or_default();
    let (request, manifest) =
        match args
            .to_request()
            .map_err(anyhow::Error::from)
            .and_then(|request| {
                Ok((
                    request,
                    open_manifest(args.manifest.as_deref(), Paths::ReadFrom { base })?,
                ))
            }) {
            Ok(ready) => ready,
            Err(e) => return Err(ended_early(&reporter, 0, e)),
        };
    let cancel = cancelled_on_stop_signal()?;
    let lookup = Lookup {
        role: PeerRole::Recv,
        code: request.code.as_ref(),
        quiet: args.output.quiet,
    };
    let destination = match lookup.peer(&request.target, &cancel).await {
        Ok(destination) => destination,
        Err(e) => return Err(ended_early(&reporter, 0, e)),
    };
    let config = request.into_config(destination);
    let observer = crate::manifest::in_front_of(manifest.as_ref(), reporter.clone());
    let result = crate::sender::send(&config, observer, cancel).await;
    reporter.clear_bars();
    let listed = manifest.map_or(Ok(()), |m| m.finish());
    result.map(drop).and(listed)
}

/// How a dialling command (send, get) finds its peer when not given one.
struct Lookup<'a> {
    role: PeerRole,
    code: Option<&'a crate::code::Code>,
    quiet: bool,
}

impl Lookup<'_> {
    /// The address given, or the one peer of `role` found on the LAN.
    async fn peer(
        &self,
        target: &Target,
        cancel: &CancellationToken,
    ) -> anyhow::Result<crate::sender::Destination> {
        match target {
            Target::Address(given) => Ok(given.clone()),
            Target::Find { name } => {
                let options = FindOptions {
                    role: self.role,
                    name: name.clone(),
                    code_number: self.code.map(|c| c.number()),
                    quiet: self.quiet,
                };
                find_peer(options, cancel).await
            }
        }
    }
}

/// A session that ended before it began (bad flags, no peer found): a
/// `--json` stream still ends with its one final event, then `e` is the
/// process's error line.
fn ended_early(reporter: &Reporter, session: u64, e: anyhow::Error) -> anyhow::Error {
    reporter.event(Event::SessionEnded {
        session,
        peer: String::new(),
        summary: Summary::default(),
        error: Some(format!("{e:#}")),
        exit_code: exit_code_of(&e),
        turned_away: false,
    });
    e
}

/// The `--manifest` list, created (or truncated) before anything moves.
fn open_manifest(path: Option<&Path>, paths: Paths) -> anyhow::Result<Option<Arc<Manifest>>> {
    path.map(|path| Manifest::create(path, paths)).transpose()
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
    let manifest = open_manifest(args.manifest.as_deref(), Paths::StoredAs)?;
    let listener = bind(listen, "xfer recv").await?;
    let local = listener.local_addr()?;
    let shutdown = cancelled_on_stop_signal()?;
    let reporter = Arc::new(Reporter::new(args.output.mode(verbose), Role::Recv));
    reporter.listening(&local);
    tell_the_other_machine(&reporter, &local, code.as_ref(), |flag, addr| {
        format!("xfer send {flag}FILE {addr}")
    });
    let announcement = announce(
        &args.announce,
        PeerRole::Recv,
        args.output.quiet,
        &local,
        code.as_ref().map(|(c, _)| c.number()),
    );
    let observer = crate::manifest::in_front_of(manifest.as_ref(), reporter.clone());
    let report = server.serve(listener, observer, shutdown).await;
    // Sessions still open when the stop came leave no line behind.
    reporter.clear_bars();
    withdraw(announcement).await;
    let report = report?;
    if let Some(manifest) = manifest {
        manifest.finish()?;
    }
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
    let shutdown = cancelled_on_stop_signal()?;
    let reporter = Arc::new(Reporter::new(args.output.mode(verbose), Role::Send).pull_mode());
    reporter.listening(&local);
    tell_the_other_machine(&reporter, &local, code.as_ref(), |flag, addr| {
        format!("xfer get {flag}{addr}")
    });
    let announcement = announce(
        &args.announce,
        PeerRole::Serve,
        args.output.quiet,
        &local,
        code.as_ref().map(|(c, _)| c.number()),
    );
    let report = server.serve(listener, reporter.clone(), shutdown).await;
    // Sessions still open when the stop came leave no line behind.
    reporter.clear_bars();
    withdraw(announcement).await;
    if once && report.failed_sessions > 0 {
        anyhow::bail!("the getter's session did not store every file (see the messages above)");
    }
    Ok(())
}

async fn get(args: &GetArgs, verbose: bool) -> anyhow::Result<()> {
    let reporter = Arc::new(Reporter::new(args.output.mode(verbose), Role::Recv).pull_mode());
    let request = match args.to_request() {
        Ok(request) => request,
        Err(e) => return Err(ended_early(&reporter, 1, e.into())),
    };
    let cancel = cancelled_on_stop_signal()?;
    let lookup = Lookup {
        role: PeerRole::Serve,
        code: request.code.as_ref(),
        quiet: args.output.quiet,
    };
    let source = match lookup.peer(&request.target, &cancel).await {
        Ok(source) => source,
        Err(e) => return Err(ended_early(&reporter, 1, e)),
    };
    let config = request.into_config(source);
    let result = crate::receiver::fetch(&config, reporter.clone(), cancel).await;
    reporter.clear_bars();
    result.map(drop)
}

/// What a listener prints (on stderr) for the person at the other machine:
/// the command to run there, one per address this one can be reached at,
/// and with a code the code or where it came from. `command` makes the
/// command line from the code flag (`"--code "` or `""`) and an address.
fn tell_the_other_machine(
    reporter: &Reporter,
    local: &std::net::SocketAddr,
    code: Option<&(crate::code::Code, bool)>,
    command: impl Fn(&str, &str) -> String,
) {
    let flag = if code.is_some() { "--code " } else { "" };
    let mut commands: Vec<String> = crate::reach::addresses(*local)
        .iter()
        .map(|addr| command(flag, &addr.to_string()))
        .collect();
    match code {
        Some((code, generated)) => {
            // No address found for another machine (loopback only): the
            // best guess, so a coded listener always says what to run.
            if commands.is_empty() {
                commands.push(command(flag, &reach(local)));
            }
            reporter.code(code, *generated, &commands);
        }
        None => reporter.reach_by(&commands),
    }
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

/// Finds the peer `options` asks for on the LAN, unless interrupted. The
/// search runs on a thread of its own, not the runtime's blocking pool: a
/// person asked to choose may never answer, and Ctrl-C must not then wait
/// for them.
async fn find_peer(
    options: FindOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<crate::sender::Destination> {
    let (found_tx, found_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("find-peer".into())
        .spawn(move || {
            let _ = found_tx.send(crate::discovery::present::find_peer(&options));
        })
        .map_err(|e| Error::Internal(format!("cannot start the search: {e}")))?;
    tokio::select! {
        found = found_rx => {
            let found = found.map_err(|_| Error::Internal("the search stopped without an answer".into()))?;
            Ok(found?)
        }
        _ = cancel.cancelled() => Err(Error::Interrupted.into()),
    }
}

/// Announces a listener of `role` on the LAN unless asked not to or bound
/// to loopback only. Failing to announce does not stop the listener.
fn announce(
    flags: &AnnounceArgs,
    role: PeerRole,
    quiet: bool,
    local: &std::net::SocketAddr,
    code_number: Option<u16>,
) -> Option<Announcement> {
    if flags.no_announce {
        return None;
    }
    let advert = Advert {
        name: flags
            .name
            .clone()
            .unwrap_or_else(crate::discovery::default_name),
        role,
        listen: *local,
        code_number,
    };
    match crate::discovery::announce(&advert) {
        Ok(Some(announcement)) => {
            if !quiet {
                let finder = match role {
                    PeerRole::Recv => "xfer send",
                    PeerRole::Serve => "xfer get",
                };
                eprintln!(
                    "announced on the LAN as '{}' ({finder} finds it without an address; \
                     --no-announce to stop)",
                    crate::term::for_stderr(announcement.name())
                );
            }
            Some(announcement)
        }
        Ok(None) => {
            log::debug!("listening on loopback only: not announced on the LAN");
            None
        }
        Err(e) => {
            log::warn!("not announced on the LAN: {e}");
            None
        }
    }
}

/// Says goodbye on the LAN for a listener that stopped cleanly (bounded:
/// see [`Announcement::withdraw`]).
async fn withdraw(announcement: Option<Announcement>) {
    if let Some(announcement) = announcement {
        let _ = tokio::task::spawn_blocking(move || announcement.withdraw()).await;
    }
}

/// `xfer peers`.
async fn peers(args: &PeersArgs) -> anyhow::Result<()> {
    let (wait, json) = (args.wait, args.json);
    tokio::task::spawn_blocking(move || crate::discovery::present::list_peers(wait, json))
        .await
        .map_err(|e| Error::Internal(format!("the search failed: {e}")))??;
    Ok(())
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

/// A token cancelled by the first SIGINT or SIGTERM. The handlers are
/// installed by this call, before anything is announced, so an early
/// signal is never lost to the default action.
fn cancelled_on_stop_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let token = CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        log::debug!("stop requested; finishing");
        on_signal.cancel();
    });
    Ok(token)
}
