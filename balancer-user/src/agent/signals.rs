//! Signals as events: SIGTERM and SIGINT ask the agent to stop.

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use super::Event;

/// Installs the handlers (from now on these signals no longer kill the process) and sends
/// an [`Event::Stop`] for each signal that arrives.
pub fn start(events: mpsc::Sender<Event>) -> std::io::Result<()> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                Some(()) = sigterm.recv() => "SIGTERM",
                Some(()) = sigint.recv() => "SIGINT",
                else => return,
            };
            if events.send(Event::Stop { signal }).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
