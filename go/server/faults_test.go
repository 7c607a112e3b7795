package server

import (
	"context"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
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
