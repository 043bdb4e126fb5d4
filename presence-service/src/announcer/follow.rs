//! Following the store's change log into the node's copy (`mirror`): entries in order, a
//! re-read of the view when entries were lost, a hold-over when the store lost its data, and the
//! heartbeat that keeps the node registered and checks that nothing was missed.

use std::time::Instant;

use socketioxide::adapter::Adapter;

use super::{Announcer, Presence, DRAIN_PER_TURN};
use crate::backend::{Change, Position};
use crate::mirror::Applied;
use crate::modes::Env;

impl<A: Adapter> Announcer<A> {
    /// An entry of the log, as published.
    pub(super) async fn follow(&mut self, change: Change, presence: &Presence<A>) {
        if self
            .holding_over
            .as_ref()
            .is_some_and(|(epoch, _)| *epoch != change.at.epoch)
        {
            // Lost its data again while this node waited for it to be refilled.
            self.hold_over(change.at.epoch.clone());
        }
        let epoch = change.at.epoch.clone();
        let applied = self.mirror.apply(change, |id| presence.holds(id));
        match applied {
            Applied::Gap => {
                // A reload that failed is retried at `reload_at`, not at every later entry.
                if self.reload_at.is_none() {
                    tracing::info!("entries of the change log were lost; reading the view again");
                    self.reload(presence).await;
                }
            }
            Applied::NewEpoch => self.hold_over(epoch),
            other => self.announce(other),
        }
    }

    /// Whatever the link has already delivered.
    pub(super) async fn drain_changes(&mut self, presence: &Presence<A>) {
        for _ in 0..DRAIN_PER_TURN {
            let Some(change) = self.changes.as_mut().and_then(|rx| rx.try_recv().ok()) else {
                break;
            };
            self.follow(change, presence).await;
        }
    }

    /// The entry this node just wrote: announced now if it is next in the log, else when it
    /// arrives with the entries before it.
    pub(super) fn follow_own(&mut self, change: Change, presence: &Presence<A>) {
        let applied = self.mirror.apply_own(change, |id| presence.holds(id));
        self.announce(applied);
    }

    /// The store lost its data (`epoch` is its new life): every node stores its users again at
    /// its next heartbeat; until then the copy holds over, and is then read again. Another epoch
    /// while holding over (the store lost its data again) starts the wait over.
    pub(super) fn hold_over(&mut self, epoch: String) {
        if self.holding_over.as_ref().is_some_and(|(e, _)| *e == epoch) {
            return;
        }
        tracing::info!(%epoch, "the presence store lost its data; holding the list over until every node stored its users again");
        self.mirror.hold_over();
        let until = Instant::now() + self.heartbeat_interval * 2 + self.op_timeout;
        self.holding_over = Some((epoch, until));
        self.reload_at = Some(until);
    }

    /// Reads the view and makes it the copy (plus this node's own users), announcing what that
    /// changed. A view of another epoch starts a hold-over instead; a failed read is retried.
    pub(super) async fn reload(&mut self, presence: &Presence<A>) {
        if let Some((_, until)) = &self.holding_over {
            if Instant::now() < *until {
                // Asked early (the link came back, a heartbeat): the hold-over's end reads it.
                return;
            }
        }
        self.reload_at = None;
        let view = match self.backend.view().await {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read who is online; retrying");
                self.reload_at = Some(Instant::now() + self.heartbeat_interval);
                return;
            }
        };
        // The epoch the copy is of, or the one a hold-over waited to be refilled.
        let expected = match &self.holding_over {
            Some((epoch, _)) => Some(epoch),
            None => self.mirror.position().map(|at| &at.epoch),
        };
        if expected.is_some_and(|e| *e != view.at.epoch) {
            self.hold_over(view.at.epoch);
            return;
        }
        if self.mode.snapshots_before_changes() {
            self.send_snapshots();
        }
        self.holding_over = None;
        let changes = self.mirror.load(view, &presence.held());
        if !changes.is_empty() {
            tracing::info!(
                changes = changes.len(),
                "list read again from the store; announcing what changed"
            );
        }
        self.mode.reloaded(
            &Env {
                fanout: &self.fanout,
                mirror: &self.mirror,
            },
            changes,
        );
        self.metrics.online_users.set(self.mirror.len() as i64);
    }

    /// `settled`: no effect is queued, so the model's users are exactly what should be stored.
    pub(super) async fn maintain(&mut self, presence: &Presence<A>, settled: bool) {
        // Whatever arrived before the heartbeat is in the copy before positions are compared.
        self.drain_changes(presence).await;
        let held = presence.held();
        let was_healthy = self.backend.is_healthy();
        let beat = self
            .backend
            .maintain(settled.then_some(held.as_slice()))
            .await;
        self.metrics
            .backend_healthy
            .set(self.backend.is_healthy() as i64);
        match beat {
            // Back after an outage: what this node changed meanwhile is in the store now (the
            // heartbeat re-synced it), and the copy may hold what only this node thought.
            Ok(at) if !was_healthy => {
                self.last_beat = Some(at);
                self.reload(presence).await;
            }
            Ok(at) => self.check_position(at, presence).await,
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
    }

    /// Compares the copy with the log's position: another epoch, or a position behind the
    /// copy's (the store went back to older data), means the store lost data; a copy still
    /// behind where the log was a whole heartbeat ago means entries were lost on the way.
    pub(super) async fn check_position(&mut self, at: Position, presence: &Presence<A>) {
        let previous = self.last_beat.replace(at.clone());
        if self.holding_over.is_some() || self.reload_at.is_some() {
            return;
        }
        let Some(mine) = self.mirror.position().cloned() else {
            self.reload(presence).await;
            return;
        };
        if at.epoch != mine.epoch || at.seq < mine.seq {
            self.hold_over(at.epoch);
        } else if previous.is_some_and(|p| p.epoch == mine.epoch && mine.seq < p.seq) {
            tracing::info!(
                have = mine.seq,
                logged = at.seq,
                "change log entries did not arrive; reading the view again"
            );
            self.reload(presence).await;
        }
    }
}
