// Package eventjson prints an eventsd event as the one JSON line every example subscriber
// prints (see ../../README.md):
//
//	{"sequence":12,"id":"evnt_...","type":"charge.create","created":"2026-11-23T18:30:51.474873511Z","livemode":true,"data":{"amount":1007}}
//
// It is shared by cmd/subscribe and cmd/publish so both print events the same way.
package eventjson

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	eventsv1 "eventsd.dev/genproto/events/v1"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// line fixes the order of the keys, the same as the Python and Node subscribers.
type line struct {
	Sequence uint64         `json:"sequence"`
	ID       string         `json:"id"`
	Type     string         `json:"type"`
	Created  string         `json:"created"`
	Livemode bool           `json:"livemode"`
	Data     map[string]any `json:"data"`
}

// Format returns the JSON line for ev, without the newline. The sequence is a JSON number
// (exact: Go writes a uint64 digit for digit).
func Format(ev *eventsv1.Event) (string, error) {
	text, err := json.Marshal(line{
		Sequence: ev.GetSequence(),
		ID:       ev.GetId(),
		Type:     ev.GetType(),
		Created:  RFC3339(ev.GetCreated()),
		Livemode: ev.GetLivemode(),
		Data:     structToMap(ev.GetData()),
	})
	if err != nil {
		return "", fmt.Errorf("event %d as JSON: %w", ev.GetSequence(), err)
	}
	return string(text), nil
}

// RFC3339 writes a Timestamp in UTC with 0, 3, 6 or 9 fractional digits, as proto3 JSON
// (and Python's Timestamp.ToJsonString) writes it.
func RFC3339(ts *timestamppb.Timestamp) string {
	t := time.Unix(ts.GetSeconds(), int64(ts.GetNanos())).UTC()
	base := t.Format("2006-01-02T15:04:05")
	nanos := ts.GetNanos()
	switch {
	case nanos == 0:
		return base + "Z"
	case nanos%1_000_000 == 0:
		return fmt.Sprintf("%s.%03dZ", base, nanos/1_000_000)
	case nanos%1_000 == 0:
		return fmt.Sprintf("%s.%06dZ", base, nanos/1_000)
	default:
		return fmt.Sprintf("%s.%09dZ", base, nanos)
	}
}

// structToMap turns a google.protobuf.Struct into plain values. structpb's AsMap would do,
// except that encoding/json refuses NaN and infinities, which a Struct can hold: they are
// spelled as proto3 JSON spells them ("NaN", "Infinity", "-Infinity"), as in the Python and
// Node subscribers. Struct numbers are doubles; encoding/json writes a whole double as an
// integer (42, not 42.0), exact up to 2^53.
func structToMap(s *structpb.Struct) map[string]any {
	out := make(map[string]any, len(s.GetFields()))
	for k, v := range s.GetFields() {
		out[k] = value(v)
	}
	return out
}

func value(v *structpb.Value) any {
	switch kind := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		n := kind.NumberValue
		switch {
		case math.IsNaN(n):
			return "NaN"
		case math.IsInf(n, 1):
			return "Infinity"
		case math.IsInf(n, -1):
			return "-Infinity"
		}
		return n
	case *structpb.Value_StringValue:
		return kind.StringValue
	case *structpb.Value_BoolValue:
		return kind.BoolValue
	case *structpb.Value_StructValue:
		return structToMap(kind.StructValue)
	case *structpb.Value_ListValue:
		values := kind.ListValue.GetValues()
		out := make([]any, len(values))
		for i, x := range values {
			out[i] = value(x)
		}
		return out
	default: // null_value or unset
		return nil
	}
}
