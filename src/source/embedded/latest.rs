//! The embedded log's latest record per key, on disk: the view a snapshot reads where the hub's in-memory view lacks keys.
//!
//! Table `latest/<topic>`: (partition, key) -> `[offset u64 LE]` followed by
//! the record as `records/<topic>` stores it. The writer maintains it in the
//! transaction that appends the records (a tombstone deletes its key), so
//! group commit and fsync cover it; retention never touches it, so it keeps
//! every live key's latest record however old (like a compacted topic). A
//! log from before this table is rebuilt from its retained records at open.
//!
//! Reads are pinned: after each commit the writer opens a read transaction
//! and, while it ingests the batch, holds the write side of `Shared::pinned`;
//! it then stores that transaction there. A registration holding the read
//! side therefore sees a transaction whose records are exactly those the hub
//! has ingested: nothing newer than the snapshot's position is in it.

use std::ops::Bound;
use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::{decode, records_table, storage, LogError};
use crate::hub::{Filter, StoredError, StoredView};
use crate::record::LogRecord;

pub(super) type LatestDef<'a> = TableDefinition<'a, (u32, &'static str), &'static [u8]>;

pub(super) fn latest_name(topic: &str) -> String {
    format!("latest/{topic}")
}

pub(super) fn latest_table(name: &str) -> LatestDef<'_> {
    TableDefinition::new(name)
}

/// The stored value: the offset, then the record's bytes.
pub(super) fn latest_value(offset: u64, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + record.len());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(record);
    out
}

fn split(value: &[u8]) -> (u64, &[u8]) {
    let offset = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    (offset, value.get(8..).unwrap_or(&[]))
}

/// Creates `latest/<topic>` from the retained records if the log has none
/// yet (a log written before the table existed). Returns whether it did.
pub(super) fn ensure(txn: &WriteTransaction, topic: &str) -> Result<bool, LogError> {
    let name = latest_name(topic);
    let exists = txn
        .list_tables()
        .map_err(storage)?
        .any(|t| redb::TableHandle::name(&t) == name);
    if exists {
        return Ok(false);
    }
    let records_name = super::table_name(topic);
    let records = txn
        .open_table(records_table(&records_name))
        .map_err(storage)?;
    let mut latest = txn.open_table(latest_table(&name)).map_err(storage)?;
    for entry in records.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (partition, offset) = k.value();
        let bytes = v.value();
        let record = decode(partition, offset, bytes);
        let Some(key) = record.key.as_deref() else {
            continue;
        };
        if record.delete {
            latest.remove((partition, key)).map_err(storage)?;
        } else {
            latest
                .insert((partition, key), latest_value(offset, bytes).as_slice())
                .map_err(storage)?;
        }
    }
    Ok(true)
}

/// One topic's `latest` table in a pinned read transaction.
pub(super) struct PinnedLatest {
    pub(super) txn: Arc<ReadTransaction>,
    pub(super) table: String,
}

impl StoredView for PinnedLatest {
    fn keys(
        &self,
        partition: u32,
        filter: &Filter,
        admit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<Vec<Arc<str>>, StoredError> {
        let table = match self.txn.open_table(latest_table(&self.table)) {
            Ok(t) => t,
            // A topic created after this transaction: nothing ingested yet.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(Box::new(e)),
        };
        let mut out = Vec::new();
        let mut take = |key: &str, value: &[u8]| {
            let (offset, bytes) = split(value);
            let record = decode(partition, offset, bytes);
            if admit(key, &record.data) {
                out.push(Arc::from(key));
            }
        };
        if let (Some(keys), None) = (&filter.keys, &filter.prefix) {
            for key in keys {
                if let Some(v) = table.get((partition, &**key))? {
                    take(key, v.value());
                }
            }
            return Ok(out);
        }
        // Keys of one partition are contiguous and in order: start at the
        // prefix when there is one, stop past it.
        let start = filter.prefix.as_deref().filter(|_| filter.keys.is_none());
        for entry in table.range((partition, start.unwrap_or(""))..)? {
            let (k, v) = entry?;
            let (p, key) = k.value();
            if p != partition || start.is_some_and(|s| !key.starts_with(s)) {
                break;
            }
            if filter.matches(Some(key)) {
                take(key, v.value());
            }
        }
        Ok(out)
    }

    fn page(
        &self,
        partition: u32,
        filter: &Filter,
        after: Option<&str>,
        take: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoredError> {
        let table = match self.txn.open_table(latest_table(&self.table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(Box::new(e)),
        };
        let take = take.unwrap_or(usize::MAX);
        let record = |v: &[u8]| {
            let (offset, bytes) = split(v);
            decode(partition, offset, bytes)
        };
        let mut out = Vec::new();
        if let (Some(keys), None) = (&filter.keys, &filter.prefix) {
            let mut keys: Vec<&str> = keys
                .iter()
                .map(|k| &**k)
                .filter(|k| after.is_none_or(|a| *k > a))
                .collect();
            keys.sort_unstable();
            for key in keys {
                if out.len() == take {
                    break;
                }
                if let Some(v) = table.get((partition, key))? {
                    out.push(record(v.value()));
                }
            }
            return Ok(out);
        }
        // From the later of `after` (excluded) and the prefix, to past the prefix.
        let prefix = filter.prefix.as_deref().filter(|_| filter.keys.is_none());
        let start = match (after, prefix) {
            (Some(a), p) if p.is_none_or(|p| a >= p) => Bound::Excluded((partition, a)),
            (_, p) => Bound::Included((partition, p.unwrap_or(""))),
        };
        for entry in table.range::<(u32, &str)>((start, Bound::Unbounded))? {
            let (k, v) = entry?;
            let (p, key) = k.value();
            if p != partition || prefix.is_some_and(|s| !key.starts_with(s)) || out.len() == take {
                break;
            }
            if filter.matches(Some(key)) {
                out.push(record(v.value()));
            }
        }
        Ok(out)
    }

    fn get(&self, partition: u32, key: &str) -> Result<Option<LogRecord>, StoredError> {
        let table = match self.txn.open_table(latest_table(&self.table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(Box::new(e)),
        };
        Ok(table.get((partition, key))?.map(|v| {
            let (offset, bytes) = split(v.value());
            decode(partition, offset, bytes)
        }))
    }
}
