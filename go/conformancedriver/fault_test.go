package conformancedriver

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// Each fault of docs/contract.md ("Driver faults") is shown to change what
// the driver does: the same Run with and without the fault.

func startFaultyDriver(t testing.TB, f Fault) pb.ClientDriverClient {
	t.Helper()
	_, addr := grpctest.Serve(t, func(r grpc.ServiceRegistrar) {
		pb.RegisterClientDriverServer(r, &Driver{Fault: f})
	})
	return pb.NewClientDriverClient(grpctest.Dial(t, addr))
}

func TestParseFault(t *testing.T) {
	for _, f := range Faults {
		if got, err := ParseFault(string(f)); got != f || err != nil {
			t.Fatalf("ParseFault(%q) = %q, %v", f, got, err)
		}
	}
	if got, err := ParseFault(""); got != "" || err != nil {
		t.Fatalf(`ParseFault("") = %q, %v; want no fault`, got, err)
	}
	_, err := ParseFault("x")
	want := `--fault must be one of no-deadline, retry-all, no-backoff, blind; got "x"`
	if err == nil || err.Error() != want {
		t.Fatalf("ParseFault(x) error %v, want %s", err, want)
	}
}

// slowEvents answers Broadcast after 300 ms and sends one event on
// Subscribe after 300 ms, then ends the stream.
type slowEvents struct {
	eventsv1.UnimplementedEventServiceServer
}

func (slowEvents) Broadcast(ctx context.Context, _ *eventsv1.BroadcastRequest) (*eventsv1.BroadcastResponse, error) {
	select {
	case <-time.After(300 * time.Millisecond):
		return &eventsv1.BroadcastResponse{EventId: "e1"}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (slowEvents) Subscribe(_ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
	select {
	case <-time.After(300 * time.Millisecond):
		return s.Send(event(1, "e1"))
	case <-s.Context().Done():
		return status.FromContextError(s.Context().Err()).Err() // never OK: see silentEvents
	}
}

func TestFaultNoDeadline(t *testing.T) {
	_, target := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { eventsv1.RegisterEventServiceServer(r, slowEvents{}) })
	unary := &pb.RunRequest{Target: target, DeadlineMs: 1, Scenario: &pb.RunRequest_Unary{Unary: &pb.Unary{
		Method: "/polystream.events.v1.EventService/Broadcast", RequestJson: `{}`}}}
	stream := &pb.RunRequest{Target: target, DeadlineMs: 50, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
		Request: &eventsv1.SubscribeRequest{ClientId: "c"}}}}
	resilient := &pb.RunRequest{Target: target, DeadlineMs: 50, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
		Request: &eventsv1.SubscribeRequest{ClientId: "c"}, Resilient: true, StopAfter: 1}}}
	for _, c := range []struct {
		fault Fault
		want  string
	}{{"", "DEADLINE_EXCEEDED"}, {FaultNoDeadline, "OK"}} {
		d := startFaultyDriver(t, c.fault)
		for name, req := range map[string]*pb.RunRequest{"unary": unary, "subscribe": stream, "resilient": resilient} {
			if got := finished(runAll(t, d, req)).GetCode(); got != c.want {
				t.Errorf("fault %q, %s with deadline_ms %d: finished %s, want %s", c.fault, name, req.GetDeadlineMs(), got, c.want)
			}
		}
	}
}

// TestFaultNoDeadlineAgainstRealServer: a unary call with deadline_ms 1
// succeeds against a real server only because the deadline is ignored.
func TestFaultNoDeadlineAgainstRealServer(t *testing.T) {
	s := servers(t)[0]
	target := startServer(t, s)
	obs := runAll(t, startFaultyDriver(t, FaultNoDeadline), &pb.RunRequest{Target: target, DeadlineMs: 1,
		Scenario: &pb.RunRequest_Unary{Unary: &pb.Unary{Method: "/polystream.events.v1.EventService/Broadcast",
			RequestJson: `{"event":{"type":"t","data":"{}"},"target_channels":["no-deadline"]}`}}})
	wantCode(t, obs, "OK")
}

func disconnects(obs []*pb.Observation) []*pb.Disconnected {
	var out []*pb.Disconnected
	for _, o := range obs {
		if d := o.GetDisconnected(); d != nil {
			out = append(out, d)
		}
	}
	return out
}

func failing(code codes.Code, n int) *fakeEvents {
	f := &fakeEvents{}
	for range n {
		f.scripts = append(f.scripts, func(*eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error {
			return status.Error(code, "refused")
		})
	}
	return f
}

func TestFaultRetryAll(t *testing.T) {
	for _, c := range []struct {
		fault Fault
		calls int
	}{{"", 1}, {FaultRetryAll, 3}} {
		f := failing(codes.InvalidArgument, 10)
		obs := runAll(t, startFaultyDriver(t, c.fault), &pb.RunRequest{Target: startFake(t, f),
			Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
				Request: &eventsv1.SubscribeRequest{ClientId: "c"}, Resilient: true,
				Backoff: &pb.Backoff{BaseMs: 10, MaxMs: 50, Multiplier: 2, MaxRetries: 2}}}})
		wantCode(t, obs, "INVALID_ARGUMENT")
		f.mu.Lock()
		calls := f.calls
		f.mu.Unlock()
		ds := disconnects(obs)
		if calls != c.calls || len(ds) != c.calls {
			t.Fatalf("fault %q: %d calls, %d disconnects, want %d (max_retries 2): %v", c.fault, calls, len(ds), c.calls, obs)
		}
		for i, d := range ds {
			if d.GetCode() != "INVALID_ARGUMENT" || d.GetWillRetry() != (i < len(ds)-1) {
				t.Fatalf("fault %q: disconnect %d is %v", c.fault, i, d)
			}
		}
	}
}

func TestFaultNoBackoff(t *testing.T) {
	for _, c := range []struct {
		fault    Fault
		constant bool
	}{{"", false}, {FaultNoBackoff, true}} {
		obs := runAll(t, startFaultyDriver(t, c.fault), &pb.RunRequest{Target: startFake(t, failing(codes.Unavailable, 10)),
			Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
				Request: &eventsv1.SubscribeRequest{ClientId: "c"}, Resilient: true,
				Backoff: &pb.Backoff{BaseMs: 20, MaxMs: 2000, Multiplier: 3, MaxRetries: 4}}}})
		wantCode(t, obs, "UNAVAILABLE")
		var delays []int64
		for _, d := range disconnects(obs) {
			if d.GetWillRetry() {
				delays = append(delays, d.GetDelayMs())
			}
		}
		if len(delays) != 4 {
			t.Fatalf("fault %q: delays %v, want 4", c.fault, delays)
		}
		for i, ms := range delays {
			if c.constant && ms != 20 {
				t.Fatalf("no-backoff: delays %v, want exactly base_ms 20 each time", delays)
			}
			// Without the fault retry 4 waits 20*3^3 = 540 ms +-20 % jitter.
			if !c.constant && i == 3 && ms < 400 {
				t.Fatalf("backoff: delays %v, want growth by 3", delays)
			}
		}
	}
}

// silentEvents accepts Subscribe and sends nothing until the call ends.
type silentEvents struct {
	eventsv1.UnimplementedEventServiceServer
}

func (silentEvents) Subscribe(_ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
	<-s.Context().Done()
	// Not OK: the server's copy of the deadline may end the call before the
	// client's does.
	return status.FromContextError(s.Context().Err()).Err()
}

// TestFaultBlindWatchdog: a silent stream (heartbeat 1 s) is given up after
// 2 s by the watchdog; blind waits on it until the deadline.
func TestFaultBlindWatchdog(t *testing.T) {
	_, target := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { eventsv1.RegisterEventServiceServer(r, silentEvents{}) })
	for _, c := range []struct {
		fault   Fault
		stalled bool
	}{{"", true}, {FaultBlind, false}} {
		t.Run(string(c.fault), func(t *testing.T) {
			t.Parallel()
			obs := runAll(t, startFaultyDriver(t, c.fault), &pb.RunRequest{Target: target, DeadlineMs: 3500,
				Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
					Request: &eventsv1.SubscribeRequest{ClientId: "c", HeartbeatInterval: 1}, Resilient: true,
					Backoff: &pb.Backoff{BaseMs: 10, MaxRetries: -1}}}})
			wantCode(t, obs, "DEADLINE_EXCEEDED")
			stalled := false
			for _, d := range disconnects(obs) {
				stalled = stalled || (d.GetCode() == "UNAVAILABLE" && d.GetWillRetry())
			}
			if stalled != c.stalled {
				t.Fatalf("fault %q: watchdog fired = %v, want %v: %v", c.fault, stalled, c.stalled, obs)
			}
		})
	}
}

// pingCounter is a listener that counts the HTTP/2 PING frames (not ACKs)
// its clients send.
type pingCounter struct {
	net.Listener
	pings atomic.Int32
}

func (l *pingCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go l.count(pr)
	return &teeConn{Conn: c, w: pw}, nil
}

func (l *pingCounter) count(r io.Reader) {
	if _, err := io.CopyN(io.Discard, r, 24); err != nil { // the client preface
		return
	}
	var h [9]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		length := int64(h[0])<<16 | int64(binary.BigEndian.Uint16(h[1:3]))
		if h[3] == 0x6 && h[4]&0x1 == 0 { // PING without ACK
			l.pings.Add(1)
		}
		if _, err := io.CopyN(io.Discard, r, length); err != nil {
			return
		}
	}
}

// teeConn copies what the server reads to w.
type teeConn struct {
	net.Conn
	w *io.PipeWriter
}

func (c *teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		_, _ = c.w.Write(p[:n])
	}
	if err != nil {
		_ = c.w.CloseWithError(err)
	}
	return n, err
}

// TestFaultBlindKeepalive: over an idle stream the driver pings (grpc-go's
// shortest keepalive is 10 s); blind sends no ping.
func TestFaultBlindKeepalive(t *testing.T) {
	if testing.Short() {
		t.Skip("holds an idle stream for 12 s")
	}
	for _, c := range []struct {
		fault Fault
		pings bool
	}{{"", true}, {FaultBlind, false}} {
		t.Run(string(c.fault), func(t *testing.T) {
			t.Parallel()
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			counter := &pingCounter{Listener: lis}
			srv := grpc.NewServer()
			eventsv1.RegisterEventServiceServer(srv, silentEvents{})
			go func() { _ = srv.Serve(counter) }()
			t.Cleanup(srv.Stop)
			obs := runAll(t, startFaultyDriver(t, c.fault), &pb.RunRequest{Target: lis.Addr().String(),
				DeadlineMs: 12000, KeepaliveTimeMs: 1000,
				Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{Request: &eventsv1.SubscribeRequest{ClientId: "c"}}}})
			wantCode(t, obs, "DEADLINE_EXCEEDED")
			if n := counter.pings.Load(); (n > 0) != c.pings {
				t.Fatalf("fault %q: the client sent %d pings over 12 idle seconds", c.fault, n)
			}
		})
	}
}
