package conformancedriver

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// fakeEvents is an EventService whose Subscribe plays one script per call.
type fakeEvents struct {
	eventsv1.UnimplementedEventServiceServer
	mu      sync.Mutex
	calls   int
	scripts []func(req *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error
}

func (f *fakeEvents) Subscribe(req *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error {
	f.mu.Lock()
	n := f.calls
	f.calls++
	f.mu.Unlock()
	if n >= len(f.scripts) {
		<-stream.Context().Done()
		return nil
	}
	return f.scripts[n](req, stream)
}

func startFake(t *testing.T, f *fakeEvents) string {
	t.Helper()
	_, addr := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { eventsv1.RegisterEventServiceServer(r, f) })
	return addr
}

func event(seq uint64, id string) *eventsv1.Event {
	return &eventsv1.Event{Sequence: seq, Id: id, Type: "user.created"}
}

func TestHeadersTrailersAndRequestMetadata(t *testing.T) {
	target := startFake(t, &fakeEvents{scripts: []func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error{
		func(_ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
			md, _ := metadata.FromIncomingContext(s.Context())
			_ = s.SendHeader(metadata.Pairs("x-echo", md.Get("x-test")[0]))
			s.SetTrailer(metadata.Pairs("x-trailer", "t"))
			return s.Send(event(1, "e1"))
		},
	}})
	obs := runAll(t, startDriver(t), &pb.RunRequest{Target: target, Metadata: map[string]string{"x-test": "v"},
		Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{Request: &eventsv1.SubscribeRequest{ClientId: "c"}}}})
	wantCode(t, obs, "OK")
	f := finished(obs)
	if f.GetHeaders()["x-echo"] != "v" || f.GetTrailers()["x-trailer"] != "t" {
		t.Fatalf("headers %v trailers %v", f.GetHeaders(), f.GetTrailers())
	}
	if obs[0].GetConnected() == nil || obs[1].GetReceived().GetId() != "e1" {
		t.Fatalf("observations %v", obs)
	}
}

func TestResilientReconnectsWithBackoff(t *testing.T) {
	var resumedFrom string
	target := startFake(t, &fakeEvents{scripts: []func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error{
		func(_ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
			_ = s.Send(event(1, "e1"))
			return status.Error(codes.Unavailable, "server is shutting down")
		},
		func(req *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
			resumedFrom = req.GetLastEventId()
			_ = s.Send(event(1, "e1")) // a duplicate: dropped by the client
			return s.Send(event(2, "e2"))
		},
	}})
	obs := runAll(t, startDriver(t), &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
		Request: &eventsv1.SubscribeRequest{ClientId: "c"}, Resilient: true, StopAfter: 2,
		Backoff: &pb.Backoff{BaseMs: 20, MaxMs: 100, Multiplier: 2, MaxRetries: 3},
	}}})
	wantCode(t, obs, "OK")
	var kinds []string
	for _, o := range obs {
		switch {
		case o.GetConnected() != nil:
			kinds = append(kinds, "connected")
		case o.GetDisconnected() != nil:
			d := o.GetDisconnected()
			if d.GetCode() != "UNAVAILABLE" || !d.GetWillRetry() || d.GetDelayMs() > 24 || d.GetMessage() != "server is shutting down" {
				t.Fatalf("disconnected %v", d)
			}
			kinds = append(kinds, "disconnected")
		case o.GetReceived() != nil:
			kinds = append(kinds, o.GetReceived().GetId())
		case o.GetFinished() != nil:
			kinds = append(kinds, "finished")
		}
	}
	if got := strings.Join(kinds, " "); got != "connected e1 disconnected connected e2 finished" {
		t.Fatalf("observations: %s", got)
	}
	if c := obs[3].GetConnected(); c.GetAttempt() != 1 || c.GetLastEventId() != "e1" || resumedFrom != "e1" {
		t.Fatalf("reconnect %v, server saw last_event_id %q", c, resumedFrom)
	}
}

func TestResilientGivesUpOnFinalError(t *testing.T) {
	target := startFake(t, &fakeEvents{scripts: []func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error{
		func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error {
			return status.Error(codes.PermissionDenied, "no")
		},
	}})
	obs := runAll(t, startDriver(t), &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
		Request: &eventsv1.SubscribeRequest{ClientId: "c"}, Resilient: true,
	}}})
	wantCode(t, obs, "PERMISSION_DENIED")
	d := obs[len(obs)-2].GetDisconnected()
	if d == nil || d.GetWillRetry() || d.GetCode() != "PERMISSION_DENIED" {
		t.Fatalf("observations %v", obs)
	}
}

func TestCancellingRunCancelsTheCall(t *testing.T) {
	serverSaw := make(chan error, 1)
	target := startFake(t, &fakeEvents{scripts: []func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error{
		func(_ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
			_ = s.Send(event(1, "e1"))
			<-s.Context().Done()
			serverSaw <- s.Context().Err()
			return nil
		},
	}})
	for _, resilient := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := startDriver(t).Run(ctx, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
			Request: &eventsv1.SubscribeRequest{ClientId: "c"}, Resilient: resilient}}})
		if err != nil {
			t.Fatal(err)
		}
		for {
			o, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if o.GetReceived() != nil {
				break
			}
		}
		cancel()
		select {
		case err := <-serverSaw:
			if err != context.Canceled {
				t.Fatalf("server saw %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("resilient=%v: the server never saw the call end after Run was cancelled", resilient)
		}
		// The next Subscribe (resilient run) plays the same script again.
		target = startFake(t, &fakeEvents{scripts: []func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error{
			func(_ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
				_ = s.Send(event(1, "e1"))
				<-s.Context().Done()
				serverSaw <- s.Context().Err()
				return nil
			},
		}})
	}
}

func TestResilientDeadline(t *testing.T) {
	target := startFake(t, &fakeEvents{scripts: []func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error{
		func(_ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
			_ = s.Send(event(1, "e1"))
			<-s.Context().Done()
			return nil
		},
	}})
	obs := runAll(t, startDriver(t), &pb.RunRequest{Target: target, DeadlineMs: 300, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
		Request: &eventsv1.SubscribeRequest{ClientId: "c"}, Resilient: true,
	}}})
	wantCode(t, obs, "DEADLINE_EXCEEDED")
	d := obs[len(obs)-2].GetDisconnected()
	if len(obs) != 4 || d.GetCode() != "DEADLINE_EXCEEDED" || d.GetWillRetry() {
		t.Fatalf("observations %v", obs)
	}
}

func TestResilientRefusesBadConfigWithTheServersMessage(t *testing.T) {
	obs := runAll(t, startDriver(t), &pb.RunRequest{Target: "127.0.0.1:1", Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
		Request: &eventsv1.SubscribeRequest{ClientId: "c", HeartbeatInterval: -5}, Resilient: true,
	}}})
	wantCode(t, obs, "INVALID_ARGUMENT")
	if m := finished(obs).GetMessage(); m != "heartbeat_interval must be >= 0, got -5" {
		t.Fatalf("message %q", m)
	}
}

// The server must see the client's cancel (RST_STREAM), not the connection
// closing under the call, even when Run ends right after it.
func TestCancelAfterReachesTheServerAsCancel(t *testing.T) {
	sendErr := make(chan error, 1)
	target := startFake(t, &fakeEvents{scripts: []func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error{
		func(_ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
			for i := uint64(1); ; i++ {
				if err := s.Send(event(i, fmt.Sprint("e", i))); err != nil {
					sendErr <- err
					return err
				}
			}
		},
	}})
	obs := runAll(t, startDriver(t), &pb.RunRequest{Target: target, CancelAfter: 5, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
		Request: &eventsv1.SubscribeRequest{ClientId: "c"}}}})
	wantCode(t, obs, "CANCELLED")
	select {
	case err := <-sendErr:
		if status.Code(err) != codes.Canceled {
			t.Fatalf("the server's Send failed with %v, want CANCELLED", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server never saw the call end")
	}
}
