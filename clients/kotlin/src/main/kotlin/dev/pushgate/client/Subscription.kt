// One subscription and its part of the protocol: the request it sends, and
// what each server message does to its cursor, its delta values and the
// events the application sees. Every method here runs under the client's
// lock and never blocks: events are queued in an Outbox and handed to the
// subscription's channel after the lock is released.
package dev.pushgate.client

import com.fasterxml.jackson.databind.JsonNode
import com.fasterxml.jackson.databind.node.ObjectNode
import com.flipkart.zjsonpatch.JsonPatch
import kotlinx.coroutines.Job
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.filterIsInstance
import kotlinx.coroutines.flow.receiveAsFlow

/** Events produced under the client's lock, delivered after it is released. */
internal class Outbox {
    val events = ArrayList<Pair<Subscription, PushEvent>>()
    val clientEvents = ArrayList<ClientEvent>()
}

/** A subscription to one topic. Created by [Pushgate.subscribe]. */
class Subscription internal constructor(
    private val client: Pushgate,
    val topic: String,
    options: SubscribeOptions,
    buffer: Int,
) {
    @Volatile var keys: List<String>? = options.keys?.toList(); internal set
    val prefix: String? = options.prefix
    val snapshot: Boolean = options.snapshot
    val filter: JsonNode? = options.filter?.let { Json.mapper.valueToTree<JsonNode>(it) }
    val fields: List<String>? = options.fields?.toList()
    val delta: String? = options.delta
    val maxRate: Double? = options.maxRate
    val resume: String? = options.resume

    /** Where a resume starts: persist it (it is also on every record). Mid-snapshot, the last snapshot record's cursor (null before the first). */
    @Volatile var cursor: String? = options.cursor; internal set

    /** Whether catch-up is over for the current request (its `live` arrived). */
    @Volatile var live: Boolean = false; internal set

    /** Records delivered (snapshot included). */
    @Volatile var received: Long = 0; internal set

    /** Set when the current request's snapshot lacks keys of the view. */
    @Volatile var snapshotPartial: PartialSnapshot? = null; internal set

    @Volatile var closed: Boolean = false; internal set

    /** With `delta`: the last whole value of each key, the base of the next patch. */
    internal val valuesMap = LinkedHashMap<String, JsonNode>()

    /** With `delta`: a copy of the last whole value of each key. */
    val values: Map<String, JsonNode> get() = client.locked { LinkedHashMap(valuesMap) }

    internal val channel = Channel<PushEvent>(buffer)

    /**
     * Everything that happens to this subscription, in order: records,
     * `Subscribed`, `Live`, `Reset`, `Resumed`, `PartialSnapshot`, errors.
     * Collect it once (or [records], not both). While no one collects, up to
     * the buffer's size of events wait; beyond it the client stops reading
     * from the socket, and a gateway that cannot send drops the connection as
     * a slow consumer, which the client then resumes from the cursor: nothing
     * is lost, but collect promptly. Completes when the subscription or the
     * client is closed.
     */
    val events: Flow<PushEvent> = channel.receiveAsFlow()

    /** The records alone (see [events]). */
    val records: Flow<PushRecord> = events.filterIsInstance()

    // Per-request state.
    internal var id: String? = null
    internal var active = false
    private var resuming = false
    private var snapshotLeft = 0
    private var pendingReset = false
    private var catchingUp = false
    private var missed = 0L

    /** `unavailable` answers in a row (a node still warming the topic). */
    internal var retries = 0
    internal var retryJob: Job? = null

    /** Replaces the key set: resubscribes, with a snapshot (or from the cursor when `snapshot` is false). */
    fun setKeys(keys: List<String>?) = client.setKeys(this, keys)

    /** Stops the subscription; [events] completes. */
    fun unsubscribe() = client.unsubscribe(this)

    /** The subscribe request for the next attempt, with request id [newId]. */
    internal fun request(newId: String): ObjectNode {
        id = newId
        active = false
        live = false
        resuming = cursor != null
        snapshotLeft = 0
        pendingReset = false
        catchingUp = resuming
        missed = 0
        val req = Json.mapper.createObjectNode()
        req.put("type", "subscribe").put("id", newId).put("topic", topic).put("snapshot", snapshot)
        keys?.let { k -> req.putArray("keys").also { a -> k.forEach { a.add(it) } } }
        prefix?.let { req.put("prefix", it) }
        cursor?.let { req.put("cursor", it) }
        filter?.let { req.set<JsonNode>("filter", it) }
        fields?.let { f -> req.putArray("fields").also { a -> f.forEach { a.add(it) } } }
        delta?.let { req.put("delta", it) }
        maxRate?.let { r -> if (r == Math.floor(r) && r < 1e15) req.put("max_rate", r.toLong()) else req.put("max_rate", r) }
        resume?.let { req.put("resume", it) }
        return req
    }

    internal fun onSubscribed(msg: ObjectNode, box: Outbox) {
        active = true
        retries = 0
        snapshotLeft = msg.path("snapshot").asInt(0)
        snapshotPartial = if (msg.path("snapshot_partial").asBoolean(false)) {
            PartialSnapshot(topic, msg.path("snapshot_partial_reason").asText(""), null)
        } else null
        val recovered = msg.path("recovered").asBoolean(true)
        // A snapshot to come: nothing is resumable before its first record, except
        // when this request resumed one mid-way (then `cursor` is that snapshot position).
        cursor = when {
            snapshotLeft == 0 -> msg.text("cursor")
            resuming && recovered -> msg.text("cursor") ?: cursor
            else -> null
        }
        if (resuming && !recovered) {
            pendingReset = true
            catchingUp = false
        }
        box.events += this to Subscribed(msg.text("cursor"), recovered, snapshotLeft, msg)
    }

    internal fun onGap(msg: ObjectNode, box: Outbox) {
        pendingReset = false
        box.events += this to Reset(topic, msg.text("reason"), msg.text("earliest"))
    }

    internal fun onRecord(msg: ObjectNode, box: Outbox) {
        if (!active) return // left over from an earlier request
        val data = whole(msg, box) ?: return
        if (pendingReset) {
            pendingReset = false
            box.events += this to Reset(topic, null, null)
        }
        val snap = msg.path("snapshot").asBoolean(false)
        var replayed = false
        val recCursor = msg.text("cursor") ?: ""
        if (snap) {
            // Each snapshot record's cursor resumes the snapshot right after its key.
            snapshotLeft = maxOf(0, snapshotLeft - 1)
            cursor = recCursor
        } else {
            // Changes replayed before the rest of a resumed snapshot: its position stays the resume point.
            if (snapshotLeft == 0) cursor = recCursor
            if (catchingUp) {
                replayed = true
                missed++
            }
        }
        received++
        val offsetNode = msg.path("offset")
        val offsetText = if (offsetNode.isTextual) offsetNode.asText() else offsetNode.toString()
        box.events += this to PushRecord(
            topic = topic,
            key = msg.get("key")?.takeIf { it.isTextual }?.asText(),
            partition = msg.path("partition").asInt(0),
            offset = offsetText.toLongOrNull() ?: -1,
            offsetText = offsetText,
            cursor = recCursor,
            timestamp = msg.path("timestamp").asLong(0),
            data = data.value,
            op = msg.text("op"),
            snapshot = snap,
            replayed = replayed,
            patched = data.patched,
            resumeCursor = cursor,
            raw = msg,
        )
    }

    private class Whole(val value: JsonNode?, val patched: Boolean)

    /** With `delta`: turns a patch into whole data; null when it cannot be applied (then resubscribes). */
    private fun whole(msg: ObjectNode, box: Outbox): Whole? {
        val data = msg.get("data")
        val key = msg.get("key")?.takeIf { it.isTextual }?.asText()
        if (delta == null || key == null) return Whole(data, false)
        val op = msg.text("op")
        if (op == "leave" || op == "delete") {
            valuesMap.remove(key)
            return Whole(data, false)
        }
        val patch = msg.get("patch") ?: run {
            if (data != null) valuesMap[key] = data
            return Whole(data, false)
        }
        val base = valuesMap[key]
        val result = try {
            if (base == null) throw IllegalStateException("a patch for $key without its base value")
            JsonPatch.apply(patch, base)
        } catch (e: RuntimeException) {
            // Never expected from a gateway: resubscribe from the cursor, whose
            // replay brings each key whole first.
            box.events += this to PushError("delta", e.message ?: e.toString(), topic)
            client.resubscribeLocked(this)
            return null
        }
        msg.remove("patch")
        msg.set<JsonNode>("data", result)
        valuesMap[key] = result
        return Whole(result, true)
    }

    /** The gateway's `live` marker: `replayed` records were replayed before it. */
    internal fun onLive(msg: ObjectNode, box: Outbox) {
        // The snapshot is over, whatever `subscribed` counted (one that moved on
        // to a newer view sends the keys that view has). With a filter, `live`
        // carries a cursor past records the filter left out.
        snapshotLeft = 0
        val c = msg.text("cursor")
        if (c != null) cursor = c
        live = true
        snapshotPartial?.let { p ->
            val skipped = msg.get("snapshot_skipped")?.takeIf { it.isNumber }?.asLong()
            val told = p.copy(skipped = skipped)
            snapshotPartial = told
            box.events += this to told
        }
        box.events += this to Live(msg.path("replayed").asLong(0), msg)
        if (!catchingUp) return
        catchingUp = false
        val n = msg.get("replayed")?.takeIf { it.isNumber }?.asLong() ?: missed
        box.events += this to Resumed(topic, n)
    }

    internal fun onError(code: String, message: String, box: Outbox, status: Int? = null) {
        box.events += this to PushError(code, message, topic, status)
    }
}

/** A member as text, null when absent or JSON null. */
internal fun JsonNode.text(name: String): String? = get(name)?.takeIf { !it.isNull }?.asText()
