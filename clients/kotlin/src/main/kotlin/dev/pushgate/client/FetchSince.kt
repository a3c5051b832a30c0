// fetchSince: what was appended after a cursor, with one HTTP request and no
// socket (`GET /topics/{topic}/records`), for an app woken by a push
// notification. One page per call, as in pushgate.js: the caller loops while
// `more` is true.
package dev.pushgate.client

import com.fasterxml.jackson.databind.JsonNode
import com.fasterxml.jackson.databind.node.ObjectNode
import kotlinx.coroutines.delay
import okhttp3.HttpUrl
import okhttp3.OkHttpClient
import okhttp3.Request
import java.io.IOException

/** What [Pushgate.fetchSince] reads: the options of a subscription that make sense for one page. */
data class FetchSinceOptions(
    /** Keys to read; null for every key. */
    val keys: List<String>? = null,
    /** Only keys starting with this (combines with [keys]). */
    val prefix: String? = null,
    /** Only records whose `data` matches (any value Jackson can turn into JSON); keys leaving it come as `op` `leave`. */
    val filter: Any? = null,
    /** Only these paths of `data`. */
    val fields: List<String>? = null,
    /** At most this many records (1 to 1000; the gateway's default is 100). */
    val limit: Int? = null,
)

/** Records were missed: the cursor was older than anything retained (`retention`) or from another log (`epoch`). */
data class FetchGap(val reason: String, val earliest: String?)

/** One page of [Pushgate.fetchSince]. */
class FetchSinceResult(
    /** In the log's order per partition; [PushRecord.replayed] is true and [PushRecord.resumeCursor] is the record's own cursor. */
    val records: List<PushRecord>,
    /** Where the next call starts: persist it (it covers what a filter left out), or subscribe with it. */
    val cursor: String,
    /** More records are there now: call again with [cursor]. */
    val more: Boolean,
    /** False when the cursor could not be honoured (see [gap]). */
    val recovered: Boolean,
    /** Set when records were missed; [cursor] is then the head. Reload your state, or read what is left from [FetchGap.earliest]. */
    val gap: FetchGap?,
    /** The answer as received. */
    val raw: ObjectNode,
)

/**
 * The gateway refused a [Pushgate.fetchSince]: [status] (401: no or a bad
 * token; 403: the token does not grant the topic; 404 `unknown_topic`; 400
 * `bad_cursor`, `bad_filter`…; 429; 503 after three tries), the error [code]
 * of its JSON body, and [retryAfter] (seconds) when it said.
 */
class FetchSinceException(val status: Int, val code: String, message: String, val retryAfter: Double? = null) :
    IOException(message) {
    /** 401: the token is missing, expired or invalid; get a fresh one. */
    val unauthorized: Boolean get() = status == 401

    /** 403: the token is valid but does not allow reading this topic (or these keys). */
    val forbidden: Boolean get() = status == 403
}

/** Builds the request URL of one page. */
internal fun recordsUrl(base: HttpUrl, topic: String, cursor: String?, opts: FetchSinceOptions): HttpUrl {
    val b = base.newBuilder().addPathSegment("topics").addPathSegment(topic).addPathSegment("records")
    if (!cursor.isNullOrEmpty()) b.addQueryParameter("cursor", cursor)
    opts.keys?.forEach { b.addQueryParameter("key", it) }
    opts.prefix?.let { b.addQueryParameter("prefix", it) }
    opts.filter?.let { b.addQueryParameter("filter", Json.mapper.writeValueAsString(it)) }
    opts.fields?.forEach { b.addQueryParameter("fields", it) }
    opts.limit?.let { b.addQueryParameter("limit", it.toString()) }
    return b.build()
}

/** One page; a 503 is retried after its `Retry-After` (three tries in all). */
internal suspend fun fetchRecords(
    http: OkHttpClient,
    url: HttpUrl,
    topic: String,
    token: (suspend () -> String?)?,
    minDelayMs: Long,
    maxDelayMs: Long,
): FetchSinceResult {
    var attempt = 0
    while (true) {
        val req = Request.Builder().url(url).header("Accept", "application/json")
        // Asked per attempt: a retry after a wait goes with a fresh token.
        token?.invoke()?.let { req.header("Authorization", "Bearer $it") }
        val res = http.newCall(req.build()).await()
        val failure = res.use {
            val text = it.body?.string() ?: ""
            val json = try { Json.mapper.readTree(text) } catch (e: IOException) { null }
            if (it.isSuccessful) {
                val page = json as? ObjectNode
                    ?: throw FetchSinceException(it.code, "bad_response", "fetchSince $topic: the answer is not a JSON object: ${text.take(200)}")
                return parsePage(topic, page)
            }
            val retryAfter = Backoff.parseRetryAfter(it.header("Retry-After"))
            val code = json?.text("error") ?: "http_${it.code}"
            val what = when (it.code) {
                401 -> "unauthorized (no token, or an expired or invalid one)"
                403 -> "forbidden (the token does not grant reading $topic)"
                else -> code
            }
            FetchSinceException(it.code, code, "fetchSince $topic refused (${it.code} $what): ${json?.text("message") ?: text.take(200)}", retryAfter)
        }
        if (failure.status == 503 && attempt < 2) {
            delay(Backoff.reconnectDelay(DisconnectHint(status = 503, retryAfter = failure.retryAfter), attempt, minDelayMs, maxDelayMs))
            attempt++
            continue
        }
        throw failure
    }
}

private fun parsePage(topic: String, page: ObjectNode): FetchSinceResult {
    val records = page.path("records").mapNotNull { it as? ObjectNode }.map { msg ->
        val offsetNode = msg.path("offset")
        val offsetText = if (offsetNode.isTextual) offsetNode.asText() else offsetNode.toString()
        val recCursor = msg.text("cursor") ?: ""
        PushRecord(
            topic = msg.text("topic") ?: topic,
            key = msg.get("key")?.takeIf { it.isTextual }?.asText(),
            partition = msg.path("partition").asInt(0),
            offset = offsetText.toLongOrNull() ?: -1,
            offsetText = offsetText,
            cursor = recCursor,
            timestamp = msg.path("timestamp").asLong(0),
            data = msg.get("data"),
            op = msg.text("op"),
            snapshot = false,
            replayed = true,
            patched = false,
            resumeCursor = recCursor,
            raw = msg,
        )
    }
    val gap = page.get("gap")?.takeIf { it.isObject }?.let { g: JsonNode -> FetchGap(g.text("reason") ?: "unknown", g.text("earliest")) }
    return FetchSinceResult(
        records = records,
        cursor = page.text("cursor") ?: throw FetchSinceException(200, "bad_response", "fetchSince $topic: the answer has no cursor"),
        more = page.path("more").asBoolean(false),
        recovered = page.path("recovered").asBoolean(true),
        gap = gap,
        raw = page,
    )
}
