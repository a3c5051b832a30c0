// fetchSince against the real gateway binary: records missed while the app
// had no socket, paging with `more`, a gap, and refusals (401/403) as
// FetchSinceException. Publishing goes through the harness's JDK HttpClient.
package dev.pushgate.client

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit

@Timeout(value = 120, unit = TimeUnit.SECONDS)
class FetchSinceTest {
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

    // SSE: no socket is opened until something subscribes, as for an app woken by a notification.
    private fun client(gw: Gateway, transport: Transport = Transport.SSE, tokenProvider: (suspend () -> String?)? = null) =
        Pushgate(PushgateOptions(url = gw.url, transport = transport, minDelayMs = 50, maxDelayMs = 1000, tokenProvider = tokenProvider)).also { clients.add(it) }

    @Test
    fun `records missed while the app had no socket, then live from the page's cursor with no duplicate`() {
        val gw = gateway()
        gw.publish("prices", "AAPL", 1)
        // The app, before sleeping, keeps the head's cursor.
        val pg = client(gw, Transport.WEBSOCKET)
        val head = runBlocking { pg.fetchSince("prices", null) }
        assertTrue(head.records.isEmpty(), "no cursor: the head, no records: ${head.raw}")
        assertTrue(head.recovered)
        assertFalse(head.more)
        assertNull(head.gap)
        pg.close()
        gw.publish("prices", "AAPL", 2)
        gw.publish("prices", "MSFT", 3)
        gw.publish("prices", "AAPL", 4)
        // Woken up: what was missed, with one request.
        val pg2 = client(gw, Transport.WEBSOCKET)
        val page = runBlocking { pg2.fetchSince("prices", head.cursor, FetchSinceOptions(keys = listOf("AAPL"))) }
        assertEquals(listOf(2, 4), page.records.map { it.data!!.asInt() }, "only AAPL, only after the cursor: ${page.raw}")
        assertTrue(page.records.all { it.key == "AAPL" && it.topic == "prices" && it.replayed && !it.snapshot })
        assertFalse(page.more)
        assertTrue(page.recovered)
        // Subscribing from the page's cursor continues live: nothing twice, nothing lost.
        val sub = pg2.subscribe("prices", SubscribeOptions(keys = listOf("AAPL"), cursor = page.cursor))
        val got = CopyOnWriteArrayList<PushRecord>()
        scope.launch { sub.records.collect { got.add(it) } }
        eventually("live", 10_000) { if (sub.live) true else null }
        gw.publish("prices", "AAPL", 5)
        eventually("the live record", 10_000) { if (got.isNotEmpty()) true else null }
        Thread.sleep(200)
        assertEquals(listOf(5), got.map { it.data!!.asInt() })
        // Nothing new: an empty page at the same place.
        val again = runBlocking { pg2.fetchSince("prices", got.last().resumeCursor) }
        assertTrue(again.records.isEmpty(), "${again.raw}")
        assertFalse(again.more)
    }

    @Test
    fun `pages with more until the head, each record once`() {
        val gw = gateway()
        val pg = client(gw)
        val start = runBlocking { pg.fetchSince("one", null) }.cursor
        for (i in 1..7) gw.publish("one", "k$i", mapOf("n" to i))
        val seen = ArrayList<Int>()
        val mores = ArrayList<Boolean>()
        var cursor = start
        runBlocking {
            while (true) {
                val page = pg.fetchSince("one", cursor, FetchSinceOptions(limit = 3))
                assertTrue(page.records.size <= 3, "limit honoured: ${page.raw}")
                seen += page.records.map { it.data!!.get("n").asInt() }
                mores += page.more
                cursor = page.cursor
                if (!page.more) break
                check(mores.size < 10) { "more never ended: $mores" }
            }
        }
        assertEquals((1..7).toList(), seen)
        assertEquals(listOf(true, true, false), mores)
        // A filter and a projection travel as the gateway's parameters.
        val filtered = runBlocking { pg.fetchSince("one", start, FetchSinceOptions(prefix = "k", filter = mapOf("n" to mapOf("gte" to 6)), fields = listOf("n"), limit = 100)) }
        assertFalse(filtered.more)
        assertEquals(listOf(6, 7), filtered.records.filter { it.op == null }.map { it.data!!.get("n").asInt() }, "${filtered.raw}")
        assertEquals(cursor, filtered.cursor, "the cursor covers what the filter left out")
    }

    @Test
    fun `a cursor older than retention answers a gap, with the head's cursor`() {
        val gw = gateway()
        val pg = client(gw)
        val old = runBlocking { pg.fetchSince("small", null) }.cursor
        // `small` keeps 10 records; the retention check runs every 50 ms.
        for (i in 1..40) gw.publish("small", "k", i)
        val page = eventually("the gap", 10_000) { runBlocking { pg.fetchSince("small", old) }.takeIf { it.gap != null } }
        assertEquals("retention", page.gap!!.reason)
        assertNotNull(page.gap!!.earliest)
        assertFalse(page.recovered)
        assertTrue(page.records.isEmpty())
        // What is left, from `earliest`: the last records, up to the head.
        val rest = runBlocking { pg.fetchSince("small", page.gap!!.earliest, FetchSinceOptions(limit = 1000)) }
        assertNull(rest.gap, "${rest.raw}")
        assertTrue(rest.records.isNotEmpty() && rest.records.last().data!!.asInt() == 40, "${rest.raw}")
        assertEquals(page.cursor, rest.cursor, "the gap's cursor is the head")
    }

    @Test
    fun `401 and 403 are FetchSinceException with the status and the gateway's code`() {
        val gw = gateway("gateway-auth.toml") { token(60) }
        val anonymous = client(gw)
        val e401 = assertThrows(FetchSinceException::class.java) { runBlocking { anonymous.fetchSince("prices", null) } }
        assertEquals(401, e401.status)
        assertTrue(e401.unauthorized)
        assertTrue(e401.message!!.contains("401"), e401.message)
        val expired = client(gw, tokenProvider = { jwt(mapOf("sub" to "x", "exp" to System.currentTimeMillis() / 1000 - 60, "pushgate" to mapOf("subscribe" to listOf("*")))) })
        assertEquals(401, assertThrows(FetchSinceException::class.java) { runBlocking { expired.fetchSince("prices", null) } }.status)
        val onlyOne = client(gw, tokenProvider = { jwt(mapOf("sub" to "x", "exp" to System.currentTimeMillis() / 1000 + 60, "pushgate" to mapOf("subscribe" to listOf("one")))) })
        val e403 = assertThrows(FetchSinceException::class.java) { runBlocking { onlyOne.fetchSince("prices", null) } }
        assertEquals(403, e403.status)
        assertTrue(e403.forbidden)
        assertEquals("forbidden", e403.code)
        // The same token reads what it grants; the token goes as Authorization.
        gw.publish("one", "k", 1)
        val page = runBlocking { onlyOne.fetchSince("one", null) }
        assertTrue(page.recovered)
        // Bad input is the gateway's 400 with its code.
        val e400 = assertThrows(FetchSinceException::class.java) { runBlocking { onlyOne.fetchSince("one", "not-a-cursor") } }
        assertEquals(400, e400.status)
        assertEquals("bad_cursor", e400.code)
    }
}
