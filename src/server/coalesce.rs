//! Async replication's changes wait a moment before they go to the backups: the latest
//! version of each record, in the order the records first changed.
//!
//! The backup keeps the newest version of a record, so a pending change a newer one of
//! the same record replaces is simply dropped, with one exception: a removal. A record
//! created again under the same key starts over at version 1, which the backup would
//! ignore while it still held the removed record's higher version; so a pending removal
//! is handed back to be sent first, never replaced.

use std::collections::HashMap;

use sipshard_shards::StripeId;
use sipshard_shards::table::{CallKey, Change, Hints};

/// A record: its stripe and key.
type RecordId = (StripeId, CallKey);

/// The changes waiting to go, the latest per record.
#[derive(Default)]
pub(super) struct Coalescer {
    /// Oldest record first.
    waiting: Vec<Change>,
    /// Where each record's change is in `waiting`.
    at: HashMap<RecordId, usize>,
    /// Changes dropped because a newer one of their record replaced them.
    replaced: u64,
}

impl Coalescer {
    /// Keeps `change` in place of the record's pending one. Returns a pending removal the
    /// caller must send before anything else of the record, and whether `change` is the
    /// first one waiting (the caller then starts the timer that sends them).
    pub(super) fn put(&mut self, change: Change) -> (Option<Change>, bool) {
        let id = (change.stripe, change.key.clone());
        if let Some(&i) = self.at.get(&id) {
            let pending = std::mem::replace(&mut self.waiting[i], change);
            if is_removal(&pending) {
                return (Some(pending), false);
            }
            self.replaced += 1;
            return (None, false);
        }
        self.at.insert(id, self.waiting.len());
        self.waiting.push(change);
        (None, self.waiting.len() == 1)
    }

    /// Every waiting change, oldest record first; the coalescer is empty after.
    pub(super) fn take(&mut self) -> Vec<Change> {
        self.at.clear();
        std::mem::take(&mut self.waiting)
    }

    /// Changes dropped because a newer one of their record replaced them.
    pub(super) fn replaced(&self) -> u64 {
        self.replaced
    }
}

fn is_removal(change: &Change) -> bool {
    change.hints.contains(Hints::REMOVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &[u8], version: u64, hints: Hints) -> Change {
        Change { stripe: StripeId(7), key: key.into(), version, hints, bytes: vec![version as u8] }
    }

    fn versions(changes: &[Change]) -> Vec<(&[u8], u64)> {
        changes.iter().map(|c| (&*c.key, c.version)).collect()
    }

    #[test]
    fn the_latest_version_of_each_record_goes_in_first_change_order() {
        let mut c = Coalescer::default();
        assert_eq!(c.put(change(b"a", 1, Hints::NONE)), (None, true), "the first starts the timer");
        assert_eq!(c.put(change(b"b", 4, Hints::NONE)), (None, false));
        assert_eq!(c.put(change(b"a", 2, Hints::NONE)), (None, false));
        assert_eq!(versions(&c.take()), [(&b"a"[..], 2), (&b"b"[..], 4)]);
        assert_eq!(c.replaced(), 1);
        assert!(c.take().is_empty());
        assert_eq!(c.put(change(b"a", 3, Hints::NONE)), (None, true), "empty again: a new timer");
    }

    #[test]
    fn a_pending_removal_is_never_replaced_but_handed_back_to_go_first() {
        let mut c = Coalescer::default();
        c.put(change(b"a", 9, Hints::REMOVED));
        // The key is used again: its new record starts at version 1.
        let (first, _) = c.put(change(b"a", 1, Hints::NONE));
        assert_eq!(first.map(|f| (f.version, f.hints)), Some((9, Hints::REMOVED)));
        assert_eq!(versions(&c.take()), [(&b"a"[..], 1)]);
        assert_eq!(c.replaced(), 0);
    }
}
