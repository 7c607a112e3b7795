package events

import (
	"context"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testServer is a Service behind a real gRPC server on 127.0.0.1:0.
type testServer struct {
	t      testing.TB
	svc    *Service
	srv    *grpc.Server
	addr   string
	client eventsv1.EventServiceClient // on its own connection
	ctx    context.Context             // bounds every call of the test
}

func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serveService(t, svc)
}

func serveService(t testing.TB, svc *Service) *testServer {
	t.Helper()
	srv, addr := grpctest.Serve(t, svc.Register)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	ts := &testServer{t: t, svc: svc, srv: srv, addr: addr, ctx: ctx}
	t.Cleanup(func() { // runs before Serve's cleanup, which waits for the server
		cancel()
		ts.stop()
	})
	ts.client = ts.dial()
	return ts
}

// stop ends the server and closes the service (idempotent).
func (ts *testServer) stop() {
	ts.srv.Stop()
	if err := ts.svc.Close(); err != nil {
		ts.t.Errorf("close: %v", err)
	}
}

// dial opens a new client connection with fixed 64 KiB flow-control windows
// (no BDP growth), so a consumer that stops reading stalls the server's
// sends after a known amount of data.
func (ts *testServer) dial() eventsv1.EventServiceClient {
	ts.t.Helper()
	return eventsv1.NewEventServiceClient(grpctest.Dial(ts.t, ts.addr,
		grpc.WithInitialWindowSize(1<<16),
		grpc.WithInitialConnWindowSize(1<<16),
	))
}

// subscribe opens a Subscribe stream that ends when the test does (or
// when cancel is called).
func (ts *testServer) subscribe(c eventsv1.EventServiceClient, req *eventsv1.SubscribeRequest) (grpc.ServerStreamingClient[eventsv1.Event], context.CancelFunc) {
	ts.t.Helper()
	ctx, cancel := context.WithCancel(ts.ctx)
	ts.t.Cleanup(cancel)
	stream, err := c.Subscribe(ctx, req)
	if err != nil {
		ts.t.Fatal(err)
	}
	return stream, cancel
}

// subscribed opens a stream and waits until the server has registered it.
func (ts *testServer) subscribed(c eventsv1.EventServiceClient, req *eventsv1.SubscribeRequest) (grpc.ServerStreamingClient[eventsv1.Event], context.CancelFunc) {
	ts.t.Helper()
	before := ts.status(req.ClientId).ActiveStreams
	stream, cancel := ts.subscribe(c, req)
	ts.waitStreams(req.ClientId, before+1)
	return stream, cancel
}

func (ts *testServer) status(clientID string) *eventsv1.ConnectionStatus {
	ts.t.Helper()
	st, err := ts.client.GetConnectionStatus(ts.ctx, &eventsv1.SubscribeRequest{ClientId: clientID})
	if err != nil {
		ts.t.Fatal(err)
	}
	return st
}

// waitFor polls cond (cheap, server-side state) until it holds.
func (ts *testServer) waitFor(what string, cond func() bool) {
	ts.t.Helper()
	grpctest.WaitWithin(ts.t, 15*time.Second, what, cond)
}

func (ts *testServer) waitStreams(clientID string, n int32) {
	ts.t.Helper()
	ts.waitFor(clientID+" active_streams == "+strconv.Itoa(int(n)), func() bool {
		return ts.status(clientID).ActiveStreams == n
	})
}

// publish broadcasts one event of type typ and returns the response.
func (ts *testServer) publish(typ string, opts ...func(*eventsv1.BroadcastRequest)) *eventsv1.BroadcastResponse {
	ts.t.Helper()
	req := &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: typ, Data: `{}`}}
	for _, o := range opts {
		o(req)
	}
	res, err := ts.client.Broadcast(ts.ctx, req)
	if err != nil {
		ts.t.Fatalf("broadcast %s: %v", typ, err)
	}
	return res
}

func withID(id string) func(*eventsv1.BroadcastRequest) {
	return func(r *eventsv1.BroadcastRequest) { r.Event.Id = id }
}

func withTargets(chs ...string) func(*eventsv1.BroadcastRequest) {
	return func(r *eventsv1.BroadcastRequest) { r.TargetChannels = chs }
}

func withData(data string) func(*eventsv1.BroadcastRequest) {
	return func(r *eventsv1.BroadcastRequest) { r.Event.Data = data }
}

// eventReceiver is any stream of events (Subscribe or SubscribeMultiple).
type eventReceiver interface {
	Recv() (*eventsv1.Event, error)
}

// recvLog receives until n log events (sequence > 0) arrived and returns
// them; control events are returned separately.
func recvLog(t *testing.T, stream eventReceiver, n int) (logEvents, control []*eventsv1.Event) {
	t.Helper()
	for len(logEvents) < n {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d of %d events: %v", len(logEvents), n, err)
		}
		if ev.Sequence > 0 {
			logEvents = append(logEvents, ev)
		} else {
			control = append(control, ev)
		}
	}
	return logEvents, control
}

// recvSkippingHeartbeats returns the next event that is not a heartbeat.
func recvSkippingHeartbeats(t *testing.T, stream eventReceiver) *eventsv1.Event {
	t.Helper()
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if ev.Type != typeHeartbeat {
			return ev
		}
	}
}

func seqs(evs []*eventsv1.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Sequence
	}
	return out
}
