//! Background services that keep tables and streams in shape: one file per service, each a
//! plain `run_once` plus the loop below that repeats it until shutdown.

pub(crate) mod outbox_retention;
pub(crate) mod stream_trim;

use crossbeam_channel::Receiver;
use std::time::Duration;

/// Runs `task` now and then every `interval`, until `stop` is closed (its sender dropped).
pub(crate) fn repeat_until_stopped(
    interval: Duration,
    stop: &Receiver<()>,
    mut task: impl FnMut(),
) {
    loop {
        task();
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            default(interval) => {}
        }
    }
}
