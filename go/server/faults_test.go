package server

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/polystream/polystream/go/events"
	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// Each server-wide self-test fault shows its effect over a real listener;
// the same steps without the fault give the correct result.

// badCalls makes three failing RPCs (unary INVALID_ARGUMENT, unary
// NOT_FOUND, stream INVALID_ARGUMENT) and returns their statuses.
func badCalls(t *testing.T, addr string) []*status.Status {
	t.Helper()
	conn := grpctest.Dial(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	events := eventsv1.NewEventServiceClient(conn)
	_, errBroadcast := events.Broadcast(ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{}})
	_, errHealth := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	stream, err := events.Subscribe(ctx, &eventsv1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, errSubscribe := stream.Recv()
	return []*status.Status{status.Convert(errBroadcast), status.Convert(errHealth), status.Convert(errSubscribe)}
}

func TestFaultWrongStatusReplacesInvalidArgumentAndNotFoundMessages(t *testing.T) {
	wantCodes := []codes.Code{codes.InvalidArgument, codes.NotFound, codes.InvalidArgument}

	srv, _ := startServer(t, testConfig(t))
	for i, st := range badCalls(t, srv.Addr()) {
		if st.Code() != wantCodes[i] || st.Message() == WrongStatusMessage || st.Message() == "" {
			t.Fatalf("without the fault, call %d: %v", i, st)
		}
	}

	cfg := testConfig(t)
	cfg.Fault = FaultWrongStatus
	srv, logs := startServer(t, cfg)
	for i, st := range badCalls(t, srv.Addr()) {
		if st.Code() != wantCodes[i] || st.Message() != WrongStatusMessage {
			t.Fatalf("with wrong-status, call %d: %v; want code %v, message %q", i, st, wantCodes[i], WrongStatusMessage)
		}
	}
	// Other codes are untouched.
	health := healthpb.NewHealthClient(grpctest.Dial(t, srv.Addr()))
	if _, err := health.Check(grpctest.Context(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("OK call: %v", err)
	}
	if !strings.Contains(logs.String(), "SELF-TEST FAULT ACTIVE") || !strings.Contains(logs.String(), "fault=wrong-status") {
		t.Fatalf("no fault warning:\n%s", logs)
	}
}

// pingsGetGoAway opens a raw HTTP/2 connection without streams, sends five
// pings 50 ms apart and tells whether the server answers with GOAWAY
// too_many_pings.
func pingsGetGoAway(t *testing.T, addr string) bool {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	var writing sync.Mutex // the reader acks settings while pings are written
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	goAway := make(chan bool, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				goAway <- false
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					writing.Lock()
					fr.WriteSettingsAck()
					writing.Unlock()
				}
			case *http2.GoAwayFrame:
				goAway <- f.ErrCode == http2.ErrCodeEnhanceYourCalm && string(f.DebugData()) == "too_many_pings"
				return
			}
		}
	}()
	for i := range 5 {
		time.Sleep(50 * time.Millisecond)
		writing.Lock()
		err := fr.WritePing(false, [8]byte{byte(i)})
		writing.Unlock()
		if err != nil {
			break // the server may already have closed the connection
		}
	}
	select {
	case got := <-goAway:
		return got
	case <-time.After(time.Second):
		c.Close()
		<-goAway
		return false
	}
}

func TestFaultStrictKeepaliveSendsGoAwayTooManyPings(t *testing.T) {
	cfg := testConfig(t)
	cfg.KeepaliveMinTime = 10 * time.Millisecond // pings 50 ms apart are fine
	srv, _ := startServer(t, cfg)
	if pingsGetGoAway(t, srv.Addr()) {
		t.Fatal("without the fault: GOAWAY too_many_pings")
	}

	cfg.Fault = FaultStrictKeepalive
	srv, _ = startServer(t, cfg)
	if !pingsGetGoAway(t, srv.Addr()) {
		t.Fatal("with strict-keepalive: no GOAWAY too_many_pings")
	}
	if p := enforcementPolicy(cfg); p.MinTime != time.Minute || p.PermitWithoutStream {
		t.Fatalf("strict-keepalive policy %+v", p)
	}
	// The server's own pings stop too, so an idle client must ping and meets the policy.
	if p := serverParameters(cfg); p.Time != time.Duration(math.MaxInt64) {
		t.Fatalf("strict-keepalive server pings every %v", p.Time)
	}
	cfg.Fault = ""
	if p := serverParameters(cfg); p.Time != cfg.KeepaliveTime {
		t.Fatalf("server pings every %v, want %v", p.Time, cfg.KeepaliveTime)
	}
}

// eventSequences subscribes, publishes n events and returns the sequences
// the stream delivered, with the Broadcast responses.
func eventSequences(t *testing.T, addr string, n int) ([]uint64, []*eventsv1.BroadcastResponse) {
	t.Helper()
	ctx := grpctest.Context(t)
	events := eventsv1.NewEventServiceClient(grpctest.Dial(t, addr))
	stream, err := events.Subscribe(ctx, &eventsv1.SubscribeRequest{ClientId: "seq"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil { // subscribed
		t.Fatal(err)
	}
	var published []*eventsv1.BroadcastResponse
	for range n {
		res, err := events.Broadcast(ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "s"}})
		if err != nil {
			t.Fatal(err)
		}
		published = append(published, res)
	}
	var got []uint64
	for len(got) < n {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		if ev.Sequence > 0 {
			got = append(got, ev.Sequence)
		}
	}
	return got, published
}

// querySequences streams a 7-row query in batches of one.
func querySequences(t *testing.T, addr string) []uint64 {
	t.Helper()
	stream, err := updatesv1.NewStreamServiceClient(grpctest.Dial(t, addr)).StreamQueryResults(grpctest.Context(t),
		&updatesv1.QueryRequest{Query: "SELECT id FROM large_table WHERE id <= 7", BatchSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	batches, err := grpctest.RecvAll(stream)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, b := range batches {
		got = append(got, b.Sequence)
	}
	return got
}

func TestFaultSkipSequenceSendsTheFifthWithSequencePlusOne(t *testing.T) {
	want := []uint64{1, 2, 3, 4, 5, 6, 7}
	srv, _ := startServer(t, testConfig(t))
	if got, _ := eventSequences(t, srv.Addr(), 7); !slices.Equal(got, want) {
		t.Fatalf("without the fault, events %v", got)
	}
	if got := querySequences(t, srv.Addr()); !slices.Equal(got, want) {
		t.Fatalf("without the fault, query batches %v", got)
	}

	cfg := testConfig(t)
	cfg.Fault = FaultSkipSequence
	srv, logs := startServer(t, cfg)
	skipped := []uint64{1, 2, 3, 4, 6, 6, 7}
	got, published := eventSequences(t, srv.Addr(), 7)
	if !slices.Equal(got, skipped) {
		t.Fatalf("with skip-sequence, events %v, want %v", got, skipped)
	}
	if got := querySequences(t, srv.Addr()); !slices.Equal(got, skipped) {
		t.Fatalf("with skip-sequence, query batches %v, want %v", got, skipped)
	}
	// A copy: the log still holds 5; a stream resuming after 4 counts
	// from 1 again and gets it.
	events := eventsv1.NewEventServiceClient(grpctest.Dial(t, srv.Addr()))
	resumed, err := events.Subscribe(grpctest.Context(t), &eventsv1.SubscribeRequest{ClientId: "r", LastEventId: published[3].EventId})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []uint64{5, 6, 7} {
		ev, err := resumed.Recv()
		if err != nil || ev.Sequence != want {
			t.Fatalf("resumed stream: %v %v, want sequence %d", ev, err, want)
		}
	}
	if !strings.Contains(logs.String(), "fault=skip-sequence") {
		t.Fatalf("no fault warning:\n%s", logs)
	}
}

// fakeSendStream records what SendMsg was given.
type fakeSendStream struct {
	grpc.ServerStream
	sent []any
}

func (f *fakeSendStream) SendMsg(m any) error { f.sent = append(f.sent, m); return nil }

func TestSkipSequenceCountsOnlyMessagesWithASequence(t *testing.T) {
	fake := &fakeSendStream{}
	originals := []any{&healthpb.HealthCheckResponse{}, &eventsv1.Event{}} // no field, sequence 0: not counted
	for i := range uint64(6) {
		originals = append(originals, &eventsv1.Event{Sequence: 10 + i})
	}
	err := skipSequenceStream(nil, fake, &grpc.StreamServerInfo{IsServerStream: true}, func(_ any, ss grpc.ServerStream) error {
		for _, m := range originals {
			if err := ss.SendMsg(m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, m := range fake.sent[2:] {
		got = append(got, m.(*eventsv1.Event).Sequence)
	}
	if want := []uint64{10, 11, 12, 13, 15, 15}; !slices.Equal(got, want) {
		t.Fatalf("sent sequences %v, want %v", got, want)
	}
	if originals[6].(*eventsv1.Event).Sequence != 14 || fake.sent[6] == originals[6] {
		t.Fatal("the 5th was changed in place, not copied")
	}
}

// fakeRecvStream hands out requests, then io.EOF.
type fakeRecvStream struct {
	grpc.ServerStream
	requests []*eventsv1.SubscribeRequest
}

func (f *fakeRecvStream) RecvMsg(m any) error {
	if len(f.requests) == 0 {
		return io.EOF
	}
	proto.Reset(m.(proto.Message))
	proto.Merge(m.(proto.Message), f.requests[0])
	f.requests = f.requests[1:]
	return nil
}

// handlerSees runs loseRequestStream over seven requests and returns the
// client ids the handler received.
func handlerSees(t *testing.T, info *grpc.StreamServerInfo) []string {
	t.Helper()
	fake := &fakeRecvStream{}
	for i := range 7 {
		fake.requests = append(fake.requests, &eventsv1.SubscribeRequest{ClientId: strconv.Itoa(i + 1)})
	}
	var seen []string
	err := loseRequestStream(nil, fake, info, func(_ any, ss grpc.ServerStream) error {
		for {
			var req eventsv1.SubscribeRequest
			if err := ss.RecvMsg(&req); err != nil {
				return err
			}
			seen = append(seen, req.ClientId)
		}
	})
	if err != io.EOF {
		t.Fatalf("handler ended with %v, want io.EOF", err)
	}
	return seen
}

func TestLoseRequestDiscardsTheFifthRequest(t *testing.T) {
	if got := handlerSees(t, &grpc.StreamServerInfo{IsClientStream: true, IsServerStream: true}); !slices.Equal(got, []string{"1", "2", "3", "4", "6", "7"}) {
		t.Fatalf("bidi handler saw %v, want all but the 5th", got)
	}
	if got := handlerSees(t, &grpc.StreamServerInfo{IsServerStream: true}); len(got) != 7 {
		t.Fatalf("server-streaming handler saw %v, want all 7 (not a client stream)", got)
	}
}

// upload sends seven chat messages, the 5th without content (refused by a
// correct server), and returns the result.
func upload(t *testing.T, addr string) (*chatv1.UploadResponse, error) {
	t.Helper()
	up, err := chatv1.NewChatServiceClient(grpctest.Dial(t, addr)).UploadMessages(grpctest.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 7 {
		msg := &chatv1.Message{User: "u", Content: "m" + strconv.Itoa(i+1)}
		if i == 4 {
			msg.Content = ""
		}
		if err := up.Send(msg); err != nil {
			break // the server may have ended the upload already
		}
	}
	return up.CloseAndRecv()
}

func TestFaultLoseRequestDropsTheFifthUploadedMessage(t *testing.T) {
	srv, _ := startServer(t, testConfig(t))
	_, err := upload(t, srv.Addr())
	grpctest.WantStatus(t, err, codes.InvalidArgument, "content is required")

	cfg := testConfig(t)
	cfg.Fault = FaultLoseRequest
	srv, _ = startServer(t, cfg)
	res, err := upload(t, srv.Addr())
	if err != nil || res.MessageCount != 6 {
		t.Fatalf("with lose-request: %v %v, want 6 messages (the bad 5th never seen)", res, err)
	}
}

func TestFaultUnboundedWindowFixesWindowsAt16MiB(t *testing.T) {
	for _, fixed := range []int{0, 1 << 20} {
		cfg := testConfig(t)
		cfg.InitialWindowSize = fixed // ignored
		cfg.Fault = FaultUnboundedWindow
		srv, _ := startServer(t, cfg)
		stream, conn := serverWindows(t, srv.Addr())
		if stream != 16777216 || conn != 16777216-65535 {
			t.Fatalf("--initial-window-size %d with unbounded-window: stream window %d, connection window 65535+%d; want both 16777216",
				fixed, stream, conn)
		}
	}
}

func TestFaultAbruptShutdownCutsStreamsWithoutGrace(t *testing.T) {
	cfg := testConfig(t)
	cfg.Fault = FaultAbruptShutdown
	srv, logs := startServer(t, cfg)
	ctx := grpctest.Context(t)
	conn := grpctest.Dial(t, srv.Addr())
	watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if first, err := watch.Recv(); err != nil || first.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch message: %v %v", first, err)
	}
	sub, err := eventsv1.NewEventServiceClient(conn).Subscribe(ctx, &eventsv1.SubscribeRequest{ClientId: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Header(); err != nil {
		t.Fatal(err)
	}

	if err := srv.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// No NOT_SERVING first, and not the graceful path's status.
	resp, err := watch.Recv()
	if err == nil {
		t.Fatalf("Watch got %v after an abrupt stop", resp)
	}
	_, subErr := sub.Recv()
	for _, err := range []error{err, subErr} {
		if err == nil || status.Convert(err).Message() == ShuttingDownMessage {
			t.Fatalf("stream ended with %v; want the library's own status, not %q", err, ShuttingDownMessage)
		}
		t.Logf("cut stream: %v", err)
	}
	if strings.Contains(logs.String(), `msg="shutting down"`) || !strings.Contains(logs.String(), `msg="stopping at once (abrupt-shutdown fault)"`) {
		t.Fatalf("the graceful path ran:\n%s", logs)
	}
}

// clientEndedCalls makes a Subscribe the client cancels and one whose
// deadline passes, and waits for their rpc records.
func clientEndedCalls(t *testing.T, srv *Server, logs *grpctest.Output) string {
	t.Helper()
	events := eventsv1.NewEventServiceClient(grpctest.Dial(t, srv.Addr()))
	ctx, cancel := context.WithCancel(grpctest.Context(t))
	stream, err := events.Subscribe(ctx, &eventsv1.SubscribeRequest{ClientId: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	cancel()
	short, cancelShort := context.WithTimeout(grpctest.Context(t), 200*time.Millisecond)
	defer cancelShort()
	stream, err = events.Subscribe(short, &eventsv1.SubscribeRequest{ClientId: "d"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", err)
	}
	const method = "method=/polystream.events.v1.EventService/Subscribe"
	grpctest.WaitFor(t, "two Subscribe records", func() bool { return strings.Count(logs.String(), method) == 2 })
	var codes []string
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, method) {
			codes = append(codes, strings.TrimSpace(line[strings.Index(line, "code="):]))
		}
	}
	return strings.Join(codes, " ")
}

func TestFaultIgnoreCancelLogsClientEndedCallsAsOK(t *testing.T) {
	srv, logs := startServer(t, testConfig(t))
	// The deadline's record may say CANCELLED: the client's RST_STREAM can
	// reach the server before the server's own deadline timer fires.
	if got := clientEndedCalls(t, srv, logs); got != "code=CANCELLED code=DEADLINE_EXCEEDED" && got != "code=CANCELLED code=CANCELLED" {
		t.Fatalf("without the fault the records say %q", got)
	}
	cfg := testConfig(t)
	cfg.Fault = events.FaultIgnoreCancel
	srv, logs = startServer(t, cfg)
	if got := clientEndedCalls(t, srv, logs); got != "code=OK code=OK" {
		t.Fatalf("with ignore-cancel the records say %q, want code=OK twice", got)
	}
}

func TestIgnoreCancelRewritesOnlyCancelledAndDeadlineCodes(t *testing.T) {
	for code, want := range map[codes.Code]string{
		codes.Canceled:         "OK",
		codes.DeadlineExceeded: "OK",
		codes.InvalidArgument:  "INVALID_ARGUMENT",
		codes.Unavailable:      "UNAVAILABLE",
		codes.OK:               "OK",
	} {
		var buf bytes.Buffer
		l := rpcLogger{log: slog.New(slog.NewTextHandler(&buf, nil)), fault: events.FaultIgnoreCancel}
		_, _ = l.unary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/m"}, func(context.Context, any) (any, error) {
			return nil, status.Error(code, "x")
		})
		if !strings.Contains(buf.String(), "code="+want+"\n") {
			t.Errorf("%v logged %q, want code=%s", code, buf.String(), want)
		}
	}
}

// The signal path (Run's context ends) takes the abrupt stop too.
func TestFaultAbruptShutdownOnRunsSignal(t *testing.T) {
	cfg := testConfig(t)
	cfg.Fault = FaultAbruptShutdown
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	line, stdout, done := runListening(t, ctx, cfg)
	addr := strings.TrimSpace(strings.TrimPrefix(line, "polystream listening on "))
	watch, err := healthpb.NewHealthClient(grpctest.Dial(t, addr)).Watch(grpctest.Context(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel() // what SIGINT/SIGTERM does in `polystream serve`
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	io.Copy(io.Discard, stdout)
	resp, err := watch.Recv()
	if err == nil || status.Convert(err).Message() == ShuttingDownMessage {
		t.Fatalf("Watch after the signal: %v %v; want the library's own status", resp, err)
	}
}

// The events faults reach the events service through --fault (go/events
// tests each in detail): unknown-client-not-found, as one example.
func TestEventsFaultsReachTheEventsService(t *testing.T) {
	cfg := testConfig(t)
	cfg.Fault = events.FaultUnknownClientNotFound
	srv, logs := startServer(t, cfg)
	client := eventsv1.NewEventServiceClient(grpctest.Dial(t, srv.Addr()))
	_, err := client.GetConnectionStatus(grpctest.Context(t), &eventsv1.SubscribeRequest{ClientId: "nobody"})
	grpctest.WantStatus(t, err, codes.NotFound, `client "nobody" not found`)
	if !strings.Contains(logs.String(), "fault=unknown-client-not-found") {
		t.Fatalf("no fault warning:\n%s", logs)
	}
}
