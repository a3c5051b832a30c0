// Every vector of api/conformance replayed through the client: a fake
// WebSocket factory hands the real client (the same code that runs over
// OkHttp) the vector's server messages one by one, and after each the
// client's state (records delivered, data after patches, cursor, live,
// reset, resumed, values, errors, what it sent back) must be the vector's.
package dev.pushgate.client

import com.fasterxml.jackson.databind.JsonNode
import com.fasterxml.jackson.databind.ObjectMapper
import com.fasterxml.jackson.databind.node.JsonNodeFactory
import com.fasterxml.jackson.databind.node.ObjectNode
import okhttp3.Protocol
import okhttp3.Request
import okhttp3.Response
import okhttp3.WebSocket
import okhttp3.WebSocketListener
import okio.ByteString
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestFactory
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.fail
import java.io.File
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit

private val mapper = ObjectMapper()

/** A WebSocket that records what the client sends; the test plays the gateway. */
class FakeSocket(private val request: Request, val listener: WebSocketListener) : WebSocket {
    val sent = CopyOnWriteArrayList<ObjectNode>()
    override fun send(text: String): Boolean = sent.add(mapper.readTree(text) as ObjectNode)
    override fun send(bytes: ByteString): Boolean = false
    override fun close(code: Int, reason: String?): Boolean = true
    override fun cancel() {}
    override fun queueSize(): Long = 0
    override fun request(): Request = request

    fun open() = listener.onOpen(this, Response.Builder().request(request).protocol(Protocol.HTTP_1_1).code(101).message("Switching Protocols").build())
    fun deliver(msg: JsonNode) = listener.onMessage(this, mapper.writeValueAsString(msg))
}

class FakeFactory : WebSocket.Factory {
    val sockets = CopyOnWriteArrayList<FakeSocket>()
    override fun newWebSocket(request: Request, listener: WebSocketListener): WebSocket = FakeSocket(request, listener).also { sockets.add(it) }
}

/** JSON equality with numbers compared by value (1 == 1.0, int == long). */
fun jsonEquals(a: JsonNode?, b: JsonNode?): Boolean {
    if (a == null || b == null) return a == b
    return a.equals({ x, y -> if (x.isNumber && y.isNumber) x.decimalValue().compareTo(y.decimalValue()) else if (x == y) 0 else 1 }, b)
}

fun assertJson(expected: JsonNode?, actual: JsonNode?, what: String) {
    assertTrue(jsonEquals(expected, actual), "$what: expected $expected, got $actual")
}

fun <T> eventually(what: String, timeoutMs: Long = 2000, probe: () -> T?): T {
    val until = System.currentTimeMillis() + timeoutMs
    while (true) {
        probe()?.let { return it }
        if (System.currentTimeMillis() > until) fail("timed out waiting for $what")
        Thread.sleep(10)
    }
}

class ConformanceTest {
    private val vectorsDir: File = repoRoot().resolve("api/conformance")
    private val files = vectorsDir.listFiles { f -> f.name.endsWith(".json") }!!.sortedBy { it.name }

    // Members this runner checks: a vector using any other fails here rather
    // than passing unchecked.
    private val vectorMembers = setOf("name", "description", "subscribe", "gateway", "gateway_why_not", "steps")
    private val stepMembers = setOf("server", "expect", "invalid_on_purpose")
    private val expectMembers = setOf("cursor", "live", "delivered", "reset", "resumed", "values", "error", "resubscribe", "sends")
    private val subscribeMembers = setOf("type", "id", "topic", "keys", "prefix", "cursor", "snapshot", "filter", "fields", "delta", "max_rate", "resume")
    private val deliveredMembers = setOf("key", "offset", "data", "op", "snapshot", "replayed")

    @Test
    fun `there are conformance vectors`() {
        assertTrue(files.size >= 14, "${files.size} vectors in $vectorsDir")
    }

    @TestFactory
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    fun vectors(): List<DynamicTest> = files.map { file -> DynamicTest.dynamicTest(file.name) { play(file) } }

    private fun options(sub: JsonNode): SubscribeOptions = SubscribeOptions(
        keys = sub.get("keys")?.map { it.asText() },
        prefix = sub.text("prefix"),
        snapshot = sub.get("snapshot")?.asBoolean() ?: true,
        cursor = sub.text("cursor"),
        filter = sub.get("filter"),
        fields = sub.get("fields")?.map { it.asText() },
        delta = sub.text("delta"),
        maxRate = sub.get("max_rate")?.asDouble(),
        resume = sub.text("resume"),
    )

    /** The vector's subscribe, less its id, must be what the client sent (plus the default snapshot). */
    private fun checkRequest(vectorReq: JsonNode, sent: ObjectNode, cursor: JsonNode?, where: String) {
        val want = vectorReq.deepCopy<JsonNode>() as ObjectNode
        want.remove("id")
        if (!want.has("snapshot")) want.put("snapshot", true)
        if (cursor != null) {
            if (cursor.isNull) want.remove("cursor") else want.set<JsonNode>("cursor", cursor)
        }
        val got = sent.deepCopy()
        got.remove("id")
        assertJson(want, got, "$where: the subscribe request")
    }

    private fun normalized(r: PushRecord): ObjectNode {
        val o = mapper.createObjectNode()
        o.set<JsonNode>("key", r.raw.get("key") ?: JsonNodeFactory.instance.nullNode())
        o.set<JsonNode>("offset", r.raw.get("offset"))
        r.data?.let { o.set<JsonNode>("data", it) }
        r.op?.let { o.put("op", it) }
        if (r.snapshot) o.put("snapshot", true)
        if (r.replayed) o.put("replayed", true)
        return o
    }

    private fun play(file: File) {
        val vector = mapper.readTree(file)
        vector.fieldNames().forEach { require(it in vectorMembers) { "${file.name}: unknown vector member `$it`: teach this runner" } }
        val vsub = vector.get("subscribe")
        vsub.fieldNames().forEach { require(it in subscribeMembers) { "${file.name}: unknown subscribe option `$it`: teach this runner" } }
        val factory = FakeFactory()
        val client = Pushgate(
            PushgateOptions(
                url = "http://gateway.test",
                webSocketFactory = factory,
                tokenProvider = { "token-from-app" },
                minDelayMs = 20,
                maxDelayMs = 100,
            ),
        )
        try {
            val sub = client.subscribe(vsub.text("topic")!!, options(vsub))
            val ws = eventually("the socket") { factory.sockets.firstOrNull() }
            assertEquals("/ws", ws.request().url.encodedPath)
            assertEquals("token-from-app", ws.request().url.queryParameter("access_token"))
            ws.open()
            val first = eventually("the subscribe request") { ws.sent.firstOrNull() }
            checkRequest(vsub, first, null, file.name)
            var sentSeen = 1
            var currentId: JsonNode = first.get("id")
            for ((i, step) in vector.get("steps").withIndex()) {
                step.fieldNames().forEach { require(it in stepMembers) { "${file.name} step $i: unknown step member `$it`" } }
                val server = step.get("server") as ObjectNode
                val exp = step.get("expect")
                exp.fieldNames().forEach { require(it in expectMembers) { "${file.name} step $i: unknown expectation `$it`: teach this runner" } }
                val where = "${file.name} step $i (${server.text("type")})"
                val msg = server.deepCopy()
                if (msg.has("id") && jsonEquals(msg.get("id"), vsub.get("id"))) msg.set<JsonNode>("id", currentId)
                ws.deliver(msg)

                exp.get("resubscribe")?.let { rs ->
                    // A new subscribe (after a backoff when `delayed`); later steps answer it.
                    val from = sentSeen
                    val req = eventually("$where: a new subscribe") { ws.sent.drop(from).firstOrNull { it.text("type") == "subscribe" } }
                    sentSeen = ws.sent.size
                    checkRequest(vsub, req, rs.get("cursor") ?: JsonNodeFactory.instance.nullNode(), where)
                    assertNotEquals(currentId, req.get("id"), "$where: a new request id")
                    currentId = req.get("id")
                }
                exp.get("sends")?.let { want ->
                    val from = sentSeen
                    eventually("$where: sends $want") {
                        ws.sent.drop(from).firstOrNull { m -> want.fields().asSequence().all { (k, v) -> jsonEquals(v, m.get(k)) } }
                    }
                    sentSeen = ws.sent.size
                }

                // Everything this step produced is in the channel already: onMessage ran on this thread.
                val delivered = mapper.createArrayNode()
                val resets = mapper.createArrayNode()
                val resumed = mapper.createArrayNode()
                val errors = mapper.createArrayNode()
                while (true) {
                    val ev = sub.channel.tryReceive().getOrNull() ?: break
                    when (ev) {
                        is PushRecord -> {
                            delivered.add(normalized(ev))
                            assertEquals(sub.cursor, ev.resumeCursor, "$where: the record's resumeCursor is the subscription's cursor")
                        }
                        is Reset -> resets.add(mapper.createObjectNode().put("reason", ev.reason).put("earliest", ev.earliest))
                        is Resumed -> resumed.add(mapper.createObjectNode().put("missed", ev.missed))
                        is PushError -> errors.add(ev.code)
                        else -> {}
                    }
                }
                exp.get("delivered")?.forEach { d -> d.fieldNames().forEach { require(it in deliveredMembers) { "$where: unknown delivered member `$it`" } } }
                assertJson(exp.get("delivered") ?: mapper.createArrayNode(), delivered, "$where: records delivered")
                assertJson(exp.get("reset")?.let { mapper.createArrayNode().add(it) } ?: mapper.createArrayNode(), resets, "$where: reset")
                assertJson(exp.get("resumed")?.let { mapper.createArrayNode().add(it) } ?: mapper.createArrayNode(), resumed, "$where: resumed")
                assertJson(exp.get("error")?.let { mapper.createArrayNode().add(it) } ?: mapper.createArrayNode(), errors, "$where: errors")
                assertEquals(exp.text("cursor"), sub.cursor, "$where: cursor")
                assertEquals(exp.get("live").asBoolean(), sub.live, "$where: live")
                exp.get("values")?.let { assertJson(it, mapper.valueToTree(sub.values), "$where: values") }
            }
        } finally {
            client.close()
        }
    }
}

/** The repository root: the nearest parent holding api/conformance. */
fun repoRoot(): File {
    var dir: File? = File(System.getProperty("user.dir")).absoluteFile
    while (dir != null) {
        if (dir.resolve("api/conformance").isDirectory) return dir
        dir = dir.parentFile
    }
    error("no api/conformance above ${System.getProperty("user.dir")}")
}
