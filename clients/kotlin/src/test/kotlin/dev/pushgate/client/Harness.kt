// Test harness: the real gateway binary (target/debug/pushgate unless
// PUSHGATE_BIN or -Dpushgate.bin says otherwise) on 127.0.0.1 with a
// temporary data dir, publishing through its HTTP API with the JDK's own
// HttpClient. Shares no code with the gateway, nor with the client under test.
package dev.pushgate.client

import com.fasterxml.jackson.databind.JsonNode
import com.fasterxml.jackson.databind.ObjectMapper
import java.io.File
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.time.Duration
import java.util.Base64
import java.util.Collections
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec

const val HMAC_SECRET = "sdk-tests-only-hmac-secret-0123456789abcdef"

private val json = ObjectMapper()
private val http: HttpClient = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build()

/** The processes this test run started, killed (only these) if the JVM exits first. */
private val started: MutableSet<Process> = Collections.synchronizedSet(HashSet())

private val hook = Runtime.getRuntime().addShutdownHook(Thread { synchronized(started) { started.forEach { it.destroyForcibly() } } })

fun gatewayBin(): File {
    val given = System.getProperty("pushgate.bin")?.takeIf { it.isNotEmpty() } ?: System.getenv("PUSHGATE_BIN")?.takeIf { it.isNotEmpty() }
    return given?.let { File(it) } ?: repoRoot().resolve("target/debug/pushgate")
}

/** An HS256 JWT for [payload]. */
fun jwt(payload: Map<String, Any>, secret: String = HMAC_SECRET): String {
    val b64 = Base64.getUrlEncoder().withoutPadding()
    val part = { v: Any -> b64.encodeToString(json.writeValueAsBytes(v)) }
    val head = "${part(mapOf("alg" to "HS256", "typ" to "JWT"))}.${part(payload)}"
    val mac = Mac.getInstance("HmacSHA256").apply { init(SecretKeySpec(secret.toByteArray(), "HmacSHA256")) }
    return "$head.${b64.encodeToString(mac.doFinal(head.toByteArray()))}"
}

/** A token for every topic, valid [seconds]. */
fun token(seconds: Long): String = jwt(
    mapOf(
        "sub" to "sdk-test",
        "exp" to System.currentTimeMillis() / 1000 + seconds,
        "pushgate" to mapOf("subscribe" to listOf("*"), "publish" to listOf("*")),
    ),
)

/** One gateway process; [restart] keeps its port and data dir. */
class Gateway(config: String = "gateway.toml", private val token: (() -> String)? = null) : AutoCloseable {
    private val config = repoRoot().resolve("clients/testdata/$config")
    private val dataDir: File = Files.createTempDirectory("pushgate-kotlin-").toFile()
    var port = 0
        private set
    private var proc: Process? = null
    val log = StringBuffer()
    val url: String get() = "http://127.0.0.1:$port"

    fun start(): Gateway {
        val bin = gatewayBin()
        check(bin.canExecute()) { "no gateway binary at $bin: cargo build first (or set PUSHGATE_BIN)" }
        val pb = ProcessBuilder(bin.path, "--config", config.path, "--listen", "127.0.0.1:$port", "--data-dir", dataDir.path)
            .redirectOutput(ProcessBuilder.Redirect.DISCARD)
        pb.environment()["RUST_LOG"] = System.getenv("RUST_LOG") ?: "warn,pushgate=info"
        pb.environment()["NO_COLOR"] = "1"
        val p = pb.start()
        started.add(p)
        proc = p
        val listening = CompletableFuture<Int>()
        Thread {
            val re = Regex("listening on https?://127\\.0\\.0\\.1:(\\d+)")
            try {
                p.errorStream.bufferedReader().forEachLine { line ->
                    log.append(line).append('\n')
                    re.find(line)?.let { listening.complete(it.groupValues[1].toInt()) }
                }
            } catch (e: java.io.IOException) {
                // The process was killed: its stderr is closed.
            }
            listening.completeExceptionally(IllegalStateException("gateway exited before listening:\n$log"))
        }.apply { isDaemon = true }.start()
        // A spawned binary may take a while to listen on a busy machine.
        port = listening.get(30, TimeUnit.SECONDS)
        val until = System.currentTimeMillis() + 30_000
        while (true) {
            val status = try {
                http.send(HttpRequest.newBuilder(URI("$url/readyz")).timeout(Duration.ofSeconds(2)).build(), HttpResponse.BodyHandlers.discarding()).statusCode()
            } catch (e: java.io.IOException) {
                0
            }
            if (status == 200) return this
            check(System.currentTimeMillis() < until) { "gateway not ready in 30 s:\n$log" }
            Thread.sleep(50)
        }
    }

    /** SIGKILL: no drain, no close frames; the process is gone at once. */
    fun kill() = signal(force = true)

    /** SIGTERM: the drain (WebSocket close 1012, SSE retry then end). */
    fun stop() = signal(force = false)

    private fun signal(force: Boolean) {
        val p = proc ?: return
        if (force) p.destroyForcibly() else p.destroy()
        if (!p.waitFor(15, TimeUnit.SECONDS)) {
            p.destroyForcibly()
            p.waitFor(5, TimeUnit.SECONDS)
        }
        started.remove(p)
        proc = null
    }

    fun restart(): Gateway = start()

    /** Wipes the log (a new epoch on the next start). */
    fun wipe() {
        dataDir.deleteRecursively()
        dataDir.mkdirs()
    }

    /** Publishes one record; the gateway's answer (`partition`, `offset`, `cursor`). */
    fun publish(topic: String, key: String?, data: Any?): JsonNode =
        json.readTree(post(topic, mapOf("key" to key, "data" to data), Duration.ofSeconds(10)))

    /** Publishes `{"records": records}` in one request (a `data` of null deletes its key). */
    fun publishAll(topic: String, records: List<Map<String, Any?>>) {
        post(topic, mapOf("records" to records), Duration.ofSeconds(30))
    }

    private fun post(topic: String, body: Any, timeout: Duration): String {
        val req = HttpRequest.newBuilder(URI("$url/topics/$topic"))
            .timeout(timeout)
            .header("Content-Type", "application/json")
            .POST(HttpRequest.BodyPublishers.ofString(json.writeValueAsString(body)))
        token?.let { req.header("Authorization", "Bearer ${it()}") }
        val res = http.send(req.build(), HttpResponse.BodyHandlers.ofString())
        check(res.statusCode() == 200) { "publish $topic: ${res.statusCode()} ${res.body()}" }
        return res.body()
    }

    /** The gateway's `/metrics` text. */
    fun metrics(): String {
        val req = HttpRequest.newBuilder(URI("$url/metrics")).timeout(Duration.ofSeconds(10)).GET().build()
        return http.send(req, HttpResponse.BodyHandlers.ofString()).body()
    }

    override fun close() {
        kill()
        dataDir.deleteRecursively()
    }
}
