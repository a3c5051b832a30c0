// Server-Sent Events: one `GET /sse` stream per subscription (okhttp-sse),
// each with its own backoff; the client reconnects them itself, with its
// cursor and a fresh token, rather than with a fixed retry.
package dev.pushgate.client

import com.fasterxml.jackson.databind.node.ObjectNode
import kotlinx.coroutines.Job
import kotlinx.coroutines.delay
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.Response
import okhttp3.sse.EventSource
import okhttp3.sse.EventSourceListener
import okhttp3.sse.EventSources
import java.io.IOException
import java.util.concurrent.TimeUnit

/** The SSE streams of a [Pushgate] client; every method but the callbacks runs under the client's lock. */
internal class SseStreams(private val client: Pushgate, http: OkHttpClient, readTimeoutMs: Long) {
    private class Stream {
        var source: EventSource? = null
        var attempt = 0
        var timer: Job? = null
        var everLive = false
        var live = false
        var open = false

        /** Bumped by every attempt: callbacks of an older one are ignored. */
        var generation = 0
    }

    // Keep-alive comments arrive every sse.keepalive_interval (25 s by default): a
    // stream silent for longer than the read timeout is dead.
    private val factory = EventSources.createFactory(http.newBuilder().readTimeout(readTimeoutMs, TimeUnit.MILLISECONDS).build())
    private val streams = LinkedHashMap<Subscription, Stream>()

    /** (Re)opens the stream of [sub] now. */
    fun open(sub: Subscription) {
        val st = streams.getOrPut(sub) { Stream() }
        st.timer?.cancel()
        st.source?.cancel()
        st.source = null
        st.live = false
        st.open = true // an attempt is under way
        val gen = ++st.generation
        state()
        client.launch {
            val token = try {
                client.tokenProvider?.invoke()
            } catch (e: Exception) {
                if (e is kotlinx.coroutines.CancellationException) throw e
                client.emit(ClientEvent.Error(PushError("token", e.toString(), sub.topic)))
                client.locked { if (st.generation == gen) schedule(sub, st, DisconnectHint(), "no token") }
                return@launch
            }
            client.locked {
                if (client.isClosed || sub.closed || streams[sub] !== st || st.generation != gen) return@launch
                val req = sub.request(client.nextId(sub.topic))
                val url = client.url("sse", token).addQueryParameter("topic", sub.topic)
                req.get("keys")?.forEach { url.addQueryParameter("key", it.asText()) }
                req.text("prefix")?.let { url.addQueryParameter("prefix", it) }
                req.text("cursor")?.let { url.addQueryParameter("cursor", it) }
                if (!sub.snapshot) url.addQueryParameter("snapshot", "false")
                req.get("filter")?.let { url.addQueryParameter("filter", Json.mapper.writeValueAsString(it)) }
                req.get("fields")?.forEach { url.addQueryParameter("field", it.asText()) }
                req.text("delta")?.let { url.addQueryParameter("delta", it) }
                req.get("max_rate")?.let { url.addQueryParameter("max_rate", it.asText()) }
                req.text("resume")?.let { url.addQueryParameter("resume", it) }
                val request = Request.Builder().url(url.build()).header("Accept", "text/event-stream").build()
                st.source = factory.newEventSource(request, Listener(sub, st, gen))
            }
        }
    }

    private inner class Listener(val sub: Subscription, val st: Stream, val gen: Int) : EventSourceListener() {
        override fun onEvent(eventSource: EventSource, id: String?, type: String?, data: String) {
            val msg = try {
                Json.mapper.readTree(data) as? ObjectNode ?: return
            } catch (e: IOException) {
                return
            }
            val box = Outbox()
            client.locked {
                if (st.generation != gen) return
                when (type ?: "message") {
                    "subscribed" -> {
                        msg.put("id", sub.id)
                        sub.onSubscribed(msg, box)
                        st.everLive = true
                        st.live = true
                        st.attempt = 0
                        state()
                    }
                    "live" -> sub.onLive(msg, box)
                    "gap" -> sub.onGap(msg, box)
                    "message" -> sub.onRecord(msg, box)
                    else -> {}
                }
            }
            client.flush(box)
        }

        override fun onClosed(eventSource: EventSource) = ended(DisconnectHint(), "stream ended")

        override fun onFailure(eventSource: EventSource, t: Throwable?, response: Response?) {
            if (response == null || response.isSuccessful) {
                ended(DisconnectHint(), t?.message ?: "stream ended")
                return
            }
            // A refusal: its JSON body names the error; Retry-After is the gateway's hint.
            val body = try { response.body?.string()?.let { Json.mapper.readTree(it) } } catch (e: IOException) { null }
            val code = body?.text("error") ?: "http_${response.code}"
            if (response.code in setOf(400, 401, 403, 404)) {
                val box = Outbox()
                client.locked { if (st.generation == gen) sub.onError(code, body?.text("message") ?: "", box, response.code) }
                client.flush(box)
            }
            ended(DisconnectHint(status = response.code, retryAfter = Backoff.parseRetryAfter(response.header("Retry-After"))), code)
        }

        private fun ended(hint: DisconnectHint, reason: String) {
            client.locked {
                if (st.generation != gen) return
                st.generation++
                st.source?.cancel()
                st.source = null
                st.live = false
                sub.active = false
                sub.live = false
                schedule(sub, st, hint, reason)
            }
        }
    }

    private fun schedule(sub: Subscription, st: Stream, hint: DisconnectHint, reason: String) {
        if (client.isClosed || sub.closed) return
        st.open = false
        state()
        val delayMs = Backoff.reconnectDelay(hint, st.attempt++, client.minDelayMs, client.maxDelayMs)
        client.emit(ClientEvent.Disconnect(sub.topic, hint.code, reason, hint.status, hint.retryAfter, delayMs))
        st.timer?.cancel()
        st.timer = client.launch {
            delay(delayMs)
            client.locked { if (streams[sub] === st && !st.open) open(sub) }
        }
    }

    fun remove(sub: Subscription) {
        val st = streams.remove(sub) ?: return
        st.generation++
        st.timer?.cancel()
        st.source?.cancel()
        state()
    }

    fun networkAvailable() {
        for ((sub, st) in streams.entries.toList()) {
            st.attempt = 0
            if (!st.open) open(sub)
        }
    }

    fun reopenAll() {
        for (sub in streams.keys.toList()) open(sub)
    }

    fun closeAll() {
        for (st in streams.values) {
            st.generation++
            st.timer?.cancel()
            st.source?.cancel()
        }
        streams.clear()
    }

    /** The client's state over SSE: live when every stream is live. */
    private fun state() {
        if (client.isClosed) return
        val all = streams.values
        client.setState(
            when {
                all.all { it.live } -> ConnectionState.LIVE
                all.any { !it.live && it.everLive } -> ConnectionState.RECONNECTING
                else -> ConnectionState.CONNECTING
            },
        )
    }
}
