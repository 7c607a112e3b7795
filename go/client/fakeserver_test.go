package client

import (
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
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
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := &scriptedEvents{script: script}
	srv := grpc.NewServer()
	eventsv1.RegisterEventServiceServer(srv, fake)
	go srv.Serve(lis)
	conn, err := Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return fake, conn
}

func event(id string, seq uint64) *eventsv1.Event {
	return &eventsv1.Event{Id: id, Type: "test.event", Sequence: seq}
}

func heartbeat() *eventsv1.Event { return &eventsv1.Event{Type: "heartbeat"} }
