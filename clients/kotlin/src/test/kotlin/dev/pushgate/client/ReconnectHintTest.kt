// The client's answer to the gateway's close codes, on a fake socket (the
// real-gateway drain is in GatewayTest): 1012 (drain) and 4010 (token
// expired) come back within minDelay whatever the failures before; other
// losses back off; every subscription is resumed from its cursor on the new
// socket.
package dev.pushgate.client

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import java.util.concurrent.TimeUnit

@Timeout(value = 60, unit = TimeUnit.SECONDS)
class ReconnectHintTest {
    private val mapper = com.fasterxml.jackson.databind.ObjectMapper()

    @Test
    fun `1012 and 4010 reconnect at once and resume from the cursor, a refusal backs off`() {
        val factory = FakeFactory()
        val pg = Pushgate(PushgateOptions(url = "http://gateway.test", webSocketFactory = factory, minDelayMs = 300, maxDelayMs = 60_000))
        try {
            val sub = pg.subscribe("one")
            val events = java.util.concurrent.CopyOnWriteArrayList<ClientEvent>()
            Thread { kotlinx.coroutines.runBlocking { pg.clientEvents.collect { events.add(it) } } }.apply { isDaemon = true; start() }
            Thread.sleep(100)
            var socket = eventually("a socket") { factory.sockets.getOrNull(0) }
            socket.open()
            val req = eventually("subscribe") { socket.sent.firstOrNull() }
            socket.deliver(mapper.readTree("""{"type":"subscribed","id":"${req.get("id").asText()}","topic":"one","cursor":"C0","recovered":true,"snapshot":0}"""))
            socket.deliver(mapper.readTree("""{"type":"record","topic":"one","key":"k","partition":0,"offset":0,"cursor":"C1","timestamp":1,"data":1}"""))
            assertEquals("C1", sub.cursor)
            // Three failures first, so a plain backoff would be long.
            for (n in 1..3) {
                socket.listener.onFailure(socket, java.io.IOException("refused"), null)
                socket = eventually("socket ${n + 1}", 30_000) { factory.sockets.getOrNull(n) }
            }
            socket.open()
            val resumed = eventually("the resume") { socket.sent.firstOrNull() }
            assertEquals("C1", resumed.text("cursor"), "resumes from the cursor")
            for ((i, code) in listOf(1012, 4010).withIndex()) {
                socket.listener.onClosing(socket, code, "bye")
                val d = eventually("the disconnect $code") { events.filterIsInstance<ClientEvent.Disconnect>().lastOrNull()?.takeIf { it.code == code } }
                assertTrue(d.delayMs < 300, "$code: within minDelay (${d.delayMs} ms)")
                socket = eventually("the socket after $code", 2000) { factory.sockets.getOrNull(4 + i) }
                socket.open()
                assertEquals("C1", eventually("resubscribe") { socket.sent.firstOrNull() }.text("cursor"))
            }
            val plain = events.filterIsInstance<ClientEvent.Disconnect>().filter { it.code == null }
            assertEquals(3, plain.size)
            assertTrue(plain.all { it.delayMs < 60_000 })
        } finally {
            pg.close()
        }
    }
}
