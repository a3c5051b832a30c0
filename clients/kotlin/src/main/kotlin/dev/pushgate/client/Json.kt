// The one Jackson mapper of the client.
package dev.pushgate.client

import com.fasterxml.jackson.databind.ObjectMapper

internal object Json {
    val mapper: ObjectMapper = ObjectMapper()
}
