//! The listener thread: waits for the store's notices that rows were committed and wakes a
//! waiting publisher (each one, when all are publishing; see `Shared::wake_for_notice`); while
//! the notice channel is down it reconnects with back-off, and the publishers poll.

use super::relay::Shared;
use crate::backoff::Backoff;
use crate::store::outbox::EnqueueListener;
use crate::store::StoreError;
use std::time::Duration;

/// How long a listener waits before looking at the stop flag again.
const LISTEN_SLICE: Duration = Duration::from_millis(250);

pub(super) fn listen_until_stopped(
    shared: &Shared,
    first: std::result::Result<Box<dyn EnqueueListener>, StoreError>,
) {
    let mut backoff = Backoff::new();
    let mut listener = match first {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, "outbox listener unavailable; polling until it is back");
            None
        }
    };
    while !shared.stopping() {
        let Some(active) = listener.as_mut() else {
            if !backoff.wait(&shared.stopping) {
                return;
            }
            match shared.store.listener() {
                Ok(Some(fresh)) => {
                    listener = Some(fresh);
                    backoff.reset();
                    shared.wake_all(); // notices sent while it was down are lost
                }
                Ok(None) => return,
                Err(error) => tracing::warn!(%error, "outbox listener still unavailable"),
            }
            continue;
        };
        match active.wait(LISTEN_SLICE) {
            Ok(true) => shared.wake_for_notice(),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "outbox listener lost; reconnecting");
                listener = None;
                shared.wake_all();
            }
        }
    }
}
