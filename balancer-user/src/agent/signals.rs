//! Signals as events: SIGTERM and SIGINT ask the agent to stop, SIGHUP asks it to reload.
//! (SIGPIPE needs nothing: Rust's runtime ignores it, so a peer that closes a socket early
//! is an `EPIPE` error on that socket, never the end of the agent.)

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use super::Event;

/// Installs the handlers (from now on these signals no longer kill the process) and sends
/// an [`Event::Stop`] for each SIGTERM or SIGINT and an [`Event::Reload`] for each SIGHUP.
pub fn start(events: mpsc::Sender<Event>) -> std::io::Result<()> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // Operators send SIGHUP to reload; its default action would end the agent.
    let mut sighup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                Some(()) = sigterm.recv() => Event::Stop { signal: "SIGTERM" },
                Some(()) = sigint.recv() => Event::Stop { signal: "SIGINT" },
                Some(()) = sighup.recv() => Event::Reload { signal: "SIGHUP" },
                else => return,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
