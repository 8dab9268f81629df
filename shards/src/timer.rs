//! A hierarchical timer wheel with millisecond resolution: O(1) arm and
//! cancel, bounded capacity fixed at construction, no clock of its own.
//!
//! Five levels of 64 slots cover 2^30 ms (about 12 days); a deadline beyond
//! that waits in the furthest slot and is re-placed when that slot comes due.
//! Each entry sits in an intrusive doubly linked list of its slot, so cancel
//! unlinks it in O(1); each level keeps an occupancy bitmask, so finding the
//! next due slot is a few `trailing_zeros`. Entries are placed by the highest
//! bit in which their deadline differs from the wheel's time (as in tokio's
//! wheel), so a lower level always comes due before a higher one.
//!
//! Timers are data: the wheel stores a caller key (`K`, e.g. "timer B of
//! transaction 17"); the owner of a timer keeps its deadline too, so a replica
//! can re-arm it.

/// Bits of wheel time per level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels of the wheel.
const LEVELS: usize = 5;
/// Marks the end of a slot list, or a free entry.
const NIL: u32 = u32::MAX;

/// Handle of an armed timer; stale handles (fired or cancelled) are ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

/// The wheel is at its configured capacity.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WheelFull;

#[derive(Clone, Debug)]
struct Entry<K> {
    deadline_ms: u64,
    key: Option<K>,
    generation: u32,
    prev: u32,
    next: u32,
    /// `level * SLOTS + slot`, for unlinking.
    slot: u16,
}

/// A hierarchical timer wheel holding keys of type `K`.
#[derive(Clone, Debug)]
pub struct TimerWheel<K> {
    now_ms: u64,
    heads: [u32; LEVELS * SLOTS],
    occupied: [u64; LEVELS],
    entries: Vec<Entry<K>>,
    free: Vec<u32>,
    capacity: usize,
    len: usize,
}

impl<K> TimerWheel<K> {
    /// A wheel for at most `capacity` armed timers, starting at time `now_ms`.
    pub fn new(capacity: usize, now_ms: u64) -> Self {
        assert!(capacity < NIL as usize, "invariant: capacity fits u32");
        TimerWheel {
            now_ms,
            heads: [NIL; LEVELS * SLOTS],
            occupied: [0; LEVELS],
            entries: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            capacity,
            len: 0,
        }
    }

    /// Armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The most timers it holds at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's time: every deadline up to it has been returned by [`Self::poll_expired`].
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Arms a timer for `deadline_ms` (a deadline in the past fires at the next poll).
    pub fn arm(&mut self, deadline_ms: u64, key: K) -> Result<TimerId, WheelFull> {
        let index = match self.free.pop() {
            Some(index) => index,
            None if self.entries.len() < self.capacity => {
                self.entries.push(Entry { deadline_ms: 0, key: None, generation: 0, prev: NIL, next: NIL, slot: 0 });
                (self.entries.len() - 1) as u32
            }
            None => return Err(WheelFull),
        };
        let entry = &mut self.entries[index as usize];
        entry.deadline_ms = deadline_ms.max(self.now_ms);
        entry.key = Some(key);
        let generation = entry.generation;
        self.place(index);
        self.len += 1;
        Ok(TimerId { index, generation })
    }

    /// Cancels a timer; returns its key, or `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<K> {
        let entry = self.entries.get(id.index as usize)?;
        if entry.generation != id.generation || entry.key.is_none() {
            return None;
        }
        self.unlink(id.index);
        Some(self.release(id.index))
    }

    /// The deadline of a live timer.
    pub fn deadline_ms(&self, id: TimerId) -> Option<u64> {
        let entry = self.entries.get(id.index as usize)?;
        (entry.generation == id.generation && entry.key.is_some()).then_some(entry.deadline_ms)
    }

    /// A time at or before the earliest deadline (exact when it is within 64 ms of
    /// the wheel's time; otherwise the start of the slot that holds it).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.next_due_slot().map(|(_, _, start)| start)
    }

    /// Advances the wheel to `now_ms` and returns one timer whose deadline has
    /// passed, earliest first; call until `None`.
    pub fn poll_expired(&mut self, now_ms: u64) -> Option<(TimerId, K)> {
        loop {
            let Some((level, slot, start)) = self.next_due_slot() else {
                self.now_ms = self.now_ms.max(now_ms);
                return None;
            };
            if start > now_ms {
                self.now_ms = self.now_ms.max(now_ms);
                return None;
            }
            self.now_ms = self.now_ms.max(start);
            let head = self.heads[level * SLOTS + slot];
            if level == 0 {
                // Every entry of a level-0 slot is due (deadlines are whole milliseconds).
                self.unlink(head);
                let generation = self.entries[head as usize].generation;
                let key = self.release(head);
                return Some((TimerId { index: head, generation }, key));
            }
            // Cascade: re-place the slot's entries on lower levels.
            self.heads[level * SLOTS + slot] = NIL;
            self.occupied[level] &= !(1 << slot);
            let mut index = head;
            while index != NIL {
                let next = self.entries[index as usize].next;
                self.place(index);
                index = next;
            }
        }
    }

    /// The first slot that comes due: (level, slot, the time it starts).
    fn next_due_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let slot_span = 1u64 << shift;
            let level_span = slot_span << SLOT_BITS;
            let now_slot = ((self.now_ms >> shift) as usize) & (SLOTS - 1);
            let distance = occupied.rotate_right(now_slot as u32).trailing_zeros() as usize;
            let slot = (now_slot + distance) & (SLOTS - 1);
            let window = self.now_ms & !(level_span - 1);
            let mut start = window + slot as u64 * slot_span;
            if slot < now_slot {
                start += level_span;
            }
            return Some((level, slot, start.max(self.now_ms)));
        }
        None
    }

    fn place(&mut self, index: u32) {
        let deadline = self.entries[index as usize].deadline_ms.max(self.now_ms);
        let differing = (deadline ^ self.now_ms) | (SLOTS as u64 - 1);
        let significant = 63 - differing.leading_zeros();
        let level = (significant / SLOT_BITS) as usize;
        let (level, slot) = if level < LEVELS {
            (level, ((deadline >> (SLOT_BITS * level as u32)) as usize) & (SLOTS - 1))
        } else {
            // The deadline differs from now above the top level: it lies in a later top-level window.
            let top = LEVELS - 1;
            let shift = SLOT_BITS * top as u32;
            let (slot_span, level_span) = (1u64 << shift, 1u64 << (shift + SLOT_BITS));
            let now_slot = ((self.now_ms >> shift) as usize) & (SLOTS - 1);
            if deadline - self.now_ms < level_span - slot_span {
                // Within reach: its own slot index is behind now's, so it is read as the next window.
                (top, ((deadline >> shift) as usize) & (SLOTS - 1))
            } else {
                // Beyond the range: wait in the furthest slot (it starts no later than the deadline)
                // and be re-placed when that slot comes due.
                (top, (now_slot + SLOTS - 1) & (SLOTS - 1))
            }
        };
        let list = level * SLOTS + slot;
        let head = self.heads[list];
        let entry = &mut self.entries[index as usize];
        entry.prev = NIL;
        entry.next = head;
        entry.slot = list as u16;
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.heads[list] = index;
        self.occupied[level] |= 1 << slot;
    }

    fn unlink(&mut self, index: u32) {
        let Entry { prev, next, slot, .. } = self.entries[index as usize];
        if prev == NIL {
            self.heads[slot as usize] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[slot as usize] == NIL {
            let (level, bit) = (slot as usize / SLOTS, slot as usize % SLOTS);
            self.occupied[level] &= !(1 << bit);
        }
    }

    fn release(&mut self, index: u32) -> K {
        let entry = &mut self.entries[index as usize];
        let key = entry.key.take().expect("invariant: a linked entry has a key");
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(wheel: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        std::iter::from_fn(|| wheel.poll_expired(now).map(|(_, k)| k)).collect()
    }

    #[test]
    fn timers_fire_at_their_deadline_in_order() {
        let mut wheel = TimerWheel::new(16, 1_000);
        for (key, delay) in [(1, 500u64), (2, 64), (3, 4_000), (4, 32_000), (5, 1)] {
            wheel.arm(1_000 + delay, key).unwrap();
        }
        assert_eq!(drain(&mut wheel, 1_000), Vec::<u32>::new());
        assert_eq!(drain(&mut wheel, 1_064), vec![5, 2]);
        assert_eq!(drain(&mut wheel, 1_499), Vec::<u32>::new());
        assert_eq!(drain(&mut wheel, 1_500), vec![1]);
        assert_eq!(drain(&mut wheel, 40_000), vec![3, 4]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn cancel_is_exact_and_stale_handles_are_ignored() {
        let mut wheel = TimerWheel::new(4, 0);
        let a = wheel.arm(100, 1).unwrap();
        let b = wheel.arm(100, 2).unwrap();
        assert_eq!(wheel.cancel(a), Some(1));
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(drain(&mut wheel, 100), vec![2]);
        assert_eq!(wheel.cancel(b), None, "fired timers cannot be cancelled");
        let c = wheel.arm(200, 3).unwrap();
        assert_eq!(wheel.cancel(a), None, "a reused slot does not honour the old handle");
        assert_eq!(wheel.deadline_ms(c), Some(200));
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let mut wheel = TimerWheel::new(2, 0);
        wheel.arm(10, 1).unwrap();
        wheel.arm(10, 2).unwrap();
        assert_eq!(wheel.arm(10, 3), Err(WheelFull));
        drain(&mut wheel, 10);
        assert!(wheel.arm(10, 3).is_ok());
    }

    #[test]
    fn next_deadline_never_overshoots() {
        let mut wheel = TimerWheel::new(8, 5);
        wheel.arm(5 + 70_000, 1).unwrap();
        wheel.arm(5 + 30, 2).unwrap();
        assert_eq!(wheel.next_deadline_ms(), Some(35));
        drain(&mut wheel, 35);
        let next = wheel.next_deadline_ms().unwrap();
        assert!(next <= 70_005, "{next}");
        assert_eq!(drain(&mut wheel, 70_004), Vec::<u32>::new());
        assert_eq!(drain(&mut wheel, 70_005), vec![1]);
    }

    #[test]
    fn deadlines_beyond_the_range_still_fire_exactly() {
        let mut wheel = TimerWheel::new(4, 0);
        let far = (1u64 << 30) * 3 + 12_345;
        wheel.arm(far, 9).unwrap();
        let mut now = 0;
        while now < far - 1 {
            now = (now + 7_777_777).min(far - 1);
            assert_eq!(drain(&mut wheel, now), Vec::<u32>::new(), "fired early at {now}");
        }
        assert_eq!(drain(&mut wheel, far), vec![9]);
    }

    #[test]
    fn matches_a_sorted_model_under_random_arms_and_cancels() {
        // A small deterministic generator: the model is a plain list.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // Start just below a top-level window boundary so crossings happen early.
        let mut now = (1u64 << 30) - 50_000;
        let mut wheel = TimerWheel::new(1_000, now);
        let mut model: Vec<(u64, u32, TimerId)> = Vec::new();
        for key in 0..20_000u32 {
            match rand(4) {
                0 | 1 => {
                    let span = [70_000, 70_000, 70_000, 10_000_000, 5_000_000_000][rand(5) as usize];
                    let deadline = now + rand(span);
                    if let Ok(id) = wheel.arm(deadline, key) {
                        model.push((deadline, key, id));
                    }
                }
                2 if !model.is_empty() => {
                    let (_, key, id) = model.swap_remove(rand(model.len() as u64) as usize);
                    assert_eq!(wheel.cancel(id), Some(key));
                }
                _ => {
                    now += if rand(20) == 0 { rand(2_000_000_000) } else { rand(5_000) };
                    let fired: Vec<(u32, u64)> = std::iter::from_fn(|| wheel.poll_expired(now))
                        .map(|(id, k)| (k, model.iter().find(|m| m.2 == id).map(|m| m.0).expect("fired a known timer")))
                        .collect();
                    let mut expected: Vec<(u64, u32)> =
                        model.iter().filter(|m| m.0 <= now).map(|m| (m.0, m.1)).collect();
                    expected.sort();
                    let fired_deadlines: Vec<u64> = fired.iter().map(|f| f.1).collect();
                    assert!(fired_deadlines.windows(2).all(|w| w[0] <= w[1]), "fired out of order");
                    let mut fired_keys: Vec<u32> = fired.iter().map(|f| f.0).collect();
                    let mut expected_keys: Vec<u32> = expected.iter().map(|e| e.1).collect();
                    fired_keys.sort();
                    expected_keys.sort();
                    assert_eq!(fired_keys, expected_keys, "at {now}");
                    model.retain(|m| m.0 > now);
                }
            }
            assert_eq!(wheel.len(), model.len());
        }
    }
}
