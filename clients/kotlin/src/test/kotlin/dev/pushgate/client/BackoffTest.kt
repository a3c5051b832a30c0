// The reconnect timing, as a pure function of the gateway's hint.
package dev.pushgate.client

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.random.Random

class BackoffTest {
    private val random = Random(7)

    @Test
    fun `full jitter stays below min(cap, base * 2^attempt) and spreads over it`() {
        for (attempt in 0..40) {
            val ceiling = minOf(15_000.0, 500.0 * Math.pow(2.0, minOf(attempt, 30).toDouble()))
            val delays = (0 until 200).map { Backoff.fullJitter(attempt, 500, 15_000, random) }
            assertTrue(delays.all { it >= 0 && it < ceiling }, "attempt $attempt: $delays")
            assertTrue(delays.maxOrNull()!! > ceiling / 2, "attempt $attempt: jitter uses the range")
        }
    }

    @Test
    fun `the gateway's hints`() {
        repeat(100) {
            val ra = Backoff.reconnectDelay(DisconnectHint(status = 503, retryAfter = 2.0), 0, 500, 15_000, random)
            assertTrue(ra in 2000 until 2500, "Retry-After never undercut: $ra")
            val drain = Backoff.reconnectDelay(DisconnectHint(code = 1012), 9, 500, 15_000, random)
            assertTrue(drain < 500, "a drain comes back at once: $drain")
            assertTrue(Backoff.reconnectDelay(DisconnectHint(code = 4010), 9, 500, 15_000, random) < 500)
            assertEquals(15_000, Backoff.reconnectDelay(DisconnectHint(code = 1002), 0, 500, 15_000, random))
            val limited = Backoff.reconnectDelay(DisconnectHint(status = 429), 0, 500, 15_000, random)
            assertTrue(limited in 7500..15_000, "429 waits half the cap or more: $limited")
        }
    }

    @Test
    fun `Retry-After in seconds or as an HTTP date`() {
        assertEquals(3.0, Backoff.parseRetryAfter("3"))
        assertEquals(0.0, Backoff.parseRetryAfter("-4"))
        assertNull(Backoff.parseRetryAfter(null))
        assertNull(Backoff.parseRetryAfter("soon"))
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480 s after the epoch.
        assertEquals(20.0, Backoff.parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", 1445412460_000L))
    }
}
