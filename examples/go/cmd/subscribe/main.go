// Command subscribe subscribes to eventsd and prints each event as one JSON line: a starting
// point for a Go service that consumes eventsd's SubscribeEvents stream.
//
//	go run ./cmd/subscribe --addr 127.0.0.1:50051 --types 'charge.*' --checkpoint charge.ckpt
//
// The same flags and output as ../python/subscribe.py and ../node/subscribe.js:
//   - Events go to stdout, one JSON object a line; notes (caught up, reconnecting, ...) go
//     to stderr.
//   - Where to start: --checkpoint FILE if FILE exists (resume after the sequence in it),
//     else --after SEQ, else --from-beginning, else "from now" (only new events).
//   - With --checkpoint FILE the last delivered sequence (or a heartbeat's / caught-up
//     sequence, which the server says is safe to resume after) is written to FILE after
//     each item, atomically (temporary file, fsync, rename). The event is printed first and
//     the checkpoint written after it, so if the process dies between the two the next run
//     prints that event again: consumers should be idempotent by id. Within one run no event
//     is printed twice.
//   - When the stream ends with UNAVAILABLE (server restart, network trouble) the
//     subscriber reconnects with exponential backoff and resumes with after_sequence set to
//     the last sequence it has seen, so nothing is lost or repeated.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	eventsv1 "eventsd.dev/genproto/events/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"eventsd.dev/examples/go/internal/eventjson"
)

// Backoff between reconnect attempts: 100 ms doubling up to 10 s, with jitter; reset once a
// connection delivers something.
const (
	backoffInitial = 100 * time.Millisecond
	backoffMax     = 10 * time.Second
)

func note(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "subscribe: "+format+"\n", args...)
}

type options struct {
	addr          string
	types         []string
	livemode      *bool
	fromBeginning bool
	after         *uint64
	checkpoint    string
	maxEvents     int
}

func parseArgs(args []string) (options, error) {
	fs := flag.NewFlagSet("subscribe", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:50051", "eventsd gRPC address (host:port)")
	types := fs.String("types", "", "comma-separated types, exact or with a trailing wildcard such as 'charge.*'")
	livemode := fs.String("livemode", "", "only live (true) or only test (false) events; both when not given")
	fromBeginning := fs.Bool("from-beginning", false, "replay every stored event first")
	after := fs.String("after", "", "deliver events with a sequence greater than `SEQ`")
	checkpoint := fs.String("checkpoint", "", "resume after the sequence stored in `FILE`, and keep it updated")
	maxEvents := fs.Int("max-events", 0, "exit 0 after printing `N` events")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := options{addr: *addr, fromBeginning: *fromBeginning, checkpoint: *checkpoint, maxEvents: *maxEvents}
	for _, t := range strings.Split(*types, ",") {
		if t = strings.TrimSpace(t); t != "" {
			o.types = append(o.types, t)
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["livemode"] {
		switch strings.ToLower(strings.TrimSpace(*livemode)) {
		case "true", "1", "yes":
			o.livemode = ptr(true)
		case "false", "0", "no":
			o.livemode = ptr(false)
		default:
			return options{}, fmt.Errorf("--livemode: expected true or false, got %q", *livemode)
		}
	}
	if set["after"] {
		seq, err := strconv.ParseUint(strings.TrimSpace(*after), 10, 64)
		if err != nil {
			return options{}, fmt.Errorf("--after: expected a sequence number, got %q", *after)
		}
		o.after = &seq
	}
	if o.fromBeginning && o.after != nil {
		return options{}, errors.New("--from-beginning and --after are mutually exclusive")
	}
	if set["max-events"] && o.maxEvents < 1 {
		return options{}, errors.New("--max-events must be >= 1")
	}
	return o, nil
}

func ptr[T any](v T) *T { return &v }

// --- checkpoint ----------------------------------------------------------------------

// readCheckpoint returns the sequence stored in path, or nil if the file does not exist.
func readCheckpoint(path string) (*uint64, error) {
	text, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	seq, err := strconv.ParseUint(strings.TrimSpace(string(text)), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s holds %q, not a sequence number", path, strings.TrimSpace(string(text)))
	}
	return &seq, nil
}

// writeCheckpoint atomically replaces path with seq: a temporary file beside it, fsync,
// rename, then fsync of the folder so the rename itself is durable.
func writeCheckpoint(path string, seq uint64) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".ckpt-")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(tmp, "%d\n", seq)
	if err == nil {
		err = tmp.Sync()
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// --- subscription loop ---------------------------------------------------------------

type subscriber struct {
	opts    options
	client  eventsv1.EventServiceClient
	lastSeq *uint64 // every matching event up to it has been handled
	printed int
}

func (s *subscriber) request(firstAttempt bool) *eventsv1.SubscribeEventsRequest {
	req := &eventsv1.SubscribeEventsRequest{Types: s.opts.types, Livemode: s.opts.livemode}
	switch {
	case s.lastSeq != nil:
		req.Start = &eventsv1.SubscribeEventsRequest_AfterSequence{AfterSequence: *s.lastSeq}
	case s.opts.fromBeginning:
		req.Start = &eventsv1.SubscribeEventsRequest_FromBeginning{FromBeginning: true}
	case !firstAttempt:
		// Started "from now", and a stream that had delivered something dropped before
		// telling us any sequence (the server sends caught_up first, so this is rare):
		// reconnecting from now may miss events committed while disconnected.
		note("resuming from now: events committed while disconnected may be missed")
	}
	return req
}

func (s *subscriber) advance(seq uint64) error {
	if s.lastSeq != nil && seq < *s.lastSeq {
		note("server sent sequence %d below the last one seen (%d); ignored", seq, *s.lastSeq)
		return nil
	}
	s.lastSeq = &seq
	if s.opts.checkpoint != "" {
		return writeCheckpoint(s.opts.checkpoint, seq)
	}
	return nil
}

// errDone ends the run once --max-events events are printed.
var errDone = errors.New("max events printed")

// handle deals with one stream item.
func (s *subscriber) handle(resp *eventsv1.SubscribeEventsResponse) error {
	switch item := resp.GetItem().(type) {
	case *eventsv1.SubscribeEventsResponse_Event:
		ev := item.Event
		if s.lastSeq != nil && ev.GetSequence() <= *s.lastSeq {
			// Never print an event twice (e.g. one the server repeats).
			note("skipped sequence %d: already delivered", ev.GetSequence())
			return nil
		}
		text, err := eventjson.Format(ev)
		if err != nil {
			return err
		}
		if _, err := fmt.Println(text); err != nil {
			return err
		}
		if err := s.advance(ev.GetSequence()); err != nil {
			return err
		}
		s.printed++
		if s.opts.maxEvents > 0 && s.printed >= s.opts.maxEvents {
			return errDone
		}
	case *eventsv1.SubscribeEventsResponse_CaughtUp:
		note("caught up at sequence %d", item.CaughtUp.GetSequence())
		return s.advance(item.CaughtUp.GetSequence())
	case *eventsv1.SubscribeEventsResponse_Heartbeat:
		return s.advance(item.Heartbeat.GetSequence())
	}
	return nil
}

// stream runs one subscription until it ends. It returns nil when the stream should be
// resumed (UNAVAILABLE, or an OK end the server should not send), and whether it delivered
// anything.
func (s *subscriber) stream(ctx context.Context, firstAttempt bool) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// No deadline: the stream is meant to stay open. Keepalive (see main) notices a dead
	// connection instead.
	stream, err := s.client.SubscribeEvents(ctx, s.request(firstAttempt))
	for err == nil {
		var resp *eventsv1.SubscribeEventsResponse
		resp, err = stream.Recv()
		if err == nil {
			delivered = true
			err = s.handle(resp)
		}
	}
	switch {
	case errors.Is(err, errDone) || ctx.Err() != nil:
		return delivered, err
	case errors.Is(err, io.EOF):
		note("stream ended by the server")
		return delivered, nil
	case status.Code(err) == codes.Unavailable:
		note("stream unavailable: %s", status.Convert(err).Message())
		return delivered, nil
	}
	if st, ok := status.FromError(err); ok {
		return delivered, fmt.Errorf("stream failed: %s: %s", st.Code(), st.Message())
	}
	return delivered, err
}

func run(ctx context.Context, o options) error {
	conn, err := grpc.NewClient(o.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Keepalive pings notice a connection that died silently (no FIN/RST, e.g. a
		// network partition) so the stream fails with UNAVAILABLE and is resumed instead of
		// hanging forever.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Cap gRPC's own reconnection delay (120 s by default) so a restarted server is
		// picked up within about backoffMax.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: backoffInitial, Multiplier: 2, Jitter: 0.2, MaxDelay: backoffMax},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return err
	}
	defer conn.Close()

	s := &subscriber{opts: o, client: eventsv1.NewEventServiceClient(conn)}
	if o.checkpoint != "" {
		if s.lastSeq, err = readCheckpoint(o.checkpoint); err != nil {
			return err
		}
		if s.lastSeq != nil {
			note("resuming after sequence %d from checkpoint %s", *s.lastSeq, o.checkpoint)
		}
	}
	if s.lastSeq == nil && o.after != nil {
		s.lastSeq = ptr(*o.after)
	}

	wait := backoffInitial
	firstAttempt := true // no stream has delivered anything yet
	for {
		delivered, err := s.stream(ctx, firstAttempt)
		if err != nil {
			return err
		}
		if delivered {
			wait = backoffInitial // the connection works again
			firstAttempt = false
		}
		delay := time.Duration(float64(wait) * (0.5 + rand.Float64()/2))
		where := "from the requested start"
		if s.lastSeq != nil {
			where = fmt.Sprintf("after sequence %d", *s.lastSeq)
		}
		note("reconnecting in %.2fs, resuming %s", delay.Seconds(), where)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(wait*2, backoffMax)
	}
}

func main() {
	o, err := parseArgs(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		note("%v", err)
		os.Exit(2)
	}
	// Exit quietly on Ctrl-C (130) and SIGTERM (143), as the Python and Node subscribers do.
	ctx, stop := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	exitCode := 0
	go func() {
		if sig := <-signals; sig == syscall.SIGTERM {
			exitCode = 143
		} else {
			exitCode = 130
		}
		stop()
	}()

	err = run(ctx, o)
	switch {
	case errors.Is(err, errDone):
		os.Exit(0)
	case ctx.Err() != nil:
		os.Exit(exitCode)
	default:
		note("%v", err)
		os.Exit(1)
	}
}
