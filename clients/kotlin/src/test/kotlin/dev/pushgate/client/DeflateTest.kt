// permessage-deflate with OkHttp (which offers it by itself): against a
// gateway with websocket.compression = "shared" the 101 answer carries the
// extension without context takeover, and compressed records arrive intact.
package dev.pushgate.client

import com.fasterxml.jackson.databind.ObjectMapper
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.Response
import okhttp3.WebSocket
import okhttp3.WebSocketListener
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import java.util.concurrent.CompletableFuture
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

class DeflateTest {
    private val json = ObjectMapper()

    @Test
    @Timeout(60)
    fun `OkHttp negotiates permessage-deflate and records arrive intact`() {
        Gateway("gateway-deflate.toml").start().use { gw ->
            val client = OkHttpClient.Builder().readTimeout(10, TimeUnit.SECONDS).build()
            val opened = CompletableFuture<Response>()
            val messages = LinkedBlockingQueue<String>()
            val ws = client.newWebSocket(
                Request.Builder().url("ws://127.0.0.1:${gw.port}/ws").build(),
                object : WebSocketListener() {
                    override fun onOpen(webSocket: WebSocket, response: Response) { opened.complete(response) }
                    override fun onMessage(webSocket: WebSocket, text: String) { messages.add(text) }
                    override fun onFailure(webSocket: WebSocket, t: Throwable, response: Response?) { opened.completeExceptionally(t) }
                },
            )
            try {
                val response = opened.get(10, TimeUnit.SECONDS)
                assertEquals(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                    response.header("Sec-WebSocket-Extensions"),
                )
                // Long and repetitive: OkHttp sends it compressed (it compresses messages of 1 KiB and more).
                val keys = listOf("row") + (0 until 200).map { "padding-key-$it" }
                ws.send(json.writeValueAsString(mapOf("type" to "subscribe", "id" to 1, "topic" to "prices", "snapshot" to false, "keys" to keys)))
                val subscribed = json.readTree(messages.poll(10, TimeUnit.SECONDS))
                assertEquals("subscribed", subscribed["type"].asText(), subscribed.toString())
                val rows = (0 until 5).map { i -> (0 until 20).associate { f -> "field_$f" to "value $f of row $i" } }
                rows.forEach { gw.publish("prices", "row", it) }
                val got = mutableListOf<Map<*, *>>()
                while (got.size < rows.size) {
                    val text = messages.poll(10, TimeUnit.SECONDS) ?: break
                    val msg = json.readTree(text)
                    if (msg.has("data")) got.add(json.treeToValue(msg["data"], Map::class.java))
                }
                assertEquals(rows, got)
            } finally {
                ws.close(1000, null)
                client.dispatcher.executorService.shutdown()
            }
        }
    }
}
