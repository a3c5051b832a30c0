// The client against the real gateway (target/debug/pushgate, started here
// on 127.0.0.1 with a temporary data dir), over WebSocket and SSE (OkHttp).
// Each test is bounded by @Timeout and kills only the gateway it started.
package dev.pushgate.client

import com.fasterxml.jackson.databind.JsonNode
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.params.ParameterizedTest
import org.junit.jupiter.params.provider.EnumSource
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit

@Timeout(value = 120, unit = TimeUnit.SECONDS)
class GatewayTest {
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.IO)
    private val clients = CopyOnWriteArrayList<Pushgate>()
    private val gateways = CopyOnWriteArrayList<Gateway>()

    @AfterEach
    fun cleanup() {
        clients.forEach { it.close() }
        scope.cancel()
        gateways.forEach { it.close() }
    }

    private fun gateway(config: String = "gateway.toml", token: (() -> String)? = null) = Gateway(config, token).also { gateways.add(it) }.start()

    private fun client(gw: Gateway, transport: Transport = Transport.WEBSOCKET, minDelayMs: Long = 50, maxDelayMs: Long = 1000, tokenProvider: (suspend () -> String?)? = null) =
        Pushgate(PushgateOptions(url = gw.url, transport = transport, minDelayMs = minDelayMs, maxDelayMs = maxDelayMs, tokenProvider = tokenProvider)).also { clients.add(it) }

    /** Collects every event of [sub] into a list. */
    private fun collect(sub: Subscription): CopyOnWriteArrayList<PushEvent> {
        val got = CopyOnWriteArrayList<PushEvent>()
        scope.launch { sub.events.collect { got.add(it) } }
        return got
    }

    private fun List<PushEvent>.records() = filterIsInstance<PushRecord>()

    private fun clientEvents(pg: Pushgate): CopyOnWriteArrayList<ClientEvent> {
        val got = CopyOnWriteArrayList<ClientEvent>()
        scope.launch { pg.clientEvents.collect { got.add(it) } }
        Thread.sleep(50) // the collector is subscribed before anything happens
        return got
    }

    private fun waitFor(what: String, timeoutMs: Long = 10_000, cond: () -> Boolean) {
        eventually(what, timeoutMs) { if (cond()) true else null }
    }

    @ParameterizedTest
    @EnumSource(Transport::class)
    fun `snapshot then live, only the keys asked for, the cursor to persist on every record`(transport: Transport) {
        val gw = gateway()
        gw.publish("prices", "AAPL", mapOf("price" to 1))
        gw.publish("prices", "MSFT", mapOf("price" to 2))
        gw.publish("prices", "NVDA", mapOf("price" to 3))
        val pg = client(gw, transport)
        val sub = pg.subscribe("prices", SubscribeOptions(keys = listOf("AAPL", "NVDA")))
        val got = collect(sub)
        waitFor("live") { sub.live && got.any { it is Live } } // the collector has caught up too
        val snap = got.records().map { Triple(it.key, it.data!!.get("price").asInt(), it.snapshot) }.sortedBy { it.first }
        assertEquals(listOf(Triple("AAPL", 1, true), Triple("NVDA", 3, true)), snap)
        // Every snapshot record's cursor resumes the snapshot after its key.
        assertEquals(got.records().first().cursor, got.records().first().resumeCursor)
        assertNotNull(got.records().last().resumeCursor)
        gw.publish("prices", "MSFT", mapOf("price" to 20))
        val a = gw.publish("prices", "AAPL", mapOf("price" to 10))
        waitFor("the live record") { got.records().size == 3 }
        val live = got.records()[2]
        assertEquals("AAPL", live.key)
        assertEquals(10, live.data!!.get("price").asInt())
        assertEquals(a.get("offset").asLong(), live.offset)
        assertEquals(a.get("cursor").asText(), live.cursor)
        assertEquals(live.cursor, live.resumeCursor)
        assertEquals(sub.cursor, live.resumeCursor)
        assertEquals(ConnectionState.LIVE, pg.state.value)
    }

    @ParameterizedTest
    @EnumSource(Transport::class)
    fun `a partial snapshot is told`(transport: Transport) {
        val gw = gateway("gateway-partial.toml")
        for (i in 0 until 5) gw.publish("tiny_view", "k$i", mapOf("i" to i))
        val pg = client(gw, transport)
        val sub = pg.subscribe("tiny_view")
        val got = collect(sub)
        // The Live event is the last of the `live` message's events: everything before it is in.
        waitFor("live") { got.any { it is Live } }
        assertEquals(listOf("k0", "k1", "k2"), got.records().map { it.key }.sortedBy { it }, "the first 3 keys in key order (max_snapshot_records)")
        assertEquals(listOf(PartialSnapshot("tiny_view", "max_snapshot_records", 2)), got.filterIsInstance<PartialSnapshot>())
        assertEquals("max_snapshot_records", sub.snapshotPartial?.reason)
        val whole = pg.subscribe("prices", SubscribeOptions(keys = listOf("none")))
        val wholeEvents = collect(whole)
        waitFor("live") { wholeEvents.any { it is Live } }
        assertNull(whole.snapshotPartial)
        assertTrue(wholeEvents.none { it is PartialSnapshot })
    }

    // A snapshot that moves on (the gateway's limits.snapshot_hold_bytes is 1
    // byte in gateway-moves.toml): keys deleted while it streams are not
    // sent, so fewer snapshot records come than `subscribed` counted. The
    // client still ends with exactly the view, and from `live` on it takes
    // each record's cursor (it used to wait for the count to reach zero).
    @ParameterizedTest
    @EnumSource(Transport::class)
    fun `a snapshot that moved on past deleted keys, then live cursors`(transport: Transport) {
        val gw = gateway("gateway-moves.toml")
        val keys = 100_000
        val deletedFrom = 90_000
        fun key(i: Int) = "k%05d".format(i)
        // About 350 bytes a record: more than the sockets' buffers hold.
        val pad = "x".repeat(200)
        for (b in 0 until keys / 1000) {
            gw.publishAll("view", (0 until 1000).map { mapOf("key" to key(b * 1000 + it), "data" to mapOf("n" to 0, "pad" to pad)) })
        }
        val pg = client(gw, transport)
        val sub = pg.subscribe("view")
        val held = ConcurrentHashMap<String, Int>()
        var counted = -1
        var snapshotRecords = 0
        var wrote = false
        scope.launch {
            sub.events.collect { ev ->
                when (ev) {
                    is Subscribed -> counted = ev.snapshot
                    is PushRecord -> {
                        if (ev.snapshot) snapshotRecords++
                        val data = ev.data
                        if (data == null || data.isNull) held.remove(ev.key!!) else held[ev.key!!] = data.get("n").asInt()
                        if (!wrote) {
                            // Written while this collector holds the client's
                            // reading back (its buffer fills): the snapshot
                            // cannot run ahead of the writes.
                            wrote = true
                            gw.publishAll(
                                "view",
                                (deletedFrom until keys).map { mapOf("key" to key(it), "data" to null) } +
                                    (0 until 10).map { mapOf("key" to key(it), "data" to mapOf("n" to 1)) },
                            )
                        }
                    }
                    else -> {}
                }
            }
        }
        waitFor("live", 60_000) { sub.live }
        waitFor("the view as it is", 30_000) { held.size == deletedFrom && (0 until 10).all { held[key(it)] == 1 } }
        assertEquals(keys, counted, "subscribed counted the view as it was")
        assertTrue(snapshotRecords < keys, "the deleted keys were not sent: $snapshotRecords")
        val moved = Regex("(?m)^pushgate_snapshots_moved_total (\\d+)").find(gw.metrics())?.groupValues?.get(1)?.toInt() ?: 0
        assertTrue(moved >= 1, "the snapshot moved on")
        for (i in 0 until deletedFrom) assertEquals(if (i < 10) 1 else 0, held[key(i)], key(i))
        // Live: the subscription's cursor is the live record's.
        val a = gw.publish("view", key(42), mapOf("n" to 2))
        waitFor("the live record") { held[key(42)] == 2 }
        waitFor("the live cursor taken") { sub.cursor == a.get("cursor").asText() }
    }

    @Test
    fun `a persisted cursor resumes on the next start - exactly the missed records, replayed`() {
        val gw = gateway()
        val first = client(gw)
        val s1 = first.subscribe("one", SubscribeOptions(snapshot = false))
        val got1 = collect(s1)
        waitFor("live") { s1.live }
        for (i in 0 until 5) gw.publish("one", "k", i)
        waitFor("5 records") { got1.records().size == 5 }
        val persisted = got1.records().last().resumeCursor
        first.close()
        for (i in 5 until 12) gw.publish("one", "k", i)
        val second = client(gw)
        val s2 = second.subscribe("one", SubscribeOptions(cursor = persisted))
        val got2 = collect(s2)
        waitFor("caught up") { s2.live }
        gw.publish("one", "k", 12)
        waitFor("the live record") { got2.records().size == 8 }
        assertEquals((5..12).toList(), got2.records().map { it.data!!.asInt() })
        assertEquals(List(7) { true } + false, got2.records().map { it.replayed })
        assertEquals(listOf(7L), got2.filterIsInstance<Resumed>().map { it.missed })
        assertTrue(got2.none { it is Reset })
    }

    @Test
    fun `a value filter (enter and leave), a projection and JSON Patch deltas give whole values`() {
        val gw = gateway()
        val pg = client(gw)
        val f = pg.subscribe("one", SubscribeOptions(filter = mapOf("status" to "open"), fields = listOf("status", "total")))
        val filtered = collect(f)
        val d = pg.subscribe("prices", SubscribeOptions(keys = listOf("K"), delta = SubscribeOptions.DELTA_JSON_PATCH))
        val deltas = collect(d)
        waitFor("both live") { f.live && d.live }
        gw.publish("one", "o1", mapOf("status" to "open", "total" to 5, "secret" to "x"))
        gw.publish("one", "o2", mapOf("status" to "closed", "total" to 6))
        gw.publish("one", "o1", mapOf("status" to "closed", "total" to 5))
        waitFor("a record and a leave") { filtered.records().size == 2 }
        val r = filtered.records()
        assertEquals(listOf("o1", "o1"), r.map { it.key })
        assertEquals(listOf(null, "leave"), r.map { it.op })
        assertEquals("""{"status":"open","total":5}""", r[0].data.toString())
        assertNull(r[1].data)
        gw.publish("one", "o1", mapOf("status" to "open", "total" to 7))
        waitFor("enter") { filtered.records().size == 3 }
        assertEquals("enter", filtered.records()[2].op)
        assertEquals("""{"status":"open","total":7}""", filtered.records()[2].data.toString())

        val desc = "a long unchanging description so that patches are smaller than the value ".let { it + it + it }
        val sent = ArrayList<JsonNode>()
        for (i in 0 until 20) {
            val v = mapOf("price" to i, "desc" to desc, "tags" to if (i % 2 == 1) listOf("a") else listOf("a", "b"), "meta" to mapOf("i" to i))
            sent.add(Json.mapper.valueToTree(v))
            gw.publish("prices", "K", v)
        }
        waitFor("20 delta records") { deltas.records().size == 20 }
        for ((i, rec) in deltas.records().withIndex()) assertJson(sent[i], rec.data, "value $i whole, in order")
        val patched = deltas.records().count { it.patched }
        assertTrue(patched >= 15, "most arrived as patches ($patched)")
        assertJson(sent[19], d.values["K"], "values")
    }

    @Test
    fun `max_rate conflates a fast key, and its latest value always arrives`() {
        val gw = gateway()
        val pg = client(gw)
        val sub = pg.subscribe("one", SubscribeOptions(keys = listOf("fast"), maxRate = 2.0))
        val got = collect(sub)
        waitFor("live") { sub.live && got.any { it is Live } } // the collector has caught up too
        val t0 = System.currentTimeMillis()
        for (i in 1..40) gw.publish("one", "fast", i)
        val took = (System.currentTimeMillis() - t0) / 1000.0
        waitFor("the latest value", 5000) { got.records().lastOrNull()?.data?.asInt() == 40 }
        val values = got.records().map { it.data!!.asInt() }
        assertTrue(values.size <= Math.ceil(took * 2).toInt() + 3, "${values.size} records in $took s at max_rate 2")
        assertTrue(values.size < 40, "conflated")
        assertEquals(values.sorted(), values, "in order")
    }

    @ParameterizedTest
    @EnumSource(Transport::class)
    fun `the gateway killed (SIGKILL) mid-stream and restarted - 0 lost, 0 duplicated`(transport: Transport) {
        val gw = gateway()
        val pg = client(gw, transport, minDelayMs = 100, maxDelayMs = 500)
        val sub = pg.subscribe("one")
        val seen = ConcurrentHashMap<Long, Int>()
        val values = CopyOnWriteArrayList<Int>()
        scope.launch {
            sub.records.collect { r ->
                seen.merge(r.offset, 1, Int::plus)
                values.add(r.data!!.asInt())
            }
        }
        waitFor("live") { sub.live }
        val acked = ArrayList<Long>()
        for (i in 0 until 300) {
            if (i == 150) {
                gw.kill()
                Thread.sleep(300)
                gw.restart()
            }
            while (true) {
                try {
                    acked.add(gw.publish("one", "k${i % 7}", i).get("offset").asLong())
                    break
                } catch (e: Exception) {
                    Thread.sleep(50)
                }
            }
        }
        val last = acked.maxOrNull()!!
        waitFor("offset $last", 15_000) { seen.containsKey(last) }
        Thread.sleep(200)
        assertEquals((0..last).toList(), seen.keys.sorted(), "0 lost: every offset of the log")
        assertEquals(emptyList<Int>(), seen.values.filter { it != 1 }, "0 duplicated")
        assertEquals((0 until 300).toList(), values.sorted())
        assertTrue(pg.reconnects >= 1, "it reconnected")
    }

    @Test
    fun `a log wiped while the client was away is a gap - reset (epoch), then a fresh snapshot`() {
        val gw = gateway()
        gw.publish("one", "a", 1)
        val pg = client(gw, minDelayMs = 100, maxDelayMs = 400)
        val sub = pg.subscribe("one")
        val got = collect(sub)
        waitFor("snapshot") { sub.live && got.records().size == 1 }
        gw.kill()
        gw.wipe()
        gw.restart()
        gw.publish("one", "b", 2)
        waitFor("reset and the new snapshot") { got.any { it is Reset } && got.records().size == 2 }
        val reset = got.filterIsInstance<Reset>().single()
        assertEquals("epoch", reset.reason)
        assertNotNull(reset.earliest)
        assertEquals("b", got.records()[1].key)
        waitFor("live again") { sub.live }
        assertNotNull(sub.cursor)
    }

    @Test
    fun `a cursor older than retention is a gap - reset (retention), then a fresh snapshot`() {
        val gw = gateway()
        val old = gw.publish("small", "k", 0).get("cursor").asText()
        for (i in 1..30) gw.publish("small", "k", i)
        Thread.sleep(500) // retention runs every 50 ms
        val pg = client(gw)
        val sub = pg.subscribe("small", SubscribeOptions(cursor = old))
        val got = collect(sub)
        waitFor("live") { sub.live && got.any { it is Live } } // the collector has caught up too
        val reset = got.filterIsInstance<Reset>().single()
        assertEquals("retention", reset.reason)
        assertNotNull(reset.earliest)
        assertEquals(listOf(30), got.records().map { it.data!!.asInt() }, "the fresh snapshot")
        assertTrue(got.records().single().snapshot)
        assertTrue(got.none { it is Resumed })
    }

    @ParameterizedTest
    @EnumSource(Transport::class)
    fun `tokens of 2 s refreshed through the suspend callback - every record once`(transport: Transport) {
        val gw = gateway("gateway-auth.toml") { token(60) }
        var minted = 0
        val pg = client(gw, transport, tokenProvider = {
            minted++
            token(2)
        })
        val events = clientEvents(pg)
        val sub = pg.subscribe("one", SubscribeOptions(keys = listOf("x"), snapshot = false))
        val got = collect(sub)
        waitFor("live") { sub.live && got.any { it is Live } } // the collector has caught up too
        val sent = (0 until 14).toList()
        for (i in sent) {
            gw.publish("one", "x", i)
            Thread.sleep(500)
        }
        waitFor("all records") { got.records().size >= sent.size }
        Thread.sleep(200)
        assertEquals(sent, got.records().map { it.data!!.asInt() })
        assertTrue(minted >= 3, "token callback called $minted times")
        if (transport == Transport.WEBSOCKET) {
            assertTrue(events.any { it is ClientEvent.Refreshed }, events.toString())
            assertTrue(events.none { it is ClientEvent.Disconnect }, "the socket stayed up: $events")
        } else {
            assertTrue(events.any { it is ClientEvent.Disconnect }, "the stream ended at expiry and came back")
        }
        assertTrue(got.none { it is Reset })
    }

    @ParameterizedTest
    @EnumSource(Transport::class)
    fun `a full node answers 503 with Retry-After, and the client waits that long`(transport: Transport) {
        val gw = gateway("gateway-one-connection.toml")
        val first = client(gw, transport)
        val s1 = first.subscribe("one")
        waitFor("the first client live") { s1.live }
        val second = client(gw, transport, minDelayMs = 50)
        val hints = clientEvents(second)
        val s2 = second.subscribe("one")
        waitFor("a refusal") { hints.any { it is ClientEvent.Disconnect } }
        val hint = hints.filterIsInstance<ClientEvent.Disconnect>().first()
        assertEquals(503, hint.status)
        assertEquals(1.0, hint.retryAfter)
        assertTrue(hint.delayMs >= 1000, "waits at least Retry-After (${hint.delayMs} ms)")
        first.close()
        waitFor("the second client live once there is room") { s2.live }
    }

    @Test
    fun `a drain closes with 1012 and the client comes back at once, resuming`() {
        val gw = gateway()
        val pg = client(gw, minDelayMs = 300, maxDelayMs = 5000)
        val hints = clientEvents(pg)
        val sub = pg.subscribe("one")
        val got = collect(sub)
        waitFor("live") { sub.live && got.any { it is Live } } // the collector has caught up too
        gw.publish("one", "a", 1)
        waitFor("a record") { got.records().size == 1 }
        gw.stop()
        waitFor("the close") { hints.any { it is ClientEvent.Disconnect } }
        val hint = hints.filterIsInstance<ClientEvent.Disconnect>().first()
        // The gateway's 1012 close frame does not always reach the client: in
        // about one drain in six OkHttp sees the stream end (EOF) without it
        // (a gateway-side matter, noted in clients/kotlin/README.md). The
        // client's answer to 1012 is pinned without a gateway in
        // ReconnectHintTest; here the resume is what must hold either way.
        if (hint.code == 1012) {
            assertTrue(hint.delayMs < 300, "reconnects within minDelay (${hint.delayMs} ms)")
        } else {
            System.err.println("drain test: the gateway's 1012 did not arrive: $hints")
            assertEquals(null, hint.code, "no other close code: $hints")
        }
        gw.restart()
        gw.publish("one", "a", 2)
        waitFor("the record after the restart") { got.records().size == 2 }
        assertEquals(listOf(1, 2), got.records().map { it.data!!.asInt() })
    }

    @Test
    fun `networkAvailable() skips the backoff and reconnects now`() {
        val gw = gateway()
        val pg = client(gw, minDelayMs = 20_000, maxDelayMs = 60_000)
        val sub = pg.subscribe("one")
        waitFor("live") { sub.live }
        gw.kill()
        waitFor("reconnecting") { pg.state.value == ConnectionState.RECONNECTING }
        // Let the first attempt fail so that the backoff is the long one.
        Thread.sleep(300)
        gw.restart()
        val t = System.currentTimeMillis()
        pg.networkAvailable()
        waitFor("live again", 5000) { sub.live }
        assertTrue(System.currentTimeMillis() - t < 5000)
    }

    @Test
    fun `40 subscriptions on one socket`() {
        val gw = gateway()
        val pg = client(gw)
        val got = ConcurrentHashMap<String, Int>()
        val subs = (0 until 40).map { i ->
            pg.subscribe("m%02d".format(i)).also { s -> scope.launch { s.records.collect { got[it.topic] = it.data!!.asInt() } } }
        }
        waitFor("all live") { subs.all { it.live } }
        for (i in 0 until 40) gw.publish("m%02d".format(i), "k", i)
        waitFor("40 records") { got.size == 40 }
        for (i in 0 until 40) assertEquals(i, got["m%02d".format(i)])
        assertEquals(1, pg.sockets, "one WebSocket")
    }
}
