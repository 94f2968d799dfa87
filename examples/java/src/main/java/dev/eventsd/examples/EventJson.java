package dev.eventsd.examples;

import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Timestamp;
import com.google.protobuf.Value;
import dev.eventsd.events.v1.Event;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.Map;

/**
 * An eventsd event as the one JSON line every example subscriber prints:
 *
 * <pre>{"sequence":12,"id":"evnt_...","type":"charge.create","created":"2026-11-23T18:30:51.474873511Z","livemode":true,"data":{"amount":1007}}</pre>
 *
 * Shared by {@link Subscribe} and {@link Publish}. Written by hand because protobuf-java's
 * JsonFormat prints every Struct number as a double (42.0) and the sequence as a string.
 */
final class EventJson {
  /** Largest magnitude up to which every integer is exactly representable as a double. */
  private static final double MAX_SAFE_INT = 9007199254740992.0; // 2^53

  private static final DateTimeFormatter SECONDS =
      DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss").withZone(ZoneOffset.UTC);

  private EventJson() {}

  static String format(Event ev) {
    StringBuilder out = new StringBuilder(256);
    // uint64 arrives as a Java long; unsigned printing keeps it exact above 2^63.
    out.append("{\"sequence\":").append(Long.toUnsignedString(ev.getSequence()));
    out.append(",\"id\":");
    string(out, ev.getId());
    out.append(",\"type\":");
    string(out, ev.getType());
    out.append(",\"created\":");
    string(out, rfc3339(ev.getCreated()));
    out.append(",\"livemode\":").append(ev.getLivemode());
    out.append(",\"data\":");
    struct(out, ev.getData());
    return out.append('}').toString();
  }

  /**
   * RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as proto3 JSON (and Python's
   * Timestamp.ToJsonString) writes it.
   */
  static String rfc3339(Timestamp ts) {
    String base = SECONDS.format(Instant.ofEpochSecond(ts.getSeconds()));
    int nanos = ts.getNanos();
    if (nanos == 0) {
      return base + "Z";
    } else if (nanos % 1_000_000 == 0) {
      return String.format("%s.%03dZ", base, nanos / 1_000_000);
    } else if (nanos % 1_000 == 0) {
      return String.format("%s.%06dZ", base, nanos / 1_000);
    }
    return String.format("%s.%09dZ", base, nanos);
  }

  private static void struct(StringBuilder out, Struct s) {
    out.append('{');
    boolean first = true;
    for (Map.Entry<String, Value> field : s.getFieldsMap().entrySet()) {
      if (!first) {
        out.append(',');
      }
      first = false;
      string(out, field.getKey());
      out.append(':');
      value(out, field.getValue());
    }
    out.append('}');
  }

  private static void value(StringBuilder out, Value v) {
    switch (v.getKindCase()) {
      case NUMBER_VALUE -> number(out, v.getNumberValue());
      case STRING_VALUE -> string(out, v.getStringValue());
      case BOOL_VALUE -> out.append(v.getBoolValue());
      case STRUCT_VALUE -> struct(out, v.getStructValue());
      case LIST_VALUE -> list(out, v.getListValue());
      default -> out.append("null"); // NULL_VALUE or unset
    }
  }

  private static void list(StringBuilder out, ListValue l) {
    out.append('[');
    for (int i = 0; i < l.getValuesCount(); i++) {
      if (i > 0) {
        out.append(',');
      }
      value(out, l.getValues(i));
    }
    out.append(']');
  }

  /**
   * Struct numbers are doubles. A whole double up to 2^53 is printed as an integer (42, not
   * 42.0), which is what the publisher sent; larger or fractional ones as doubles; NaN and
   * the infinities as proto3 JSON spells them, as strings.
   */
  private static void number(StringBuilder out, double n) {
    if (Double.isNaN(n)) {
      out.append("\"NaN\"");
    } else if (Double.isInfinite(n)) {
      out.append(n > 0 ? "\"Infinity\"" : "\"-Infinity\"");
    } else if (n == Math.rint(n) && Math.abs(n) <= MAX_SAFE_INT) {
      out.append((long) n);
    } else {
      out.append(n); // Java's shortest round-trip form, e.g. 1.5 or 1.0E21: valid JSON
    }
  }

  private static void string(StringBuilder out, String s) {
    out.append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"' -> out.append("\\\"");
        case '\\' -> out.append("\\\\");
        case '\n' -> out.append("\\n");
        case '\r' -> out.append("\\r");
        case '\t' -> out.append("\\t");
        default -> {
          if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
      }
    }
    out.append('"');
  }
}
