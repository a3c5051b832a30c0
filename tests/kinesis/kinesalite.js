// Starts kinesalite (a Kinesis API implementation) in memory on 127.0.0.1 only,
// for the Kinesis source tests. Its cli.js listens on every interface; this does not.
//
//   node kinesalite.js [port]      (port 0 or none: any free port)
//
// Prints `listening <port>` once it accepts connections. Reads commands on stdin:
//   advance <ms>   moves kinesalite's clock forward (retention and iterator expiry
//                  are computed from it), so a test can age records past retention
// and exits when stdin closes, so it never outlives the test that started it.
'use strict'
const kinesalite = require('kinesalite')

let offset = 0
const realNow = Date.now
Date.now = () => realNow() + offset

const port = Number(process.argv[2] || 0)
const server = kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100 })
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`)
})

let buffered = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk) => {
  buffered += chunk
  let nl
  while ((nl = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, nl).trim()
    buffered = buffered.slice(nl + 1)
    const [cmd, arg] = line.split(/\s+/)
    if (cmd === 'advance') {
      offset += Number(arg)
      process.stdout.write(`advanced ${offset}\n`)
    }
  }
})
process.stdin.on('end', () => process.exit(0))
