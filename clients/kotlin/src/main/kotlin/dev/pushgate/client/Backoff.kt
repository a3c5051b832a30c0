// Reconnect timing: exponential backoff with full jitter, and the gateway's
// hints (close codes, HTTP status, Retry-After).
package dev.pushgate.client

import java.text.ParseException
import java.text.SimpleDateFormat
import java.util.Locale
import java.util.TimeZone
import kotlin.math.min
import kotlin.random.Random

/** What a lost connection tells about when to come back. */
data class DisconnectHint(
    val code: Int? = null,
    val status: Int? = null,
    /** Seconds, from `Retry-After`. */
    val retryAfter: Double? = null,
)

object Backoff {
    /** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)). */
    @JvmStatic
    @JvmOverloads
    fun fullJitter(attempt: Int, baseMs: Long, capMs: Long, random: Random = Random.Default): Long {
        val ceiling = min(capMs.toDouble(), baseMs * Math.pow(2.0, min(attempt, 30).toDouble()))
        return (random.nextDouble() * ceiling).toLong()
    }

    /**
     * The delay before the next attempt after a lost connection. `attempt`
     * counts failures in a row. `Retry-After` is never undercut (jitter is
     * added on top, so a crowd of clients spreads out); a 429 waits half the
     * cap or more; a drain (1012) or an expired token (4010) comes back at
     * once (within the base); a protocol violation (1002, 1007, 1009) waits
     * the cap, so a bug can never spin.
     */
    @JvmStatic
    @JvmOverloads
    fun reconnectDelay(hint: DisconnectHint, attempt: Int, baseMs: Long, capMs: Long, random: Random = Random.Default): Long {
        val retryAfter = hint.retryAfter
        if (retryAfter != null && retryAfter >= 0) return (retryAfter * 1000).toLong() + (random.nextDouble() * baseMs).toLong()
        if (hint.status == 429) return capMs / 2 + (random.nextDouble() * (capMs / 2)).toLong()
        return when (hint.code) {
            1012, 4010 -> (random.nextDouble() * baseMs).toLong()
            1002, 1007, 1009 -> capMs
            else -> fullJitter(attempt, baseMs, capMs, random)
        }
    }

    /** A `Retry-After` header in seconds (delta-seconds or an HTTP date); null when absent or unreadable. */
    @JvmStatic
    @JvmOverloads
    fun parseRetryAfter(value: String?, nowMs: Long = System.currentTimeMillis()): Double? {
        val v = value?.trim()
        if (v.isNullOrEmpty()) return null
        v.toDoubleOrNull()?.let { return if (it.isFinite()) maxOf(0.0, it) else null }
        val format = SimpleDateFormat("EEE, dd MMM yyyy HH:mm:ss zzz", Locale.US)
        format.timeZone = TimeZone.getTimeZone("GMT")
        return try {
            maxOf(0.0, (format.parse(v)!!.time - nowMs) / 1000.0)
        } catch (e: ParseException) {
            null
        }
    }
}
