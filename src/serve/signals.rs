//! Signals become supervisor events: SIGINT through `ctrlc`, the others through `signal-hook`.

use std::io;

use crossbeam_channel::Sender;

use crate::serve::event::Event;

/// Routes SIGINT (through `ctrlc`) and TERM, HUP, USR1, USR2 (through `signal-hook`) into
/// the event channel, so every decision is taken on the supervisor thread.
pub fn install(events: &Sender<Event>) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1, SIGUSR2};
    let on_int = events.clone();
    ctrlc::set_handler(move || {
        let _ = on_int.send(Event::StopRequested("SIGINT"));
    })
    .map_err(|e| io::Error::other(e.to_string()))?;

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGUSR1, SIGUSR2])?;
    let events = events.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            let event = match signal {
                SIGTERM => Event::StopRequested("SIGTERM"),
                SIGHUP => Event::ReloadRequested("SIGHUP"),
                SIGUSR1 => Event::ReloadRequested("SIGUSR1"),
                _ => Event::UpgradeRequested,
            };
            let _ = events.send(event);
        }
    })?;
    Ok(())
}
