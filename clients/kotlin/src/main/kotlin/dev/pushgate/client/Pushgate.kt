// The client: one logical connection to a gateway, over one WebSocket (many
// subscriptions) or one SSE stream per subscription; reconnects with backoff
// and the gateway's hints, resumes every subscription from its cursor,
// refreshes tokens, and hands each subscription's events to a Flow.
package dev.pushgate.client

import com.fasterxml.jackson.databind.JsonNode
import com.fasterxml.jackson.databind.node.ObjectNode
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.channels.ClosedSendChannelException
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import kotlinx.coroutines.suspendCancellableCoroutine
import okhttp3.Call
import okhttp3.Callback
import okhttp3.HttpUrl
import okhttp3.HttpUrl.Companion.toHttpUrl
import okhttp3.MediaType.Companion.toMediaType
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.RequestBody.Companion.toRequestBody
import okhttp3.Response
import okhttp3.WebSocket
import okhttp3.WebSocketListener
import java.io.Closeable
import java.io.IOException
import kotlin.coroutines.resume
import kotlin.coroutines.resumeWithException
import kotlinx.coroutines.channels.onClosed as onChannelClosed

/**
 * The options of a [Pushgate] client.
 *
 * [tokenProvider] is called before every (re)connect (the token travels as
 * `access_token`) and when the gateway warns that the token is expiring:
 * over WebSocket the fresh token is then sent in-band (`refresh`) and the
 * socket stays up; SSE streams reconnect with it from their cursors.
 */
data class PushgateOptions(
    /** The gateway's base URL, `https://push.example.com` (http and https; ws and wss are derived). */
    val url: String,
    val transport: Transport = Transport.WEBSOCKET,
    val tokenProvider: (suspend () -> String?)? = null,
    /** Backoff base (the first retry waits up to this). */
    val minDelayMs: Long = 500,
    /** Backoff cap. */
    val maxDelayMs: Long = 15_000,
    /** WebSocket: a `ping` this often; reconnect when nothing arrives for twice that. SSE: the read timeout is twice that. */
    val heartbeatMs: Long = 30_000,
    /** Events buffered per subscription before the client stops reading (see [Subscription.events]). */
    val eventBuffer: Int = 1024,
    /** Your OkHttp client (connection pool, TLS, proxies); a default one otherwise. */
    val okHttpClient: OkHttpClient? = null,
    /** Where WebSockets come from (default: [okHttpClient]); tests hand in their own. */
    val webSocketFactory: WebSocket.Factory? = null,
)

/**
 * A pushgate client. Create one per gateway, subscribe, collect each
 * subscription's [Subscription.records] (or [Subscription.events]), and
 * [close] it when done. Thread-safe; no method blocks.
 *
 * ```
 * val pg = Pushgate(PushgateOptions(url = "https://push.example.com", tokenProvider = { api.freshToken() }))
 * val sub = pg.subscribe("prices", SubscribeOptions(keys = listOf("AAPL"), cursor = prefs.getString("cursor", null)))
 * scope.launch { sub.records.collect { r -> show(r.key, r.data); prefs.edit().putString("cursor", r.resumeCursor).apply() } }
 * ```
 */
class Pushgate(val options: PushgateOptions) : Closeable {
    private val lock = Any()
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.IO)
    private val baseUrl: HttpUrl = options.url.trimEnd('/').toHttpUrl()
    private val http: OkHttpClient = options.okHttpClient ?: OkHttpClient()
    private val wsFactory: WebSocket.Factory = options.webSocketFactory ?: http
    private val subs = LinkedHashMap<String, Subscription>()
    private var seq = 0
    private var closed = false

    // WebSocket state.
    private var ws: WebSocket? = null
    private var wsOpen = false
    private var wsConnecting = false
    private var wsAttempt = 0
    private var wsTimer: Job? = null
    private var wsEverOpen = false
    @Volatile private var lastSeen = 0L
    private var beat: Job? = null

    private val sse = SseStreams(this, http, options.heartbeatMs * 2)

    private val stateFlow = MutableStateFlow(ConnectionState.CONNECTING)

    /** The connection's state: CONNECTING, LIVE, RECONNECTING, CLOSED. */
    val state: StateFlow<ConnectionState> get() = stateFlow

    private val clientEventFlow = MutableSharedFlow<ClientEvent>(extraBufferCapacity = 256, onBufferOverflow = kotlinx.coroutines.channels.BufferOverflow.DROP_OLDEST)

    /** Disconnects (with the hint and the delay chosen), in-band token refreshes, errors not tied to a subscription. */
    val clientEvents: SharedFlow<ClientEvent> get() = clientEventFlow

    /** Times the state went from RECONNECTING to LIVE. */
    @Volatile var reconnects = 0; private set

    /** WebSocket connections opened so far. */
    @Volatile var sockets = 0; private set

    init {
        if (options.transport == Transport.WEBSOCKET) connectWs()
    }

    internal inline fun <T> locked(block: () -> T): T = synchronized(lock, block)

    /** Subscribes to [topic] (one subscription per topic per client). */
    fun subscribe(topic: String, options: SubscribeOptions = SubscribeOptions()): Subscription {
        require(options.delta == null || options.delta == SubscribeOptions.DELTA_JSON_PATCH) { "delta must be \"json-patch\"" }
        require(options.resume == null || options.resume == "all" || options.resume == "latest") { "resume must be \"all\" or \"latest\"" }
        require(options.maxRate == null || options.maxRate > 0) { "maxRate must be positive" }
        val sub = Subscription(this, topic, options, this.options.eventBuffer)
        locked {
            check(!closed) { "the client is closed" }
            check(!subs.containsKey(topic)) { "already subscribed to $topic; use setKeys or unsubscribe first" }
            subs[topic] = sub
            if (this.options.transport == Transport.WEBSOCKET) wsSubscribe(sub) else sse.open(sub)
        }
        return sub
    }

    internal fun setKeys(sub: Subscription, keys: List<String>?) {
        locked {
            if (sub.closed) return
            sub.keys = keys?.toList()
            if (sub.snapshot) sub.cursor = null
            resubscribeLocked(sub)
        }
    }

    internal fun unsubscribe(sub: Subscription) {
        locked {
            if (sub.closed) return
            sub.closed = true
            sub.retryJob?.cancel()
            if (subs[sub.topic] === sub) subs.remove(sub.topic)
            if (options.transport == Transport.WEBSOCKET) {
                sub.id?.let { send(obj().put("type", "unsubscribe").put("id", it)) }
            } else {
                sse.remove(sub)
            }
            sub.channel.close()
        }
    }

    /** Under the lock: a new request for [sub] (keys changed, a patch that could not be applied). */
    internal fun resubscribeLocked(sub: Subscription) {
        if (options.transport == Transport.WEBSOCKET) {
            sub.id?.let { send(obj().put("type", "unsubscribe").put("id", it)) }
            sub.id = null
            sub.active = false
            sub.live = false
            wsSubscribe(sub)
        } else {
            sse.open(sub)
        }
    }

    /**
     * The network is back (the app heard it from the platform, for example
     * ConnectivityManager's NetworkCallback.onAvailable): forget the backoff
     * and reconnect now whatever is not connected.
     */
    fun networkAvailable() {
        locked {
            if (closed) return
            if (options.transport == Transport.WEBSOCKET) {
                wsAttempt = 0
                if (ws == null) {
                    wsTimer?.cancel()
                    connectWs()
                }
            } else {
                sse.networkAvailable()
            }
        }
    }

    /**
     * Asks [PushgateOptions.tokenProvider] for a fresh token now. WebSocket:
     * sent in-band (`refresh`); SSE: each stream reconnects with it, from its
     * cursor.
     */
    suspend fun refreshToken() {
        val provider = options.tokenProvider ?: return
        val token = provider()
        locked {
            if (closed) return
            if (options.transport == Transport.WEBSOCKET) {
                if (wsOpen && token != null) send(obj().put("type", "refresh").put("token", token))
            } else {
                sse.reopenAll()
            }
        }
    }

    /**
     * Publishes one record through the HTTP API (`POST /topics/{topic}`) and
     * returns the gateway's answer (`partition`, `offset`, `cursor`).
     */
    suspend fun publish(topic: String, key: String?, data: Any?): JsonNode {
        val body = obj().put("key", key).set<ObjectNode>("data", Json.mapper.valueToTree<JsonNode>(data))
        val url = baseUrl.newBuilder().addPathSegment("topics").addPathSegment(topic).build()
        val req = Request.Builder().url(url)
            .post(Json.mapper.writeValueAsBytes(body).toRequestBody("application/json".toMediaType()))
        options.tokenProvider?.invoke()?.let { req.header("Authorization", "Bearer $it") }
        val res = http.newCall(req.build()).await()
        res.use {
            val text = it.body?.string() ?: ""
            val json = try { Json.mapper.readTree(text) } catch (e: IOException) { null }
            if (!it.isSuccessful) {
                throw PublishException(it.code, json?.text("error") ?: "http_${it.code}", json?.text("message") ?: text)
            }
            return json ?: obj()
        }
    }

    /**
     * What was appended to [topic] after [cursor], with one HTTP request and
     * no socket (`GET /topics/{topic}/records`): for an app woken by a push
     * notification. One page per call: call again with the returned cursor
     * while [FetchSinceResult.more] is true. The cursor covers records a
     * filter left out, and subscribing with it continues live with no gap
     * and no duplicate. Without a cursor the answer is empty with the head's
     * cursor: take it before the app sleeps. The token comes from
     * [PushgateOptions.tokenProvider] (`Authorization: Bearer`); a 503 is
     * retried after its `Retry-After` (three tries); any other refusal throws
     * [FetchSinceException] (401 [FetchSinceException.unauthorized], 403
     * [FetchSinceException.forbidden]).
     *
     * ```
     * var page = pg.fetchSince("prices", prefs.getString("cursor", null), FetchSinceOptions(keys = listOf("AAPL")))
     * while (true) {
     *     page.gap?.let { reload(it) }
     *     page.records.forEach { show(it.key, it.data) }
     *     if (!page.more) break
     *     page = pg.fetchSince("prices", page.cursor, FetchSinceOptions(keys = listOf("AAPL")))
     * }
     * prefs.edit().putString("cursor", page.cursor).apply()
     * ```
     */
    suspend fun fetchSince(topic: String, cursor: String?, options: FetchSinceOptions = FetchSinceOptions()): FetchSinceResult {
        require(options.limit == null || options.limit > 0) { "limit must be positive" }
        return fetchRecords(http, recordsUrl(baseUrl, topic, cursor, options), topic, this.options.tokenProvider, this.options.minDelayMs, this.options.maxDelayMs)
    }

    /** Closes every connection and completes every subscription's flow; no more reconnects. */
    override fun close() {
        locked {
            if (closed) return
            closed = true
            wsTimer?.cancel()
            beat?.cancel()
            ws?.close(1000, null)
            ws = null
            wsOpen = false
            sse.closeAll()
            for (sub in subs.values) {
                sub.retryJob?.cancel()
                sub.channel.close()
            }
            setState(ConnectionState.CLOSED)
        }
        scope.cancel()
    }

    // ---- shared -----------------------------------------------------------

    internal val isClosed: Boolean get() = closed
    internal val minDelayMs get() = options.minDelayMs
    internal val maxDelayMs get() = options.maxDelayMs
    internal val tokenProvider get() = options.tokenProvider
    internal fun launch(block: suspend CoroutineScope.() -> Unit): Job = scope.launch(block = block)
    internal fun subscriptionFor(topic: String): Subscription? = subs[topic]
    internal fun nextId(topic: String): String = "$topic#${++seq}"
    internal fun url(path: String, token: String?): HttpUrl.Builder {
        val b = baseUrl.newBuilder().addPathSegment(path)
        if (token != null) b.addQueryParameter("access_token", token)
        return b
    }

    /** Hands queued events to their flows (outside the lock: a full buffer blocks this reader). */
    internal fun flush(box: Outbox) {
        for (e in box.clientEvents) clientEventFlow.tryEmit(e)
        for ((sub, ev) in box.events) {
            try {
                sub.channel.trySendBlocking(ev).onChannelClosed { }
            } catch (e: ClosedSendChannelException) {
                // Unsubscribed meanwhile.
            }
        }
    }

    internal fun emit(ev: ClientEvent) {
        clientEventFlow.tryEmit(ev)
    }

    internal fun setState(s: ConnectionState) {
        if (stateFlow.value == s) return
        if (stateFlow.value == ConnectionState.RECONNECTING && s == ConnectionState.LIVE) reconnects++
        stateFlow.value = s
    }

    // ---- WebSocket --------------------------------------------------------

    private fun obj(): ObjectNode = Json.mapper.createObjectNode()

    private fun send(msg: ObjectNode): Boolean {
        val socket = ws
        if (!wsOpen || socket == null) return false
        // Non-blocking: OkHttp queues the frame.
        return socket.send(Json.mapper.writeValueAsString(msg))
    }

    private fun wsSubscribe(sub: Subscription) {
        if (!wsOpen) return // sent on open
        send(sub.request(nextId(sub.topic)))
    }

    private fun connectWs() {
        locked {
            if (closed || ws != null || wsConnecting) return
            wsConnecting = true
            setState(if (wsEverOpen) ConnectionState.RECONNECTING else ConnectionState.CONNECTING)
        }
        scope.launch {
            val token = try {
                options.tokenProvider?.invoke()
            } catch (e: Exception) {
                if (e is kotlinx.coroutines.CancellationException) throw e
                emit(ClientEvent.Error(PushError("token", e.toString())))
                locked { wsConnecting = false }
                scheduleWs(DisconnectHint(), "no token")
                return@launch
            }
            val url = url("ws", token).build().toString()
                .replaceFirst(Regex("^http"), "ws")
            locked {
                wsConnecting = false
                if (closed || ws != null) return@launch
                // Under the lock: callbacks (on OkHttp's threads) wait until `ws` is set.
                ws = wsFactory.newWebSocket(Request.Builder().url(url).build(), WsListener())
                wsOpen = false
                sockets++
            }
        }
    }

    private inner class WsListener : WebSocketListener() {
        override fun onOpen(webSocket: WebSocket, response: Response) {
            val box = Outbox()
            locked {
                if (ws !== webSocket) return
                wsOpen = true
                lastSeen = System.currentTimeMillis()
                for (sub in subs.values) {
                    sub.retryJob?.cancel()
                    sub.id = null
                    wsSubscribe(sub)
                }
                if (subs.isEmpty()) wsLive()
                startHeartbeat(webSocket)
            }
            flush(box)
        }

        override fun onMessage(webSocket: WebSocket, text: String) {
            lastSeen = System.currentTimeMillis()
            val msg = try {
                Json.mapper.readTree(text) as? ObjectNode ?: return
            } catch (e: IOException) {
                return
            }
            val box = Outbox()
            locked {
                if (ws !== webSocket) return
                onWsMessage(msg, box)
            }
            flush(box)
        }

        override fun onClosing(webSocket: WebSocket, code: Int, reason: String) {
            webSocket.close(1000, null)
            lost(webSocket, DisconnectHint(code = code), reason)
        }

        override fun onClosed(webSocket: WebSocket, code: Int, reason: String) {
            lost(webSocket, DisconnectHint(code = code), reason)
        }

        override fun onFailure(webSocket: WebSocket, t: Throwable, response: Response?) {
            // A refused handshake: its status and Retry-After are the gateway's hint.
            val hint = if (response != null) {
                DisconnectHint(status = response.code, retryAfter = Backoff.parseRetryAfter(response.header("Retry-After")))
            } else DisconnectHint()
            response?.close()
            lost(webSocket, hint, t.message ?: t.toString())
        }
    }

    private fun startHeartbeat(socket: WebSocket) {
        beat?.cancel()
        beat = scope.launch {
            while (isActive) {
                delay(options.heartbeatMs)
                if (System.currentTimeMillis() - lastSeen > 2 * options.heartbeatMs) {
                    // A half-open connection may take minutes to report its close: drop it now.
                    socket.cancel()
                    lost(socket, DisconnectHint(code = 4000), "heartbeat timeout")
                    return@launch
                }
                locked { if (ws === socket) send(obj().put("type", "ping")) }
            }
        }
    }

    private fun lost(socket: WebSocket, hint: DisconnectHint, reason: String) {
        locked {
            if (ws !== socket) return
            ws = null
            wsOpen = false
            beat?.cancel()
            for (sub in subs.values) {
                sub.active = false
                sub.live = false
            }
        }
        scheduleWs(hint, reason)
    }

    private fun scheduleWs(hint: DisconnectHint, reason: String) {
        val delayMs = locked {
            if (closed) return
            setState(if (wsEverOpen) ConnectionState.RECONNECTING else ConnectionState.CONNECTING)
            // A drain or an expired token is no failure of ours: start the backoff over.
            if (hint.code == 1012 || hint.code == 4010) wsAttempt = 0
            val d = Backoff.reconnectDelay(hint, wsAttempt++, options.minDelayMs, options.maxDelayMs)
            wsTimer?.cancel()
            wsTimer = scope.launch {
                delay(d)
                connectWs()
            }
            d
        }
        emit(ClientEvent.Disconnect(null, hint.code, reason, hint.status, hint.retryAfter, delayMs))
    }

    private fun wsLive() {
        wsEverOpen = true
        wsAttempt = 0
        setState(ConnectionState.LIVE)
    }

    private fun retryWs(sub: Subscription) {
        sub.retryJob?.cancel()
        val d = Backoff.fullJitter(sub.retries++, minOf(options.minDelayMs, 250), options.maxDelayMs)
        sub.retryJob = scope.launch {
            delay(d)
            locked {
                if (closed || subs[sub.topic] !== sub) return@launch
                // The refused request holds nothing on the gateway: just ask again.
                sub.id = null
                wsSubscribe(sub)
            }
        }
    }

    private fun subById(id: JsonNode?): Subscription? {
        if (id == null || id.isNull) return null
        val s = id.asText()
        return subs.values.firstOrNull { it.id == s }
    }

    private fun onWsMessage(msg: ObjectNode, box: Outbox) {
        when (msg.text("type")) {
            "record" -> msg.text("topic")?.let { subs[it] }?.onRecord(msg, box)
            "subscribed" -> subById(msg.get("id"))?.let {
                it.onSubscribed(msg, box)
                wsLive()
            }
            "gap" -> subById(msg.get("id"))?.onGap(msg, box)
            // Catch-up (snapshot or replay) is over; what follows is live.
            "live" -> subById(msg.get("id"))?.onLive(msg, box)
            // The gateway closes (4010) after `grace_ms` unless a fresh token comes in-band.
            "token_expiring" -> scope.launch {
                try {
                    refreshToken()
                } catch (e: Exception) {
                    if (e is kotlinx.coroutines.CancellationException) throw e
                    emit(ClientEvent.Error(PushError("token", e.toString())))
                }
            }
            "refreshed" -> box.clientEvents += ClientEvent.Refreshed(msg)
            "error" -> {
                val code = msg.text("code") ?: "error"
                val message = msg.text("message") ?: ""
                val sub = subById(msg.get("id"))
                if (sub != null) {
                    sub.onError(code, message, box)
                    wsLive()
                    // `unavailable` is "retry shortly" (a node still warming the
                    // topic): this subscription alone asks again soon, on the
                    // same socket, with its own backoff.
                    if (code == "unavailable") retryWs(sub)
                } else {
                    box.clientEvents += ClientEvent.Error(PushError(code, message))
                }
            }
            else -> {} // unsubscribed, pong, and anything newer
        }
    }
}

/** A publish the gateway refused: [status], the error [code] of its JSON body, its message. */
class PublishException(val status: Int, val code: String, message: String) : IOException("publish failed ($status $code): $message")

/** An OkHttp call as a suspend function (cancelled with the coroutine). */
internal suspend fun Call.await(): Response = suspendCancellableCoroutine { cont ->
    enqueue(object : Callback {
        override fun onResponse(call: Call, response: Response) = cont.resume(response)
        override fun onFailure(call: Call, e: IOException) {
            if (!cont.isCancelled) cont.resumeWithException(e)
        }
    })
    cont.invokeOnCancellation { cancel() }
}

