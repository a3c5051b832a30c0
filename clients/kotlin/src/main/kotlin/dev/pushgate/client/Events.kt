// What the client hands the application: records, subscription events,
// connection events, and the options of a client and of a subscription.
package dev.pushgate.client

import com.fasterxml.jackson.databind.JsonNode
import com.fasterxml.jackson.databind.node.ObjectNode

/** Something that happened to one subscription, in order (see [Subscription.events]). */
sealed interface PushEvent

/**
 * A record, with `data` whole (with `delta`, the client applied the patch).
 *
 * Persist [resumeCursor] (SharedPreferences, a database) after handling the
 * record and pass it back as [SubscribeOptions.cursor] on the next start:
 * the subscription then resumes right after it, missing nothing and
 * repeating nothing. Mid-snapshot it is the snapshot record's cursor: the
 * snapshot resumes after this key (null only before the first snapshot record).
 */
class PushRecord(
    val topic: String,
    /** Null for records published without a key. */
    val key: String?,
    val partition: Int,
    /** The offset; -1 when it does not fit a Long (Kinesis: see [offsetText]). */
    val offset: Long,
    /** The offset exactly as the gateway sent it (a decimal string on Kinesis). */
    val offsetText: String,
    /** The position right after this record, as the gateway sent it. */
    val cursor: String,
    /** Milliseconds since the epoch, when it was appended. */
    val timestamp: Long,
    /** The value: null (Kotlin) when absent (`op` `leave`), JSON `null` as a NullNode. */
    val data: JsonNode?,
    /** `enter` / `leave` with a filter; `delete`, or a change event's `create`, `update`, `read`… */
    val op: String?,
    /** One of the current-state records sent first. */
    val snapshot: Boolean,
    /** Delivered while catching up after a resume (not live). */
    val replayed: Boolean,
    /** `data` was rebuilt from a JSON Patch. */
    val patched: Boolean,
    /** What to persist: the subscription's resume cursor after this record. */
    val resumeCursor: String?,
    /** The message as received (optional members such as `source`, `headers`). */
    val raw: ObjectNode,
) : PushEvent {
    override fun toString(): String =
        "PushRecord(topic=$topic, key=$key, partition=$partition, offset=$offsetText, op=$op, snapshot=$snapshot, replayed=$replayed, data=$data)"
}

/** The gateway's `subscribed` answer (a new request of this subscription started). */
class Subscribed(val cursor: String?, val recovered: Boolean, val snapshot: Int, val raw: ObjectNode) : PushEvent

/** Catch-up (snapshot or replay) is over; what follows is live. */
class Live(val replayed: Long, val raw: ObjectNode) : PushEvent

/**
 * Records were missed: the gateway could not resume from the cursor (too
 * old: `retention`; another log: `epoch`). A fresh snapshot follows when the
 * subscription asked for one; otherwise reload your state.
 */
data class Reset(val topic: String, val reason: String?, val earliest: String?) : PushEvent

/** The catch-up of a resume is done: [missed] records were delivered as replayed. */
data class Resumed(val topic: String, val missed: Long) : PushEvent

/**
 * The snapshot lacks keys of the view (`max_snapshot_records`, or on Kafka
 * and Kinesis `view_max_keys` or `view_max_bytes`); [skipped] is how many keys it left out (0 when only
 * eviction is known, null when the gateway did not say). Load the rest by
 * page (`GET /topics/{topic}/view`) or subscribe to fewer keys.
 */
data class PartialSnapshot(val topic: String, val reason: String, val skipped: Long?) : PushEvent

/**
 * A request failed: an error `code` of the protocol (`unknown_topic`,
 * `forbidden`, `unavailable`, …; `unavailable` is retried by the client on
 * its own), or `delta` (a patch could not be applied: the client resubscribes
 * from its cursor), `token` (the token callback threw).
 */
data class PushError(val code: String, val message: String, val topic: String? = null, val status: Int? = null) : PushEvent

/** The state of the client's connection(s). */
enum class ConnectionState { CONNECTING, LIVE, RECONNECTING, CLOSED }

/** Connection-level happenings (see [Pushgate.clientEvents]). */
sealed interface ClientEvent {
    /** The connection (WebSocket) or a stream (SSE, [topic] set) was lost; the next attempt is in [delayMs]. */
    data class Disconnect(
        val topic: String?,
        /** The WebSocket close code, when there was one. */
        val code: Int?,
        val reason: String,
        /** The HTTP status of a refused handshake or stream request. */
        val status: Int?,
        /** Seconds, from the refusal's `Retry-After`. */
        val retryAfter: Double?,
        val delayMs: Long,
    ) : ClientEvent

    /** The gateway took a fresh token in-band (`refreshed`). */
    data class Refreshed(val raw: ObjectNode) : ClientEvent

    /** An error not tied to one subscription. */
    data class Error(val error: PushError) : ClientEvent
}

/** How the client reaches the gateway. */
enum class Transport {
    /** One WebSocket (`GET /ws`) for every subscription. */
    WEBSOCKET,

    /** One Server-Sent Events stream (`GET /sse`) per subscription. */
    SSE,
}

/**
 * A subscription's options: every option of the protocol's `subscribe`.
 *
 * [filter] is any value Jackson can turn into JSON (a Map, a JsonNode).
 */
data class SubscribeOptions(
    /** Keys to receive; null for every key. */
    val keys: List<String>? = null,
    /** Only keys starting with this (combines with [keys]). */
    val prefix: String? = null,
    /** Start with the current value of each key (the default), unless resuming from [cursor]. */
    val snapshot: Boolean = true,
    /** Resume right after this position: the last [PushRecord.resumeCursor] you persisted. */
    val cursor: String? = null,
    /** Only records whose `data` matches (the gateway's filter language); `enter` / `leave` records mark keys entering or leaving it. */
    val filter: Any? = null,
    /** Only these paths of `data` (for example `price`, `meta.ts`). */
    val fields: List<String>? = null,
    /** `json-patch`: later records of a key come as patches, which the client applies ([PushRecord.data] is always whole). */
    val delta: String? = null,
    /** At most this many records per second per key (conflation: the latest always arrives). */
    val maxRate: Double? = null,
    /** `latest`: a resume brings only each key's latest missed record (`all`, the default, brings every one). */
    val resume: String? = null,
) {
    companion object {
        const val DELTA_JSON_PATCH = "json-patch"
        const val RESUME_LATEST = "latest"
        const val RESUME_ALL = "all"
    }
}
