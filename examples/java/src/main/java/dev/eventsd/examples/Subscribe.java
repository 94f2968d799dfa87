package dev.eventsd.examples;

import dev.eventsd.events.v1.Event;
import dev.eventsd.events.v1.EventServiceGrpc;
import dev.eventsd.events.v1.SubscribeEventsRequest;
import dev.eventsd.events.v1.SubscribeEventsResponse;
import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;

/**
 * Subscribes to eventsd and prints each event as one JSON line: a starting point for a Java
 * service that consumes eventsd's SubscribeEvents stream.
 *
 * <pre>java ... dev.eventsd.examples.Subscribe --addr 127.0.0.1:50051 --types 'charge.*' --checkpoint charge.ckpt</pre>
 *
 * The same flags and output as ../python/subscribe.py and ../node/subscribe.js:
 *
 * <ul>
 *   <li>Events go to stdout, one JSON object a line; notes (caught up, reconnecting, ...) go to
 *       stderr.
 *   <li>Where to start: --checkpoint FILE if FILE exists (resume after the sequence in it), else
 *       --after SEQ, else --from-beginning, else "from now" (only new events).
 *   <li>With --checkpoint FILE the last delivered sequence (or a heartbeat's / caught-up
 *       sequence, which the server says is safe to resume after) is written to FILE after each
 *       item, atomically (temporary file, fsync, rename). The event is printed first and the
 *       checkpoint written after it, so if the process dies between the two the next run
 *       prints that event again: consumers should be idempotent by id. Within one run no event
 *       is printed twice.
 *   <li>When the stream ends with UNAVAILABLE (server restart, network trouble) the subscriber
 *       reconnects with exponential backoff and resumes with after_sequence set to the last
 *       sequence it has seen, so nothing is lost or repeated.
 * </ul>
 *
 * Sequences are uint64, which Java holds in a long: they are compared and printed unsigned.
 */
public final class Subscribe {
  /** Backoff between reconnect attempts: 100 ms doubling up to 10 s, with jitter. */
  private static final long BACKOFF_INITIAL_MS = 100;

  private static final long BACKOFF_MAX_MS = 10_000;

  private String addr = "127.0.0.1:50051";
  private final List<String> types = new ArrayList<>();
  private Boolean livemode;
  private boolean fromBeginning;
  private Long after;
  private Path checkpoint;
  private int maxEvents;

  /** Every matching event up to this sequence has been handled; null before any. */
  private Long lastSeq;

  private int printed;

  private Subscribe() {}

  /** stdout was closed (e.g. the output was piped into head). */
  private static final class StdoutClosed extends IOException {
    StdoutClosed() {
      super("stdout is closed");
    }
  }

  private static void note(String msg) {
    System.err.println("Subscribe: " + msg);
  }

  public static void main(String[] argv) throws Exception {
    Subscribe s = new Subscribe();
    try {
      s.parseArgs(argv);
    } catch (IllegalArgumentException e) {
      note(e.getMessage());
      System.exit(2);
    }
    System.exit(s.run());
  }

  private void parseArgs(String[] argv) {
    for (int i = 0; i < argv.length; i++) {
      String flag = argv[i];
      String inline = null;
      int eq = flag.indexOf('=');
      if (flag.startsWith("--") && eq > 0) {
        inline = flag.substring(eq + 1);
        flag = flag.substring(0, eq);
      }
      if (flag.equals("--from-beginning")) {
        if (inline != null) {
          throw new IllegalArgumentException("--from-beginning takes no value");
        }
        fromBeginning = true;
        continue;
      }
      String value = inline;
      if (value == null) {
        if (i + 1 >= argv.length) {
          throw new IllegalArgumentException(flag + " needs a value");
        }
        value = argv[++i];
      }
      switch (flag) {
        case "--addr" -> addr = value;
        case "--types" -> {
          for (String t : value.split(",")) {
            if (!t.isBlank()) {
              types.add(t.strip());
            }
          }
        }
        case "--livemode" -> {
          switch (value.strip().toLowerCase()) {
            case "true", "1", "yes" -> livemode = true;
            case "false", "0", "no" -> livemode = false;
            default -> throw new IllegalArgumentException(
                "--livemode: expected true or false, got \"" + value + "\"");
          }
        }
        case "--after" -> after = parseSequence(value, "--after: expected a sequence number");
        case "--checkpoint" -> checkpoint = Path.of(value);
        case "--max-events" -> {
          try {
            maxEvents = Integer.parseInt(value.strip());
          } catch (NumberFormatException e) {
            maxEvents = 0;
          }
          if (maxEvents < 1) {
            throw new IllegalArgumentException("--max-events: expected N >= 1, got \"" + value + "\"");
          }
        }
        default -> throw new IllegalArgumentException("unknown argument " + argv[i]);
      }
    }
    if (fromBeginning && after != null) {
      throw new IllegalArgumentException("--from-beginning and --after are mutually exclusive");
    }
  }

  private static long parseSequence(String text, String what) {
    try {
      return Long.parseUnsignedLong(text.strip());
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException(what + ", got \"" + text.strip() + "\"");
    }
  }

  // --- checkpoint -------------------------------------------------------------------------

  /** The sequence stored in the checkpoint file, or null if the file does not exist. */
  private Long readCheckpoint() throws IOException {
    try {
      String text = Files.readString(checkpoint, StandardCharsets.UTF_8);
      return parseSequence(text, "checkpoint " + checkpoint + " holds no sequence number");
    } catch (NoSuchFileException e) {
      return null;
    }
  }

  /**
   * Atomically replaces the checkpoint file with seq: a temporary file beside it, fsync,
   * rename, then fsync of the folder so the rename itself is durable.
   */
  private void writeCheckpoint(long seq) throws IOException {
    Path dir = checkpoint.toAbsolutePath().getParent();
    Path tmp = Files.createTempFile(dir, ".ckpt-", "");
    try {
      try (FileChannel f = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
        f.write(ByteBuffer.wrap((Long.toUnsignedString(seq) + "\n").getBytes(StandardCharsets.UTF_8)));
        f.force(true);
      }
      Files.move(tmp, checkpoint, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    } catch (IOException e) {
      Files.deleteIfExists(tmp);
      throw e;
    }
    try (FileChannel d = FileChannel.open(dir, StandardOpenOption.READ)) {
      d.force(true);
    }
  }

  private void advance(long seq) throws IOException {
    if (lastSeq != null && Long.compareUnsigned(seq, lastSeq) < 0) {
      note("server sent sequence " + Long.toUnsignedString(seq) + " below the last one seen ("
          + Long.toUnsignedString(lastSeq) + "); ignored");
      return;
    }
    lastSeq = seq;
    if (checkpoint != null) {
      writeCheckpoint(seq);
    }
  }

  // --- subscription loop ------------------------------------------------------------------

  private SubscribeEventsRequest request(boolean firstAttempt) {
    SubscribeEventsRequest.Builder req = SubscribeEventsRequest.newBuilder().addAllTypes(types);
    if (livemode != null) {
      req.setLivemode(livemode);
    }
    if (lastSeq != null) {
      req.setAfterSequence(lastSeq);
    } else if (fromBeginning) {
      req.setFromBeginning(true);
    } else if (!firstAttempt) {
      // Started "from now", and a stream that had delivered something dropped before telling
      // us any sequence (the server sends caught_up first, so this is rare): reconnecting from
      // now may miss events committed while disconnected.
      note("resuming from now: events committed while disconnected may be missed");
    }
    return req.build();
  }

  /** Handles one stream item; true once --max-events events are printed. */
  private boolean handle(SubscribeEventsResponse resp) throws IOException {
    switch (resp.getItemCase()) {
      case EVENT -> {
        Event ev = resp.getEvent();
        if (lastSeq != null && Long.compareUnsigned(ev.getSequence(), lastSeq) <= 0) {
          // Never print an event twice (e.g. one the server repeats).
          note("skipped sequence " + Long.toUnsignedString(ev.getSequence()) + ": already delivered");
          return false;
        }
        System.out.println(EventJson.format(ev));
        System.out.flush();
        if (System.out.checkError()) {
          throw new StdoutClosed();
        }
        advance(ev.getSequence());
        printed++;
        return maxEvents > 0 && printed >= maxEvents;
      }
      case CAUGHT_UP -> {
        note("caught up at sequence " + Long.toUnsignedString(resp.getCaughtUp().getSequence()));
        advance(resp.getCaughtUp().getSequence());
      }
      case HEARTBEAT -> advance(resp.getHeartbeat().getSequence());
      default -> {}
    }
    return false;
  }

  private int run() throws Exception {
    ManagedChannel channel =
        Grpc.newChannelBuilder(addr, InsecureChannelCredentials.create())
            // Keepalive pings notice a connection that died silently (no FIN/RST, e.g. a
            // network partition) so the stream fails with UNAVAILABLE and is resumed instead
            // of hanging forever.
            .keepAliveTime(30, TimeUnit.SECONDS)
            .keepAliveTimeout(10, TimeUnit.SECONDS)
            .build();
    try {
      return subscribe(EventServiceGrpc.newBlockingStub(channel), channel);
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  private int subscribe(EventServiceGrpc.EventServiceBlockingStub stub, ManagedChannel channel)
      throws Exception {
    if (checkpoint != null) {
      lastSeq = readCheckpoint();
      if (lastSeq != null) {
        note("resuming after sequence " + Long.toUnsignedString(lastSeq) + " from checkpoint " + checkpoint);
      }
    }
    if (lastSeq == null && after != null) {
      lastSeq = after;
    }
    long backoff = BACKOFF_INITIAL_MS;
    boolean firstAttempt = true; // no stream has delivered anything yet
    while (true) {
      // No deadline: the stream is meant to stay open; keepalive notices a dead connection.
      // The call runs in a cancellable context so it can be ended after --max-events.
      Context.CancellableContext call = Context.current().withCancellation();
      Context previous = call.attach();
      try {
        Iterator<SubscribeEventsResponse> items = stub.subscribeEvents(request(firstAttempt));
        while (items.hasNext()) {
          SubscribeEventsResponse resp = items.next();
          backoff = BACKOFF_INITIAL_MS; // the connection works again
          firstAttempt = false;
          if (handle(resp)) {
            return 0;
          }
        }
        // The server ended the stream with OK; it should not, but resume anyway.
        note("stream ended by the server");
      } catch (StatusRuntimeException e) {
        Status status = e.getStatus();
        if (status.getCode() != Status.Code.UNAVAILABLE) {
          note("stream failed: " + status.getCode() + ": " + status.getDescription());
          return 1;
        }
        note("stream unavailable: " + status.getDescription());
      } catch (StdoutClosed e) {
        return 0; // e.g. piped into head: nothing more to do
      } finally {
        call.detach(previous);
        call.cancel(null);
      }
      long delay = (long) (backoff * (0.5 + ThreadLocalRandom.current().nextDouble() / 2));
      String where = lastSeq != null
          ? "after sequence " + Long.toUnsignedString(lastSeq)
          : "from the requested start";
      note(String.format("reconnecting in %.2fs, resuming %s", delay / 1000.0, where));
      Thread.sleep(delay);
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      // gRPC's own reconnection backoff (up to 120 s) would otherwise hold the channel in
      // TRANSIENT_FAILURE and fail our retry at once: start its next attempt now.
      channel.resetConnectBackoff();
    }
  }
}
