package server

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// The listening line prints the host as given: 0.0.0.0 stays 0.0.0.0
// (the listener itself reports [::]).
func TestListeningLinePrintsTheHostAsGiven(t *testing.T) {
	cfg := testConfig(t)
	cfg.Host = "0.0.0.0"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	line, stdout, done := runListening(t, ctx, cfg)
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "polystream listening on ")
	host, port, err := net.SplitHostPort(addr)
	if !ok || err != nil || host != "0.0.0.0" || port == "0" {
		t.Fatalf("listening line %q: want polystream listening on 0.0.0.0:<real port>", line)
	}
	health := healthpb.NewHealthClient(grpctest.Dial(t, net.JoinHostPort("127.0.0.1", port)))
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	io.Copy(io.Discard, stdout)
}

// serverWindows opens a raw HTTP/2 connection and reports the server's
// SETTINGS_INITIAL_WINDOW_SIZE (0 if it sends none: HTTP/2's default) and
// the growth of its connection window (WINDOW_UPDATE on stream 0) that
// arrive before the answer to a PING.
func serverWindows(t *testing.T, addr string) (streamWindow, connIncrement uint32) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if err := fr.WritePing(false, [8]byte{1}); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's frames: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				streamWindow = v
			}
			if err := fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connIncrement += f.Increment
			}
		case *http2.PingFrame:
			if f.IsAck() {
				return streamWindow, connIncrement
			}
		}
	}
}

func TestInitialWindowSizeFixesStreamAndConnectionWindows(t *testing.T) {
	cfg := testConfig(t)
	cfg.InitialWindowSize = 1 << 20
	srv, _ := startServer(t, cfg)
	stream, conn := serverWindows(t, srv.Addr())
	if stream != 1<<20 || conn != 1<<20-65535 {
		t.Fatalf("stream window %d, connection window 65535+%d; want both 1048576", stream, conn)
	}
}

func TestInitialWindowSizeZeroLeavesTheLibraryDefaults(t *testing.T) {
	srv, _ := startServer(t, testConfig(t))
	stream, conn := serverWindows(t, srv.Addr())
	if stream == 1<<20 || conn == 1<<20-65535 {
		t.Fatalf("stream window %d, connection increment %d: fixed windows without the flag", stream, conn)
	}
}

func TestStartRefusesAnUnknownFault(t *testing.T) {
	cfg := testConfig(t)
	cfg.Fault = "x"
	_, err := Start(cfg, io.Discard)
	want := `--fault must be one of reorder, drop, ignore-cancel, forget-history, no-heartbeat, unknown-client-not-found, duplicate-broadcast, no-replay-gap, miscount-drops, unbounded-queue, wrong-status, strict-keepalive, skip-sequence, lose-request, no-metadata, abrupt-shutdown, unbounded-window; got "x"`
	if err == nil || err.Error() != want {
		t.Fatalf("Start: %v, want %s", err, want)
	}
}

// --fault reaches the events service: with drop, the 100th event of a
// stream never arrives (go/events tests every fault in detail).
func TestFaultFlagReachesTheEventsService(t *testing.T) {
	cfg := testConfig(t)
	cfg.Fault = "drop"
	cfg.Backpressure = "block"
	srv, logs := startServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	events := eventsv1.NewEventServiceClient(grpctest.Dial(t, srv.Addr()))
	stream, err := events.Subscribe(ctx, &eventsv1.SubscribeRequest{ClientId: "f"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil { // subscribed
		t.Fatal(err)
	}
	var published []uint64
	for range 101 {
		res, err := events.Broadcast(ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "f"}})
		if err != nil {
			t.Fatal(err)
		}
		published = append(published, res.Sequence)
	}
	var got []uint64
	for len(got) < 100 {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		if ev.Sequence > 0 {
			got = append(got, ev.Sequence)
		}
	}
	if got[98] != published[98] || got[99] != published[100] {
		t.Fatalf("events 99..100 received %v, want %d then %d (the 100th dropped)", got[98:], published[98], published[100])
	}
	if !strings.Contains(logs.String(), "SELF-TEST FAULT ACTIVE") {
		t.Errorf("no warning that a fault is active in the log:\n%s", logs)
	}
}

// --upload-read-delay reaches the chat service: an upload of 3 messages
// takes at least 3 × 100 ms (go/chat tests it in detail).
func TestUploadReadDelayReachesTheChatService(t *testing.T) {
	cfg := testConfig(t)
	cfg.UploadReadDelay = 100 * time.Millisecond
	srv, _ := startServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	began := time.Now()
	up, err := chatv1.NewChatServiceClient(grpctest.Dial(t, srv.Addr())).UploadMessages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := up.Send(&chatv1.Message{User: "u", Content: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := up.CloseAndRecv(); err != nil || r.MessageCount != 3 {
		t.Fatalf("upload: %v %v", r, err)
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Fatalf("upload of 3 took %v, want >= 300ms under --upload-read-delay 100ms", took)
	}
}
