#!/usr/bin/env node
// Subscribe to eventsd and print each event as one JSON line.
//
// A starting point for a Node service that consumes eventsd's SubscribeEvents stream:
//
//   node subscribe.js --addr 127.0.0.1:50051 --types 'charge.*' --checkpoint charge.ckpt
//
// * Events go to stdout, one JSON object a line:
//   {"sequence":12,"id":"...","type":"...","created":"<RFC 3339>","livemode":true,"data":{...}}
//   Notes (caught up, reconnecting, ...) go to stderr.
// * Where to start: --checkpoint FILE if FILE exists (resume after the sequence in it),
//   else --after SEQ, else --from-beginning, else "from now" (only new events).
// * With --checkpoint FILE the last delivered sequence (or a heartbeat's / caught-up
//   sequence, which the server says is safe to resume after) is written to FILE after each
//   item, atomically (write a temporary file, fsync, rename). The event is printed first
//   and the checkpoint written after it, so if this process dies between the two, the next
//   run prints that one event again: consumers should be idempotent by `id`. Within one run
//   no event is ever printed twice.
// * When the stream ends with UNAVAILABLE (server restart, network trouble) the subscriber
//   reconnects with exponential backoff and resumes with after_sequence set to the last
//   sequence it has seen, so nothing is lost or repeated.
//
// Same flags and output as ../python/subscribe.py.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

// Backoff between reconnect attempts: 100 ms doubling up to 10 s, with jitter; reset once
// a connection delivers something.
const BACKOFF_INITIAL_MS = 100;
const BACKOFF_MAX_MS = 10000;

// Channel options. Keepalive pings notice a connection that died silently (no FIN/RST, e.g.
// a network partition) so the stream fails with UNAVAILABLE and is resumed instead of
// hanging forever. The reconnect backoff caps gRPC's own reconnection delay (120 s by
// default) so a restarted server is picked up within about BACKOFF_MAX_MS.
const CHANNEL_OPTIONS = {
  'grpc.keepalive_time_ms': 30000,
  'grpc.keepalive_timeout_ms': 10000,
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 10000,
};

function note(msg) {
  process.stderr.write(`subscribe.js: ${msg}\n`);
}

function fail(msg) {
  note(msg);
  process.exit(2);
}

// --- command line ------------------------------------------------------------------

const USAGE = `usage: subscribe.js [--addr HOST:PORT] [--types T1,T2] [--livemode true|false]
                    [--from-beginning | --after SEQ] [--checkpoint FILE] [--max-events N]`;

function parseArgs(argv) {
  const args = {
    addr: '127.0.0.1:50051',
    types: [],
    livemode: null,
    fromBeginning: false,
    after: null, // a decimal string: uint64 may exceed Number.MAX_SAFE_INTEGER
    checkpoint: null,
    maxEvents: null,
  };
  for (let i = 0; i < argv.length; i++) {
    let flag = argv[i];
    let value;
    const eq = flag.indexOf('=');
    if (flag.startsWith('--') && eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    }
    const takeValue = () => {
      if (value !== undefined) return value;
      if (i + 1 >= argv.length) fail(`${flag} needs a value\n${USAGE}`);
      return argv[++i];
    };
    switch (flag) {
      case '--addr':
        args.addr = takeValue();
        break;
      case '--types':
        args.types = takeValue().split(',').map((t) => t.trim()).filter((t) => t !== '');
        break;
      case '--livemode': {
        const v = takeValue().trim().toLowerCase();
        if (['true', '1', 'yes'].includes(v)) args.livemode = true;
        else if (['false', '0', 'no'].includes(v)) args.livemode = false;
        else fail(`--livemode: expected true or false, got ${JSON.stringify(v)}`);
        break;
      }
      case '--from-beginning':
        if (value !== undefined) fail('--from-beginning takes no value');
        args.fromBeginning = true;
        break;
      case '--after': {
        const v = takeValue().trim();
        if (!/^\d+$/.test(v)) fail(`--after: expected a sequence number, got ${JSON.stringify(v)}`);
        args.after = BigInt(v).toString();
        break;
      }
      case '--checkpoint':
        args.checkpoint = takeValue();
        break;
      case '--max-events': {
        const v = takeValue().trim();
        if (!/^\d+$/.test(v) || Number(v) < 1) fail(`--max-events: expected N >= 1, got ${JSON.stringify(v)}`);
        args.maxEvents = Number(v);
        break;
      }
      case '-h':
      case '--help':
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
        break;
      default:
        fail(`unknown argument ${JSON.stringify(argv[i])}\n${USAGE}`);
    }
  }
  if (args.fromBeginning && args.after !== null) fail('--from-beginning and --after are mutually exclusive');
  return args;
}

// --- checkpoint --------------------------------------------------------------------

// Sequences are handled as BigInt: with `longs: String` uint64 arrive as decimal strings,
// and a sequence may in principle exceed 2^53.
function readCheckpoint(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (err) {
    if (err.code === 'ENOENT') return null;
    throw err;
  }
  if (!/^\d+$/.test(text)) fail(`checkpoint ${file} holds ${JSON.stringify(text)}, not a sequence number`);
  return BigInt(text);
}

let tmpCounter = 0;
function writeCheckpoint(file, seq) {
  const dir = path.dirname(path.resolve(file));
  const tmp = path.join(dir, `.ckpt-${process.pid}-${tmpCounter++}`);
  const fd = fs.openSync(tmp, 'w', 0o644);
  try {
    fs.writeSync(fd, `${seq}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  try {
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  // Make the rename itself durable.
  const dfd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}

// --- event -> JSON -----------------------------------------------------------------

// proto-loader hands google.protobuf.Struct over as the raw message:
//   { fields: { key: { kind: 'numberValue', numberValue: 42 }, ... } }
// (with `oneofs: true` each Value names its set member in `kind`). Convert it by hand.
function valueToJs(v) {
  if (v == null) return null;
  switch (v.kind) {
    case 'numberValue': {
      const n = v.numberValue;
      // Non-finite doubles are spelled as proto3 JSON spells them, as in subscribe.py.
      if (Number.isNaN(n)) return 'NaN';
      if (n === Infinity) return 'Infinity';
      if (n === -Infinity) return '-Infinity';
      // Struct numbers are doubles. JSON.stringify writes a whole double as an integer
      // (42, not 42.0), which is what subscribe.py prints for whole numbers up to 2^53.
      return n;
    }
    case 'stringValue':
      return v.stringValue;
    case 'boolValue':
      return v.boolValue;
    case 'structValue':
      return structToJs(v.structValue);
    case 'listValue':
      return ((v.listValue && v.listValue.values) || []).map(valueToJs);
    default: // 'nullValue' or unset
      return null;
  }
}

function structToJs(s) {
  const out = {};
  const fields = (s && s.fields) || {};
  for (const key of Object.keys(fields)) out[key] = valueToJs(fields[key]);
  return out;
}

// google.protobuf.Timestamp ({ seconds: '<int64 as string>', nanos }) -> RFC 3339 in UTC
// with 0, 3, 6 or 9 fractional digits, the proto3 JSON form (the same as Python's
// Timestamp.ToJsonString()).
function timestampToRfc3339(ts) {
  if (!ts) return null;
  const seconds = Number(ts.seconds || 0); // years 0001-9999 fit a double exactly
  const nanos = ts.nanos || 0;
  const base = new Date(seconds * 1000).toISOString().slice(0, 19); // YYYY-MM-DDTHH:MM:SS
  let frac = '';
  if (nanos !== 0) {
    const digits = String(nanos).padStart(9, '0');
    if (nanos % 1000000 === 0) frac = `.${digits.slice(0, 3)}`;
    else if (nanos % 1000 === 0) frac = `.${digits.slice(0, 6)}`;
    else frac = `.${digits}`;
  }
  return `${base}${frac}Z`;
}

function eventToJson(ev) {
  // The sequence is printed as a JSON number, like subscribe.py; it is exact up to 2^53.
  const seq = BigInt(ev.sequence);
  const seqOut = seq <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seq) : seq.toString();
  const obj = {
    sequence: seqOut,
    id: ev.id,
    type: ev.type,
    created: timestampToRfc3339(ev.created),
    livemode: ev.livemode,
    data: structToJs(ev.data),
  };
  const text = JSON.stringify(obj);
  // A sequence above 2^53 was kept as a string above; print it as a bare number.
  return typeof seqOut === 'string' ? text.replace(`"sequence":"${seqOut}"`, `"sequence":${seqOut}`) : text;
}

// --- subscription loop -------------------------------------------------------------

function loadService() {
  const def = protoLoader.loadSync('events/v1/events.proto', {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    // google/protobuf/{struct,timestamp}.proto come bundled with proto-loader (protobufjs).
    includeDirs: [PROTO_ROOT],
  });
  return grpc.loadPackageDefinition(def).events.v1.EventService;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const EventService = loadService();
  const client = new EventService(args.addr, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);

  let lastSeq = null; // BigInt: every matching event up to it has been handled
  if (args.checkpoint) {
    lastSeq = readCheckpoint(args.checkpoint);
    if (lastSeq !== null) note(`resuming after sequence ${lastSeq} from checkpoint ${args.checkpoint}`);
  }
  if (lastSeq === null && args.after !== null) lastSeq = BigInt(args.after);

  let printed = 0;
  let backoff = BACKOFF_INITIAL_MS;
  let firstAttempt = true; // no stream has delivered anything yet
  let stopping = false;
  let call = null;
  let retryTimer = null;

  function advance(seq) {
    if (lastSeq !== null && seq < lastSeq) {
      note(`server sent sequence ${seq} below the last one seen (${lastSeq}); ignored`);
      return;
    }
    lastSeq = seq;
    if (args.checkpoint) writeCheckpoint(args.checkpoint, seq);
  }

  function stop(code) {
    if (stopping) return;
    stopping = true;
    process.exitCode = code;
    if (retryTimer) clearTimeout(retryTimer);
    if (call) call.cancel();
    client.close();
    // Let stdout drain; the process ends once nothing is pending.
  }

  function buildRequest() {
    const req = { types: args.types };
    if (args.livemode !== null) req.livemode = args.livemode;
    if (lastSeq !== null) req.after_sequence = lastSeq.toString();
    else if (args.fromBeginning) req.from_beginning = true;
    else if (!firstAttempt) {
      // Started "from now", and a stream that had delivered something dropped before
      // telling us any sequence (the server sends caught_up first, so this is rare):
      // reconnecting from now may miss events committed while disconnected.
      note('resuming from now: events committed while disconnected may be missed');
    }
    return req;
  }

  function reconnectLater() {
    const delay = backoff * (0.5 + Math.random() / 2);
    const where = lastSeq !== null ? `after sequence ${lastSeq}` : 'from the requested start';
    note(`reconnecting in ${(delay / 1000).toFixed(2)}s, resuming ${where}`);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    retryTimer = setTimeout(() => {
      retryTimer = null;
      connect();
    }, delay);
  }

  function connect() {
    if (stopping) return;
    const thisCall = client.SubscribeEvents(buildRequest());
    call = thisCall;
    let finished = false;

    thisCall.on('data', (resp) => {
      if (stopping || finished) return;
      backoff = BACKOFF_INITIAL_MS; // the connection works again
      firstAttempt = false;
      try {
        switch (resp.item) {
          case 'event': {
            const ev = resp.event;
            const seq = BigInt(ev.sequence);
            if (lastSeq !== null && seq <= lastSeq) {
              // Never print an event twice (e.g. one the server repeats).
              note(`skipped sequence ${seq}: already delivered`);
              return;
            }
            process.stdout.write(`${eventToJson(ev)}\n`);
            advance(seq);
            printed++;
            if (args.maxEvents !== null && printed >= args.maxEvents) stop(0);
            break;
          }
          case 'caught_up':
            note(`caught up at sequence ${resp.caught_up.sequence}`);
            advance(BigInt(resp.caught_up.sequence));
            break;
          case 'heartbeat':
            advance(BigInt(resp.heartbeat.sequence));
            break;
          default:
            break;
        }
      } catch (err) {
        note(`cannot handle item: ${err.stack || err}`);
        stop(1);
      }
    });

    // 'status' comes once per call, after the last 'data', whether it ended OK or not.
    thisCall.on('status', (status) => {
      if (finished) return;
      finished = true;
      if (stopping) return;
      if (status.code === grpc.status.OK) {
        // The server ended the stream with OK; it should not, but resume anyway.
        note('stream ended by the server');
      } else if (status.code === grpc.status.UNAVAILABLE) {
        note(`stream unavailable: ${String(status.details).trim()}`);
      } else {
        const name = Object.keys(grpc.status).find((k) => grpc.status[k] === status.code) || status.code;
        note(`stream failed: ${name}: ${status.details}`);
        stop(1);
        return;
      }
      reconnectLater();
    });
    // Errors are reported through 'status' as well; without a listener an 'error' would throw.
    thisCall.on('error', () => {});
  }

  // Exit quietly on Ctrl-C and SIGTERM.
  process.on('SIGINT', () => stop(130));
  process.on('SIGTERM', () => stop(143));
  // stdout closed (e.g. piped into `head`): nothing more to do.
  process.stdout.on('error', (err) => {
    if (err.code === 'EPIPE') stop(0);
    else throw err;
  });

  connect();
}

main();
