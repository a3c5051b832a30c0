//! Topic identity: the cluster id and each topic's id (KIP-516), from which cursor epochs are made.
//!
//! librdkafka's metadata structs do not expose topic ids, and the rdkafka crate
//! does not wrap the admin call that does (`DescribeTopics`), so this module
//! calls it through the bindings rdkafka re-exports. A topic that is deleted
//! and created again gets a new id, hence a new epoch: cursors of the old
//! incarnation are recognised as foreign, never mixed up with the new one.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

/// What the broker says about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Described {
    Found {
        /// 16-byte topic id; `None` when the broker reports none (all zero).
        id: Option<[u8; 16]>,
        partitions: u32,
    },
    Missing,
    /// It exists, but the broker's ACLs do not let this node's principal read
    /// it (or even describe it); `reason` says which, for /readyz and refusals.
    Denied {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("DescribeTopics failed: {0}")]
    Describe(String),
    #[error("Metadata failed: {0}")]
    Metadata(#[source] rdkafka::error::KafkaError),
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
}

/// Every topic in the cluster, from a plain all-topics Metadata request.
pub fn list_topics<C: ClientContext>(
    client: &Client<C>,
    timeout: Duration,
) -> Result<Vec<String>, MetaError> {
    let listed = client
        .fetch_metadata(None, timeout)
        .map_err(MetaError::Metadata)?;
    Ok(listed
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect())
}

/// Describes `names` (ids and partition counts); those not in `listed` (the
/// cluster's topics, from [`list_topics`]) are reported `Missing` unasked.
///
/// Only topics that exist are described: tansu 0.6 answers librdkafka's
/// DescribeTopics (Metadata v12) for an unknown topic with an entry that makes
/// librdkafka 2.12 crash in its metadata cache (a NULL topic name reaching
/// `strcmp`). So the cluster's topic list is fetched first (a plain all-topics
/// Metadata request), and a topic absent from it is reported `Missing`.
pub fn describe_topics<C: ClientContext>(
    client: &Client<C>,
    names: &[String],
    listed: &[String],
    timeout: Duration,
) -> Result<Vec<(String, Described)>, MetaError> {
    let existing: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
    let (present, missing): (Vec<String>, Vec<String>) = names
        .iter()
        .cloned()
        .partition(|n| existing.contains(n.as_str()));
    let mut out: Vec<(String, Described)> = missing
        .into_iter()
        .map(|n| (n, Described::Missing))
        .collect();
    if !present.is_empty() {
        out.extend(describe_existing(client, &present, timeout)?);
    }
    Ok(out)
}

fn describe_existing<C: ClientContext>(
    client: &Client<C>,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<(String, Described)>, MetaError> {
    let c_names: Vec<CString> = names
        .iter()
        .map(|n| CString::new(n.as_str()).expect("topic names have no NUL"))
        .collect();
    let mut ptrs: Vec<*const c_char> = c_names.iter().map(|c| c.as_ptr()).collect();
    let rk = client.native_ptr();
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: every pointer passed to librdkafka below is either created here
    // and destroyed before returning, or borrowed from the result event, which
    // is destroyed only after the last read from it.
    unsafe {
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len());
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        // What the principal may do with each topic (KIP-430): a topic it may
        // describe but not read is reported, not fetched in vain forever.
        let error = rd::rd_kafka_AdminOptions_set_include_authorized_operations(options, 1);
        if !error.is_null() {
            rd::rd_kafka_error_destroy(error);
        }
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(500));
        let result = if event.is_null() {
            Err(MetaError::Timeout(timeout))
        } else {
            read_result(event)
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        result
    }
}

unsafe fn read_result(
    event: *mut rd::rd_kafka_event_t,
) -> Result<Vec<(String, Described)>, MetaError> {
    let err = rd::rd_kafka_event_error(event);
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let text = rd::rd_kafka_event_error_string(event);
        return Err(MetaError::Describe(cstr(text)));
    }
    let result = rd::rd_kafka_event_DescribeTopics_result(event);
    if result.is_null() {
        return Err(MetaError::Describe("not a DescribeTopics result".into()));
    }
    let mut count = 0usize;
    let topics = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let desc = *topics.add(i);
        let name = cstr(rd::rd_kafka_TopicDescription_name(desc));
        let error = rd::rd_kafka_TopicDescription_error(desc);
        if !error.is_null() {
            let code = rd::rd_kafka_error_code(error);
            if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
                    || code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_ID
                {
                    out.push((name, Described::Missing));
                    continue;
                }
                if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED {
                    let reason = "not authorized: the broker's ACLs do not allow DESCRIBE (nor READ) on this topic for pushgate's principal".into();
                    out.push((name, Described::Denied { reason }));
                    continue;
                }
                return Err(MetaError::Describe(format!(
                    "{name}: {}",
                    cstr(rd::rd_kafka_error_string(error))
                )));
            }
        }
        let uuid = rd::rd_kafka_TopicDescription_topic_id(desc);
        let id = if uuid.is_null() {
            None
        } else {
            let hi = rd::rd_kafka_Uuid_most_significant_bits(uuid) as u64;
            let lo = rd::rd_kafka_Uuid_least_significant_bits(uuid) as u64;
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&hi.to_be_bytes());
            bytes[8..].copy_from_slice(&lo.to_be_bytes());
            (bytes != [0; 16]).then_some(bytes)
        };
        if !may_read(desc) {
            let reason = "not authorized: the broker's ACLs do not allow READ on this topic for pushgate's principal".into();
            out.push((name, Described::Denied { reason }));
            continue;
        }
        let mut partitions = 0usize;
        rd::rd_kafka_TopicDescription_partitions(desc, &mut partitions);
        out.push((
            name,
            Described::Found {
                id,
                partitions: partitions as u32,
            },
        ));
    }
    Ok(out)
}

/// Whether the authorized operations of `desc` include READ (or ALL). A broker
/// that reports none (no authorizer information) is taken to allow it.
unsafe fn may_read(desc: *const rd::rd_kafka_TopicDescription_t) -> bool {
    let mut count = 0usize;
    let ops = rd::rd_kafka_TopicDescription_authorized_operations(desc, &mut count);
    if ops.is_null() || count == 0 {
        return true;
    }
    (0..count).any(|i| {
        matches!(
            *ops.add(i),
            rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_READ
                | rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ALL
        )
    })
}

unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// The epoch of one topic incarnation: FNV-1a over the cluster id, the topic
/// id and the name. Without a topic id (a broker that reports none) it falls
/// back to the cluster id and name, and a recreated topic cannot be told apart.
pub fn topic_epoch(cluster_id: &str, topic_id: Option<&[u8; 16]>, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let id: &[u8] = topic_id.map(|b| &b[..]).unwrap_or(&[]);
    for b in cluster_id
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(id)
        .chain([0u8].iter())
        .chain(name.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_changes_with_topic_id() {
        let a = topic_epoch("c", Some(&[1; 16]), "t");
        let b = topic_epoch("c", Some(&[2; 16]), "t");
        assert_ne!(a, b);
        assert_ne!(a, topic_epoch("d", Some(&[1; 16]), "t"));
        assert_eq!(a, topic_epoch("c", Some(&[1; 16]), "t"));
    }
}
