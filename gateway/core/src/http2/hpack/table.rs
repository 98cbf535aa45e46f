//! The dynamic table of the HPACK decoder (RFC 7541 §2.3.2, §4).

use std::collections::VecDeque;

use super::ENTRY_OVERHEAD_BYTES;

/// Where an entry to be added takes its name from. A name from the dynamic table is given by
/// its slot, not borrowed, since the insertion may evict that very entry (§4.4).
#[derive(Clone, Copy)]
pub(super) enum NameSource<'a> {
    Bytes(&'a [u8]),
    Dynamic(Slot),
}

/// The dynamic table (§2.3.2, §4).
///
/// Entries are written one after the other, name then value, at the end of `arena`, and
/// described by `slots`, newest first, so that looking one up is two indexings. Evicting an
/// entry only drops its slot: its bytes stay at the front of the arena, dead, until an
/// insertion would grow the arena past twice the table's limit, when they are moved out in
/// one `drain`. The arena is thus bounded by twice the limit (live bytes, at most the limit,
/// plus one entry, at most the limit), stops allocating once it has reached its working size,
/// and moves each byte a bounded number of times.
#[derive(Clone)]
pub(super) struct Table {
    pub(super) arena: Vec<u8>,
    pub(super) slots: VecDeque<Slot>,
    /// The position of `arena[0]`. Slots hold positions that do not change when the dead
    /// front of the arena is drained: a slot's bytes are at `start - base`, in wrapping
    /// arithmetic so that a long-lived connection cannot overflow the count.
    base: usize,
    /// The table's size as §4.1 counts it: name + value + 32 for each entry.
    pub(super) size_bytes: usize,
    /// The size the peer last set (§4.2), at most our limit.
    pub(super) size_bytes_max: usize,
    /// The arena length beyond which the dead front is drained.
    pub(super) arena_bytes_max: usize,
}

/// Where one entry lies in the arena.
#[derive(Clone, Copy)]
pub(super) struct Slot {
    start: usize,
    name_len: usize,
    value_len: usize,
}

impl Slot {
    pub(super) fn size_bytes(self) -> usize {
        self.name_len + self.value_len + ENTRY_OVERHEAD_BYTES
    }
}

impl Table {
    pub(super) fn new(size_bytes_max: usize) -> Self {
        Self {
            arena: Vec::new(),
            slots: VecDeque::new(),
            base: 0,
            size_bytes: 0,
            size_bytes_max,
            arena_bytes_max: size_bytes_max.saturating_mul(2),
        }
    }

    /// The entry at `position` (0 is the newest), if there is one.
    #[inline]
    pub(super) fn get(&self, position: usize) -> Option<(&[u8], &[u8])> {
        let slot = *self.slots.get(position)?;
        let start = slot.start.wrapping_sub(self.base);
        let bytes = self
            .arena
            .get(start..start + slot.name_len + slot.value_len)?;
        Some(bytes.split_at(slot.name_len))
    }

    /// The name of a live entry's slot.
    pub(super) fn name(&self, slot: Slot) -> &[u8] {
        let start = slot.start.wrapping_sub(self.base);
        self.arena
            .get(start..start + slot.name_len)
            .unwrap_or_default()
    }

    /// Adds an entry (§4.4): evicts from the oldest until it fits, or empties the table if it
    /// cannot fit at all.
    pub(super) fn insert(&mut self, name: NameSource<'_>, value: &[u8]) {
        let name_len = match name {
            NameSource::Bytes(bytes) => bytes.len(),
            NameSource::Dynamic(slot) => slot.name_len,
        };
        let data_len = name_len + value.len();
        let entry_bytes = data_len + ENTRY_OVERHEAD_BYTES;
        if entry_bytes > self.size_bytes_max {
            self.clear();
            return;
        }
        if self.arena.len() + data_len > self.arena_bytes_max {
            self.drain_dead();
        }
        // The new entry's bytes are written before any eviction, so that a name taken from an
        // entry about to be evicted is copied while it is still live.
        let start = self.base.wrapping_add(self.arena.len());
        match name {
            NameSource::Bytes(bytes) => self.arena.extend_from_slice(bytes),
            NameSource::Dynamic(slot) => {
                let from = slot.start.wrapping_sub(self.base);
                let end = from + slot.name_len;
                // A live slot always lies in the arena (draining keeps live bytes). Should
                // that ever break, the table is left as it was rather than the gateway
                // panicking; the peer's next reference to the entry then fails to decode.
                debug_assert!(end <= self.arena.len(), "live slot outside the arena");
                if end > self.arena.len() {
                    return;
                }
                self.arena.extend_from_within(from..end);
            }
        }
        self.arena.extend_from_slice(value);
        self.evict_to(self.size_bytes_max - entry_bytes);
        self.slots.push_front(Slot {
            start,
            name_len,
            value_len: value.len(),
        });
        self.size_bytes += entry_bytes;
    }

    /// Applies a dynamic table size update (§4.3, §6.3), already checked against our limit.
    pub(super) fn resize(&mut self, size_bytes_max: usize) {
        self.size_bytes_max = size_bytes_max;
        self.evict_to(size_bytes_max);
        if self.slots.is_empty() {
            self.clear();
        }
    }

    /// Evicts the oldest entries until the table's size is at most `size_bytes`.
    fn evict_to(&mut self, size_bytes: usize) {
        // Each pass removes an entry, so the loop is bounded by their number.
        while self.size_bytes > size_bytes {
            let Some(oldest) = self.slots.pop_back() else {
                break;
            };
            self.size_bytes -= oldest.size_bytes();
        }
        if self.slots.is_empty() {
            self.size_bytes = 0;
        }
    }

    /// Drops the bytes of evicted entries from the front of the arena.
    fn drain_dead(&mut self) {
        let dead_len = match self.slots.back() {
            Some(oldest) => oldest.start.wrapping_sub(self.base),
            None => self.arena.len(),
        };
        let dead_len = dead_len.min(self.arena.len());
        self.arena.drain(..dead_len);
        self.base = self.base.wrapping_add(dead_len);
    }

    /// Empties the table, keeping its memory for reuse.
    pub(super) fn clear(&mut self) {
        self.arena.clear();
        self.slots.clear();
        self.size_bytes = 0;
    }
}
