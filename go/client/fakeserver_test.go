package client

import (
	"sync"
	"testing"

	"google.golang.org/grpc"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// scriptedEvents is an EventService whose n-th Subscribe call (0-based)
// runs script(n, ...): tests use it to inject the faults a real server
// would only show by chance.
type scriptedEvents struct {
	eventsv1.UnimplementedEventServiceServer
	script func(call int, req *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error

	mu       sync.Mutex
	requests []*eventsv1.SubscribeRequest
}

func (f *scriptedEvents) Subscribe(req *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error {
	f.mu.Lock()
	call := len(f.requests)
	f.requests = append(f.requests, req)
	f.mu.Unlock()
	return f.script(call, req, stream)
}

func (f *scriptedEvents) calls() []*eventsv1.SubscribeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*eventsv1.SubscribeRequest(nil), f.requests...)
}

// startScripted serves script on 127.0.0.1 and returns a connection to it.
func startScripted(t *testing.T, script func(int, *eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error) (*scriptedEvents, *grpc.ClientConn) {
	t.Helper()
	fake := &scriptedEvents{script: script}
	_, addr := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { eventsv1.RegisterEventServiceServer(r, fake) })
	conn, err := Dial(addr) // the package's own Dial, as users call it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return fake, conn
}

func event(id string, seq uint64) *eventsv1.Event {
	return &eventsv1.Event{Id: id, Type: "test.event", Sequence: seq}
}

func heartbeat() *eventsv1.Event { return &eventsv1.Event{Type: "heartbeat"} }
