//! A topic's cursors: made from this node's frontier or a record's position, and resolved back to offsets per partition.

use super::*;

impl Topic {
    /// The cursor right after (`partition`, `offset`): that partition at
    /// `offset + 1`, the others at this node's frontier.
    pub fn cursor_after(&self, partition: u32, offset: u64) -> String {
        let mut offsets = self.frontier();
        if let Some(slot) = offsets.get_mut(partition as usize) {
            *slot = offset + 1;
        }
        self.encode_cursor(&offsets)
    }

    /// True when positions are the source's own opaque ones (version 2 cursors).
    pub fn has_shard_positions(&self) -> bool {
        self.position_limit.is_some()
    }

    /// The cursor a client gets for `offsets` (next offset, or ordinal, per partition).
    pub fn encode_cursor(&self, offsets: &[u64]) -> String {
        if self.position_limit.is_none() {
            return Cursor::new(self.epoch, offsets.to_vec()).encode();
        }
        let parts = self.partitions.read().expect("partitions lock");
        let mut out = String::with_capacity(16 + parts.len() * 36);
        encode_shards_into(
            self.epoch,
            &shard_positions(&parts, offsets, None),
            &mut out,
        );
        out
    }

    /// The cursor a publish answer gives for a record that landed at `at`.
    pub fn cursor_after_appended(&self, at: &crate::record::Appended) -> String {
        match &at.position {
            Some(position) => self.cursor_after_position(at.partition, position),
            None => self.cursor_after(at.partition, at.offset),
        }
    }

    /// Shard topics: the cursor right after a record at `position` (decimal)
    /// of `partition` that this node may not have read yet (a publish answer),
    /// the other partitions at this node's frontier.
    pub fn cursor_after_position(&self, partition: u32, position: &str) -> String {
        let frontier = self.frontier();
        let parts = self.partitions.read().expect("partitions lock");
        let mut shards = shard_positions(&parts, &frontier, None);
        if let (Some(slot), Some(pos)) = (
            shards.get_mut(partition as usize),
            decimal_to_position(position),
        ) {
            *slot = ShardPos::After(pos);
        }
        let mut out = String::with_capacity(16 + parts.len() * 36);
        encode_shards_into(self.epoch, &shards, &mut out);
        out
    }

    /// Turns a client's cursor into this node's ordinals (shard topics), or
    /// passes it on (integer topics). A version 2 cursor on an integer topic,
    /// or a version 1 cursor on a shard topic, is [`ResolveError::Foreign`];
    /// one of another epoch is returned as it is (registration answers it
    /// with a gap).
    pub fn resolve_cursor(&self, cursor: &Cursor) -> Result<Cursor, ResolveError> {
        match (&cursor.shards, self.position_limit.is_some()) {
            (None, false) => return Ok(cursor.clone()),
            (Some(_), false) | (None, true) => return Err(ResolveError::Foreign),
            (Some(_), true) if cursor.epoch != self.epoch => {
                return Ok(Cursor::new(cursor.epoch, Vec::new()))
            }
            (Some(_), true) => {}
        }
        let shards = cursor.shards.as_deref().unwrap_or_default();
        let parts = self.partitions.read().expect("partitions lock");
        if shards.len() > parts.len() {
            return Err(ResolveError::Ahead);
        }
        let mut offsets = Vec::with_capacity(parts.len());
        for (p, part) in parts.iter().enumerate() {
            let positions = part.positions.lock().expect("positions lock");
            offsets.push(match shards.get(p).unwrap_or(&ShardPos::Start) {
                ShardPos::Start => 0,
                ShardPos::Closed if positions.closed => positions.end(),
                ShardPos::Closed => return Err(ResolveError::Ahead),
                ShardPos::After(pos) => match positions.after(pos) {
                    Located::At(ordinal) => ordinal,
                    Located::Ahead => return Err(ResolveError::Ahead),
                    Located::Older => return Err(ResolveError::Retention),
                },
            });
        }
        Ok(Cursor::new(self.epoch, offsets))
    }

    /// Shard topics: `partition` is closed and was read to its end (a parent
    /// shard after a split or merge); cursors say so from now on.
    pub fn close_partition(&self, partition: u32) {
        let parts = self.partitions.read().expect("partitions lock");
        if let Some(part) = parts.get(partition as usize) {
            part.positions.lock().expect("positions lock").closed = true;
        }
    }

    /// Shard topics: the position (big-endian bytes) of the record at `ordinal`, if still held.
    pub fn position_at(&self, partition: u32, ordinal: u64) -> Option<Box<[u8]>> {
        let parts = self.partitions.read().expect("partitions lock");
        let part = parts.get(partition as usize)?;
        let positions = part.positions.lock().expect("positions lock");
        positions.get(ordinal).map(Box::from)
    }

    /// Shard topics: the first ordinal at or after `position` (None: the
    /// partition is unknown), and the oldest ordinal held.
    pub fn ordinal_at_or_after(&self, partition: u32, position: &[u8]) -> Option<(u64, u64)> {
        let parts = self.partitions.read().expect("partitions lock");
        let part = parts.get(partition as usize)?;
        let positions = part.positions.lock().expect("positions lock");
        Some((positions.at_or_after(position), positions.first()))
    }
}

/// Each partition's place for a version 2 cursor at `offsets` (ordinals):
/// `this` is a record being ingested, whose position is not in its table yet.
pub(super) fn shard_positions(
    parts: &[Arc<Partition>],
    offsets: &[u64],
    this: Option<(u32, &[u8])>,
) -> Vec<ShardPos> {
    parts
        .iter()
        .enumerate()
        .map(|(p, part)| {
            if let Some((id, pos)) = this {
                if id == part.id {
                    return ShardPos::After(pos.into());
                }
            }
            let at = offsets.get(p).copied().unwrap_or(0);
            let positions = part.positions.lock().expect("positions lock");
            if positions.closed && at >= positions.end() {
                return ShardPos::Closed;
            }
            match at.checked_sub(1).and_then(|o| positions.get(o)) {
                Some(pos) => ShardPos::After(pos.into()),
                // Nothing seen (ordinal 0), or older than the table holds.
                None => ShardPos::Start,
            }
        })
        .collect()
}
