package dev.eventsd.examples;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.eventsd.events.v1.Event;
import dev.eventsd.events.v1.EventServiceGrpc;
import dev.eventsd.events.v1.PublishEventRequest;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import java.util.concurrent.TimeUnit;

/**
 * Publishes one event with a caller-supplied id and prints the stored event as the JSON line
 * the subscribers print.
 *
 * <pre>java ... dev.eventsd.examples.Publish --addr 127.0.0.1:50051 --id order_1234_paid --type charge.create --amount 1000</pre>
 *
 * The id makes the publish idempotent: running the same command again returns the stored
 * event (same sequence) and stores nothing new, so a producer can retry after any failure. A
 * repeat with different fields is ALREADY_EXISTS.
 */
public final class Publish {
  private Publish() {}

  public static void main(String[] argv) throws InterruptedException {
    String addr = "127.0.0.1:50051";
    String id = null;
    String type = "charge.create";
    long amount = 1000;
    boolean livemode = false;
    String source = "";
    try {
      for (int i = 0; i < argv.length; i++) {
        String flag = argv[i];
        switch (flag) {
          case "--addr" -> addr = value(argv, ++i, flag);
          case "--id" -> id = value(argv, ++i, flag);
          case "--type" -> type = value(argv, ++i, flag);
          case "--amount" -> amount = Long.parseLong(value(argv, ++i, flag));
          case "--livemode" -> livemode = true;
          case "--source" -> source = value(argv, ++i, flag);
          default -> throw new IllegalArgumentException("unknown argument " + flag);
        }
      }
      if (id == null || id.isEmpty()) {
        throw new IllegalArgumentException(
            "--id is required: a caller-supplied id is what makes a retry safe");
      }
    } catch (IllegalArgumentException e) {
      System.err.println("Publish: " + e.getMessage());
      System.exit(2);
    }

    Struct data =
        Struct.newBuilder()
            .putFields("amount", Value.newBuilder().setNumberValue(amount).build())
            .build();
    PublishEventRequest request =
        PublishEventRequest.newBuilder()
            .setId(id)
            .setType(type)
            .setData(data)
            .setLivemode(livemode)
            .setSource(source)
            .build();

    ManagedChannel channel =
        Grpc.newChannelBuilder(addr, InsecureChannelCredentials.create()).build();
    int exit = 0;
    try {
      // A unary call gets a deadline, so a server that never answers cannot hang the producer.
      Event ev =
          EventServiceGrpc.newBlockingStub(channel)
              .withDeadlineAfter(10, TimeUnit.SECONDS)
              .publishEvent(request);
      System.out.println(EventJson.format(ev));
    } catch (StatusRuntimeException e) {
      System.err.println(
          "Publish: PublishEvent: " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
      exit = 1;
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.exit(exit);
  }

  private static String value(String[] argv, int i, String flag) {
    if (i >= argv.length) {
      throw new IllegalArgumentException(flag + " needs a value");
    }
    return argv[i];
  }
}
