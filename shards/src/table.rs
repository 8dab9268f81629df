//! Call tables: per-stripe hashbrown maps of versioned records with the
//! "library book" contract (US 8,001,250): [`CallTable::get_and_lock`] checks
//! a record out, a second checkout of the same key is refused until
//! [`CallTable::put_and_unlock`] checks it back in. Every check-in and removal
//! bumps the version and emits one [`Change`] on the change feed, which
//! replication, geo shipping and the cold path consume.
//!
//! Bounded: at most `capacity` live calls per shard; a new key beyond it is
//! refused ([`TableError::Full`], the role answers 503 with Retry-After) and
//! existing records are never evicted. A record checked in with
//! [`Hints::LINGERING`] (its call is over; only finished transactions are left,
//! absorbing retransmissions until their timers J, K or L, up to 64·T1 = 32 s)
//! is not a call: it counts only against the table's hard bound of
//! [`LINGERING_ROOM`] × `capacity` records in all. Without that, a shard at a
//! steady 3,000 calls/s held about 100,000 ended calls and refused every new
//! one. Records cross the wire and the disk in one format ([`codec`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::stripe::StripeId;

/// Bytes of a [`CallKey`] held inline (SIPp's Call-IDs fit; many phones' 40-60 byte ones do not
/// and are shared).
pub const INLINE_CALL_KEY: usize = 38;

/// A record's key (a Call-ID, or a registrar's AoR) as the table stores it: up to
/// [`INLINE_CALL_KEY`] bytes inline (no allocation, and a lookup compares it without a
/// pointer chase), a longer one shared, so a clone for the shard's indexes or the change
/// feed copies at most the inline bytes and never allocates.
#[derive(Clone)]
pub struct CallKey(KeyBytes);

#[derive(Clone)]
enum KeyBytes {
    Inline { len: u8, bytes: [u8; INLINE_CALL_KEY] },
    Shared(std::sync::Arc<[u8]>),
}

impl From<&[u8]> for CallKey {
    fn from(key: &[u8]) -> Self {
        let mut bytes = [0u8; INLINE_CALL_KEY];
        match bytes.get_mut(..key.len()) {
            Some(inline) => {
                inline.copy_from_slice(key);
                CallKey(KeyBytes::Inline { len: key.len() as u8, bytes })
            }
            None => CallKey(KeyBytes::Shared(key.into())),
        }
    }
}

impl core::ops::Deref for CallKey {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyBytes::Shared(bytes) => bytes,
        }
    }
}

impl core::borrow::Borrow<[u8]> for CallKey {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl PartialEq for CallKey {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for CallKey {}

impl core::hash::Hash for CallKey {
    /// As the bytes hash: tables keyed by `CallKey` are looked up by `&[u8]`.
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl core::fmt::Debug for CallKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// One stripe's records.
type StripeTable<R> = hashbrown::HashMap<CallKey, Slot<R>>;

/// Flags on a check-in: what just became true of the record (a transaction boundary).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Hints(pub u8);

impl Hints {
    /// No hint: the state is still changing.
    pub const NONE: Hints = Hints(0);
    /// A dialog was confirmed (2xx/ACK): steady state, worth shipping to the other site.
    pub const DIALOG_CONFIRMED: Hints = Hints(1);
    /// The call ended.
    pub const CALL_ENDED: Hints = Hints(2);
    /// The record was removed.
    pub const REMOVED: Hints = Hints(4);
    /// Nothing of a call is left in the record: only finished transactions waiting out
    /// their timers. Such a record does not count against the table's call capacity.
    pub const LINGERING: Hints = Hints(8);

    /// Whether all flags of `other` are set.
    pub fn contains(self, other: Hints) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Hints {
    type Output = Hints;
    fn bitor(self, rhs: Hints) -> Hints {
        Hints(self.0 | rhs.0)
    }
}

/// One entry of the change feed: a check-in or a removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The record's stripe.
    pub stripe: StripeId,
    /// The record's key.
    pub key: CallKey,
    /// The version after this change.
    pub version: u64,
    /// What the role said about this change.
    pub hints: Hints,
    /// The encoded record ([`codec`]); empty for a removal.
    pub bytes: Vec<u8>,
}

/// A record checked out of the table.
#[derive(Debug, PartialEq, Eq)]
pub struct Checkout<R> {
    /// The record (`None` when the key is new).
    pub record: Option<R>,
    /// Its version (0 for a new key).
    pub version: u64,
    /// The key as the table stores it (shared: cloning it copies nothing).
    pub key: CallKey,
}

/// Why a table operation was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The record is checked out (library-book rule): retry after its check-in.
    Busy,
    /// The shard holds its maximum of live calls (or of records in all): refuse the new call.
    Full,
    /// The key is not checked out (put/unlock without get).
    NotCheckedOut,
    /// No record under the key, and the caller did not ask to create one.
    NotFound,
}

#[derive(Debug)]
struct Slot<R> {
    version: u64,
    /// `None` while checked out, or while a new key awaits its first check-in.
    record: Option<R>,
    checked_out: bool,
    /// Checked in with [`Hints::LINGERING`]: counted in `lingering`, not as a call.
    lingering: bool,
}

impl<R> Slot<R> {
    /// Marks the slot lingering or not, keeping `count` (the table's lingering records) right.
    fn set_lingering(&mut self, lingering: bool, count: &mut usize) {
        let was = std::mem::replace(&mut self.lingering, lingering);
        *count = *count + usize::from(lingering) - usize::from(was);
    }
}

/// How many records a table holds in all, as a multiple of its call capacity: room for the
/// ended calls whose transactions linger up to 32 s (at a steady rate R calls/s a shard
/// holds about 33·R of them), bounded so memory is.
pub const LINGERING_ROOM: usize = 4;

/// A shard's call table.
#[derive(Debug)]
pub struct CallTable<R> {
    /// Indexed by stripe number (a direct index, not a second hash per operation); grown to
    /// the highest stripe seen.
    stripes: Vec<StripeTable<R>>,
    live: usize,
    /// Records checked in as lingering (ended calls), of `live`.
    lingering: usize,
    capacity: usize,
    feed: std::collections::VecDeque<Change>,
    feed_enabled: bool,
}

impl<R: Serialize + DeserializeOwned> CallTable<R> {
    /// A table for at most `capacity` live records, with its change feed on.
    pub fn new(capacity: usize) -> Self {
        CallTable {
            stripes: Vec::new(),
            live: 0,
            lingering: 0,
            capacity,
            feed: std::collections::VecDeque::new(),
            feed_enabled: true,
        }
    }

    /// Turns the change feed off (or on). A shard with no consumer (no replication,
    /// geo or cold path) turns it off so check-ins do not encode records for nobody.
    pub fn set_feed(&mut self, enabled: bool) {
        self.feed_enabled = enabled;
        if !enabled {
            self.feed.clear();
        }
    }

    /// Live records (checked out ones included).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Live records that are calls: not checked in as [`Hints::LINGERING`].
    pub fn calls(&self) -> usize {
        self.live - self.lingering
    }

    /// Whether a new key fits: under the call capacity, and under the bound on records in all.
    fn has_room(&self) -> bool {
        self.calls() < self.capacity && self.live < self.capacity.saturating_mul(LINGERING_ROOM)
    }

    /// Whether the table holds no record.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The configured maximum of live calls.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Checks out the record under `key`; a new key gets an empty slot when `create`,
    /// and is `NotFound` otherwise (nothing is then checked out).
    #[inline(always)]
    pub fn get_and_lock(&mut self, stripe: StripeId, key: &[u8], create: bool) -> Result<Checkout<R>, TableError> {
        let room = self.has_room();
        // One hash and one probe, whether the key is there or gets its slot.
        match grown(&mut self.stripes, stripe).entry_ref(key) {
            hashbrown::hash_map::EntryRef::Occupied(mut entry) => {
                let stored = CallKey::clone(entry.key());
                let slot = entry.get_mut();
                if slot.checked_out {
                    return Err(TableError::Busy);
                }
                slot.checked_out = true;
                Ok(Checkout { record: slot.record.take(), version: slot.version, key: stored })
            }
            hashbrown::hash_map::EntryRef::Vacant(_) if !create => Err(TableError::NotFound),
            hashbrown::hash_map::EntryRef::Vacant(_) if !room => Err(TableError::Full),
            hashbrown::hash_map::EntryRef::Vacant(entry) => {
                let slot = Slot { version: 0, record: None, checked_out: true, lingering: false };
                let stored = CallKey::clone(entry.insert_entry(slot).key());
                self.live += 1;
                Ok(Checkout { record: None, version: 0, key: stored })
            }
        }
    }

    /// Checks a record back in: bumps its version and emits one change. Returns the new version.
    #[inline(always)]
    pub fn put_and_unlock(&mut self, stripe: StripeId, key: &[u8], record: R, hints: Hints) -> Result<u64, TableError> {
        let feed_enabled = self.feed_enabled;
        let (stored, slot) = checked_out(&mut self.stripes, stripe, key)?;
        slot.version += 1;
        let version = slot.version;
        // The change, only when the feed is on (no encode, no key reference otherwise).
        let change = feed_enabled.then(|| (CallKey::clone(stored), codec::encode(stripe, version, &record)));
        slot.record = Some(record);
        slot.checked_out = false;
        slot.set_lingering(hints.contains(Hints::LINGERING), &mut self.lingering);
        if let Some((key, bytes)) = change {
            self.feed.push_back(Change { stripe, key, version, hints, bytes });
        }
        Ok(version)
    }

    /// Returns a checked-out record unchanged: no version bump, no change. A new key with
    /// nothing to store is dropped.
    pub fn unlock(&mut self, stripe: StripeId, key: &[u8], record: Option<R>) -> Result<(), TableError> {
        let (_, slot) = checked_out(&mut self.stripes, stripe, key)?;
        match record {
            Some(record) => {
                slot.record = Some(record);
                slot.checked_out = false;
            }
            None if slot.version == 0 => {
                self.drop_slot(stripe, key);
            }
            None => return Err(TableError::NotCheckedOut),
        }
        Ok(())
    }

    /// Removes a record (checked out or not) and emits a removal change.
    pub fn remove(&mut self, stripe: StripeId, key: &[u8], hints: Hints) -> Option<u64> {
        let (key, slot) = self.drop_slot(stripe, key)?;
        let version = slot.version + 1;
        if !self.feed_enabled {
            return Some(version);
        }
        self.feed.push_back(Change { stripe, key, version, hints: hints | Hints::REMOVED, bytes: Vec::new() });
        Some(version)
    }

    /// The next change of the feed.
    pub fn poll_change(&mut self) -> Option<Change> {
        self.feed.pop_front()
    }

    /// Installs a record received from a replica or the cold store, unless this table
    /// already has that version or a newer one; `hints` are the change's (a lingering record
    /// stays out of the call count here too). Returns whether it was installed.
    pub fn install(
        &mut self,
        stripe: StripeId,
        key: &[u8],
        version: u64,
        record: R,
        hints: Hints,
    ) -> Result<bool, TableError> {
        let lingering = hints.contains(Hints::LINGERING);
        let room = self.has_room();
        let table = grown(&mut self.stripes, stripe);
        match table.get_mut(key) {
            Some(slot) if slot.checked_out => Err(TableError::Busy),
            Some(slot) if slot.version >= version => Ok(false),
            Some(slot) => {
                slot.version = version;
                slot.record = Some(record);
                slot.set_lingering(lingering, &mut self.lingering);
                Ok(true)
            }
            None if !room => Err(TableError::Full),
            None => {
                self.live += 1;
                self.lingering += usize::from(lingering);
                table.insert(key.into(), Slot { version, record: Some(record), checked_out: false, lingering });
                Ok(true)
            }
        }
    }

    /// Reads a record that is not checked out (for inspection; roles use get_and_lock).
    pub fn peek(&self, stripe: StripeId, key: &[u8]) -> Option<(&R, u64)> {
        let slot = self.stripe(stripe)?.get(key)?;
        slot.record.as_ref().map(|r| (r, slot.version))
    }

    /// Every record of a stripe that is not checked out, for snapshots.
    pub fn stripe_records(&self, stripe: StripeId) -> impl Iterator<Item = (&[u8], &R, u64)> {
        self.stripe(stripe)
            .into_iter()
            .flat_map(|t| t.iter())
            .filter_map(|(k, s)| s.record.as_ref().map(|r| (&**k, r, s.version)))
    }

    /// The version of the record under `key`, if the table holds it.
    pub fn version(&self, stripe: StripeId, key: &[u8]) -> Option<u64> {
        self.stripe(stripe).and_then(|t| t.get(key)).filter(|s| s.record.is_some()).map(|s| s.version)
    }

    /// Every record that is not checked out, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &R> {
        self.stripes.iter().flat_map(|t| t.values()).filter_map(|s| s.record.as_ref())
    }

    /// A stripe's records, if the table has seen the stripe.
    fn stripe(&self, stripe: StripeId) -> Option<&StripeTable<R>> {
        self.stripes.get(stripe.0 as usize)
    }

    /// Drops a record without a change on the feed (a replica whose owner removed it); a
    /// checked-out record stays. Returns whether one was dropped.
    pub fn forget(&mut self, stripe: StripeId, key: &[u8]) -> bool {
        let present = self.stripe(stripe).and_then(|t| t.get(key)).is_some_and(|slot| !slot.checked_out);
        if present {
            self.drop_slot(stripe, key);
        }
        present
    }

    /// Takes a slot out of the table (its key too, for the removal's change).
    fn drop_slot(&mut self, stripe: StripeId, key: &[u8]) -> Option<(CallKey, Slot<R>)> {
        // Empty stripe maps stay: there are at most as many as stripes, and a busy stripe
        // would otherwise reallocate its map for every call.
        let (key, slot) = self.stripes.get_mut(stripe.0 as usize)?.remove_entry(key)?;
        self.live -= 1;
        self.lingering -= usize::from(slot.lingering);
        Some((key, slot))
    }
}

/// A checked-out slot of `stripes` and its stored key (a free function, so the table's
/// counters stay borrowable beside it).
fn checked_out<'a, R>(
    stripes: &'a mut [StripeTable<R>],
    stripe: StripeId,
    key: &[u8],
) -> Result<(&'a CallKey, &'a mut Slot<R>), TableError> {
    match stripes.get_mut(stripe.0 as usize).and_then(|s| s.get_key_value_mut(key)) {
        Some((stored, slot)) if slot.checked_out => Ok((stored, slot)),
        _ => Err(TableError::NotCheckedOut),
    }
}

/// Stripe `stripe`'s records, `stripes` grown to hold it.
fn grown<R>(stripes: &mut Vec<StripeTable<R>>, stripe: StripeId) -> &mut StripeTable<R> {
    let i = stripe.0 as usize;
    if i >= stripes.len() {
        stripes.resize_with(i + 1, StripeTable::default);
    }
    &mut stripes[i]
}

/// The record format, on the replica wire and on disk:
///
/// ```text
/// format:u8 (=1) | stripe:u32 LE | version:u64 LE | length:u32 LE | postcard body | crc32:u32 LE
/// ```
///
/// The CRC-32 covers everything before it. Encode asserts the result decodes
/// back to the same header; decode checks format, length and checksum before
/// trusting a byte (TigerBeetle: assert on both sides).
pub mod codec {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::stripe::StripeId;

    /// The current format byte.
    pub const FORMAT: u8 = 1;
    const HEADER: usize = 1 + 4 + 8 + 4;
    const TRAILER: usize = 4;

    /// Why a record did not decode.
    #[derive(Copy, Clone, Debug, PartialEq, Eq)]
    pub enum CodecError {
        /// Shorter than its header and trailer, or than its stated length.
        Truncated,
        /// An unknown format byte.
        UnknownFormat(u8),
        /// The checksum does not match (corruption).
        Checksum,
        /// The body does not deserialize.
        Body,
    }

    /// Header fields of an encoded record.
    #[derive(Copy, Clone, Debug, PartialEq, Eq)]
    pub struct RecordHeader {
        /// Stripe of the record.
        pub stripe: StripeId,
        /// Version of the record.
        pub version: u64,
    }

    /// Encodes a record.
    pub fn encode<R: Serialize>(stripe: StripeId, version: u64, record: &R) -> Vec<u8> {
        let body = postcard::to_stdvec(record).expect("invariant: records serialize");
        let mut out = Vec::with_capacity(HEADER + body.len() + TRAILER);
        out.push(FORMAT);
        out.extend_from_slice(&stripe.0.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&u32::try_from(body.len()).expect("invariant: record under 4 GiB").to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(header(&out), Ok(RecordHeader { stripe, version }), "invariant: encode round-trips");
        out
    }

    /// Checks framing and checksum and returns the header.
    pub fn header(bytes: &[u8]) -> Result<RecordHeader, CodecError> {
        body_span(bytes).map(|(h, _)| h)
    }

    fn body_span(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), CodecError> {
        if bytes.len() < HEADER + TRAILER {
            return Err(CodecError::Truncated);
        }
        if bytes[0] != FORMAT {
            return Err(CodecError::UnknownFormat(bytes[0]));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("invariant: 4 bytes"));
        let length = u32_at(13) as usize;
        if bytes.len() != HEADER + length + TRAILER {
            return Err(CodecError::Truncated);
        }
        let crc_at = HEADER + length;
        if crc32fast::hash(&bytes[..crc_at]) != u32_at(crc_at) {
            return Err(CodecError::Checksum);
        }
        let stripe = StripeId(u32_at(1));
        let version = u64::from_le_bytes(bytes[5..13].try_into().expect("invariant: 8 bytes"));
        Ok((RecordHeader { stripe, version }, &bytes[HEADER..crc_at]))
    }

    /// Decodes a record after checking framing and checksum.
    pub fn decode<R: DeserializeOwned>(bytes: &[u8]) -> Result<(RecordHeader, R), CodecError> {
        let (header, body) = body_span(bytes)?;
        let record = postcard::from_bytes(body).map_err(|_| CodecError::Body)?;
        Ok((header, record))
    }
}

#[cfg(test)]
mod tests {
    use super::codec::{CodecError, RecordHeader};
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Call {
        state: u8,
        timers: Vec<(u8, u64)>,
    }

    const S: StripeId = StripeId(7);

    #[test]
    fn a_call_key_holds_short_keys_inline_and_long_ones_shared_and_is_found_by_its_bytes() {
        let mut table = CallTable::<Call>::new(10);
        for len in [0, 1, INLINE_CALL_KEY - 1, INLINE_CALL_KEY, INLINE_CALL_KEY + 1, 300] {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let key = CallKey::from(&bytes[..]);
            assert_eq!(&*key, &bytes[..], "{len} bytes read back");
            assert_eq!(matches!(key.0, KeyBytes::Inline { .. }), len <= INLINE_CALL_KEY, "{len} bytes");
            assert_eq!(key.clone(), key);
            // The table's maps are keyed by CallKey and looked up by &[u8]: the two hash alike.
            let checkout = table.get_and_lock(S, &bytes, true).expect("room");
            assert_eq!(&*checkout.key, &bytes[..]);
            table.put_and_unlock(S, &bytes, Call { state: len as u8, timers: vec![] }, Hints::NONE).expect("in");
            let record = table.get_and_lock(S, &bytes, false).expect("found").record.expect("stored");
            assert_eq!(record.state, len as u8);
            table.unlock(S, &bytes, Some(record)).expect("back");
        }
        assert_ne!(CallKey::from(&b"a"[..]), CallKey::from(&b"b"[..]));
        // What a table slot pays for the key (a shared key's pointer and length took 16).
        assert_eq!(std::mem::size_of::<CallKey>(), 40);
    }

    #[test]
    fn second_checkout_is_refused_until_check_in() {
        let mut table: CallTable<Call> = CallTable::new(10);
        let first = table.get_and_lock(S, b"call-1", true).unwrap();
        assert_eq!(first, Checkout { record: None, version: 0, key: b"call-1"[..].into() });
        assert_eq!(table.get_and_lock(S, b"call-1", true), Err(TableError::Busy));
        let v = table.put_and_unlock(S, b"call-1", Call { state: 1, timers: vec![] }, Hints::NONE).unwrap();
        assert_eq!(v, 1);
        assert_eq!(table.get_and_lock(S, b"no-such-call", false), Err(TableError::NotFound));
        assert_eq!(table.unlock(S, b"no-such-call", None), Err(TableError::NotCheckedOut), "nothing was checked out");
        let again = table.get_and_lock(S, b"call-1", false).unwrap();
        assert_eq!(again.version, 1);
        assert_eq!(again.record.unwrap().state, 1);
    }

    #[test]
    fn every_check_in_bumps_the_version_and_emits_one_change() {
        let mut table: CallTable<Call> = CallTable::new(10);
        for expected in 1..=3u64 {
            table.get_and_lock(S, b"k", true).unwrap();
            let version = table
                .put_and_unlock(S, b"k", Call { state: expected as u8, timers: vec![] }, Hints::DIALOG_CONFIRMED)
                .unwrap();
            assert_eq!(version, expected);
            let change = table.poll_change().expect("one change per check-in");
            assert_eq!((change.stripe, change.version, change.hints), (S, expected, Hints::DIALOG_CONFIRMED));
            assert_eq!(codec::header(&change.bytes), Ok(RecordHeader { stripe: S, version: expected }));
            assert_eq!(table.poll_change(), None);
        }
        table.get_and_lock(S, b"k", false).unwrap();
        table.unlock(S, b"k", Some(Call { state: 9, timers: vec![] })).unwrap();
        assert_eq!(table.poll_change(), None, "unlock without changes emits nothing");
        assert_eq!(table.remove(S, b"k", Hints::CALL_ENDED), Some(4));
        let removal = table.poll_change().unwrap();
        assert!(removal.hints.contains(Hints::REMOVED | Hints::CALL_ENDED));
        assert!(removal.bytes.is_empty());
        assert!(table.is_empty());
    }

    #[test]
    fn lingering_records_do_not_count_as_calls_but_are_bounded() {
        let call = || Call { state: 0, timers: vec![] };
        let mut table: CallTable<Call> = CallTable::new(2);
        for key in [&b"a"[..], b"b"] {
            table.get_and_lock(S, key, true).unwrap();
            table.put_and_unlock(S, key, call(), Hints::LINGERING).unwrap();
        }
        assert_eq!((table.len(), table.calls()), (2, 0));
        for key in [&b"c"[..], b"d"] {
            table.get_and_lock(S, key, true).expect("ended calls leave room for new ones");
            table.put_and_unlock(S, key, call(), Hints::NONE).unwrap();
        }
        assert_eq!(table.get_and_lock(S, b"e", true), Err(TableError::Full), "two calls are the capacity");
        // A call that ends makes room; one that lingers and is checked in again as a call does not.
        table.get_and_lock(S, b"c", false).unwrap();
        table.put_and_unlock(S, b"c", call(), Hints::LINGERING).unwrap();
        assert_eq!(table.calls(), 1);
        table.get_and_lock(S, b"a", false).unwrap();
        table.put_and_unlock(S, b"a", call(), Hints::NONE).unwrap();
        assert_eq!(table.calls(), 2);
        assert_eq!(table.get_and_lock(S, b"e", true), Err(TableError::Full));
        table.remove(S, b"a", Hints::NONE);
        table.remove(S, b"b", Hints::NONE);
        assert_eq!((table.len(), table.calls()), (2, 1), "removing a lingering record uncounts it");
        // In all, at most LINGERING_ROOM x capacity records, lingering or not.
        for i in 0..LINGERING_ROOM * 2 {
            let key = format!("l{i}");
            match table.get_and_lock(S, key.as_bytes(), true) {
                Ok(_) => table.put_and_unlock(S, key.as_bytes(), call(), Hints::LINGERING).map(|_| ()).unwrap(),
                Err(e) => {
                    assert_eq!(e, TableError::Full);
                    assert_eq!(table.len(), LINGERING_ROOM * 2, "refused only at the bound on records");
                    return;
                }
            }
        }
        panic!("the bound on records was never reached");
    }

    #[test]
    fn capacity_refuses_new_keys_and_never_evicts() {
        let mut table: CallTable<Call> = CallTable::new(2);
        for key in [&b"a"[..], b"b"] {
            table.get_and_lock(S, key, true).unwrap();
            table.put_and_unlock(S, key, Call { state: 0, timers: vec![] }, Hints::NONE).unwrap();
        }
        assert_eq!(table.get_and_lock(S, b"c", true), Err(TableError::Full));
        assert!(table.peek(S, b"a").is_some() && table.peek(S, b"b").is_some());
        assert_eq!(table.get_and_lock(S, b"a", false).unwrap().version, 1, "existing records still check out");
        table.remove(S, b"b", Hints::NONE);
        assert!(table.get_and_lock(S, b"c", true).is_ok(), "room again after a removal");
    }

    #[test]
    fn records_survive_the_codec_with_timers_and_corruption_is_detected() {
        let call = Call { state: 3, timers: vec![(b'B', 32_000), (b'H', 64_000)] };
        let bytes = codec::encode(S, 42, &call);
        let (header, back): (RecordHeader, Call) = codec::decode(&bytes).unwrap();
        assert_eq!(header, RecordHeader { stripe: S, version: 42 });
        assert_eq!(back, call);
        for i in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= 0x40;
            assert!(codec::decode::<Call>(&corrupt).is_err(), "flip at byte {i} went unnoticed");
        }
        assert_eq!(codec::decode::<Call>(&bytes[..bytes.len() - 1]), Err(CodecError::Truncated));
    }

    #[test]
    fn a_table_without_consumers_emits_no_changes_but_keeps_versions() {
        let mut table: CallTable<Call> = CallTable::new(4);
        table.set_feed(false);
        table.get_and_lock(S, b"k", true).unwrap();
        assert_eq!(table.put_and_unlock(S, b"k", Call { state: 1, timers: vec![] }, Hints::NONE), Ok(1));
        assert_eq!(table.poll_change(), None);
        assert_eq!(table.remove(S, b"k", Hints::NONE), Some(2));
        assert_eq!(table.poll_change(), None);
    }

    #[test]
    fn install_keeps_the_newest_version() {
        let mut table: CallTable<Call> = CallTable::new(4);
        assert_eq!(table.install(S, b"k", 5, Call { state: 5, timers: vec![] }, Hints::NONE), Ok(true));
        assert_eq!(table.install(S, b"k", 4, Call { state: 4, timers: vec![] }, Hints::NONE), Ok(false));
        assert_eq!(table.calls(), 1);
        assert_eq!(table.peek(S, b"k").map(|(c, v)| (c.state, v)), Some((5, 5)));
        assert_eq!(table.stripe_records(S).count(), 1);
        assert_eq!(table.install(S, b"k", 6, Call { state: 6, timers: vec![] }, Hints::LINGERING), Ok(true));
        assert_eq!((table.len(), table.calls()), (1, 0), "a lingering copy is not a call");
    }
}
