// Command publish publishes one event with a caller-supplied id and prints the stored event
// as the JSON line the subscribers print.
//
//	go run ./cmd/publish --addr 127.0.0.1:50051 --id order_1234_paid --type charge.create --amount 1000
//
// The id makes the publish idempotent: running the same command again returns the stored
// event (same sequence) and stores nothing new, so a producer can retry after any failure.
// A repeat with different fields is ALREADY_EXISTS. The same flags as the Java Publish.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	eventsv1 "eventsd.dev/genproto/events/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"eventsd.dev/examples/go/internal/eventjson"
)

func publish(args []string) (string, error) {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:50051", "eventsd gRPC address (host:port)")
	id := fs.String("id", "", "the event id (required): 1-128 characters of [A-Za-z0-9_.:-]")
	typ := fs.String("type", "charge.create", "the event type")
	amount := fs.Int64("amount", 1000, "the `amount` in the object snapshot, {\"amount\": N}")
	livemode := fs.Bool("livemode", false, "a live event (default: test)")
	source := fs.String("source", "", "the producer's name")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if *id == "" {
		return "", errors.New("--id is required: a caller-supplied id is what makes a retry safe")
	}
	snapshot := &structpb.Struct{Fields: map[string]*structpb.Value{"amount": structpb.NewNumberValue(float64(*amount))}}

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	// A unary call gets a deadline, so a server that never answers cannot hang the producer.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, err := eventsv1.NewEventServiceClient(conn).PublishEvent(ctx, &eventsv1.PublishEventRequest{
		Id:       *id,
		Type:     *typ,
		Data:     snapshot,
		Livemode: *livemode,
		Source:   *source,
	})
	if err != nil {
		st := status.Convert(err)
		return "", fmt.Errorf("PublishEvent: %s: %s", st.Code(), st.Message())
	}
	return eventjson.Format(ev)
}

func main() {
	text, err := publish(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "publish: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(text)
}
