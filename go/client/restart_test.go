package client_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/polystream/polystream/go/client"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/server"
)

// startServer runs a real polystream server on 127.0.0.1 (port 0 = any).
func startServer(t *testing.T, dataDir string, port int) *server.Server {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.Port = port
	cfg.DataDir = dataDir
	cfg.ShutdownGrace = 2 * time.Second
	srv, err := server.Start(cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown() })
	return srv
}

func publish(t *testing.T, ctx context.Context, events eventsv1.EventServiceClient, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		_, err := events.Broadcast(ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "test.n", Data: strconv.Itoa(i)}}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}

// A graceful restart of a server with a data dir: the subscriber is cut
// off with UNAVAILABLE, retries while the port is closed, resumes after
// its last event and sees every event once, in order.
func TestResumeAcrossServerRestartWithoutLossOrDuplicate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dataDir := t.TempDir()
	first := startServer(t, dataDir, 0)
	_, portText, _ := net.SplitHostPort(first.Addr())
	port, _ := strconv.Atoi(portText)

	conn, err := client.Dial(first.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	events := eventsv1.NewEventServiceClient(conn)

	connected := make(chan int, 10)
	disconnects := make(chan error, 100)
	sub, err := client.NewSubscriber(conn, client.SubscriberConfig{
		ClientID:     "restart-test",
		Backoff:      client.Backoff{Base: 50 * time.Millisecond, Max: 500 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxRetries: -1},
		OnConnect:    func(attempt int) { connected <- attempt },
		OnDisconnect: func(err error, _ int, _ time.Duration) { disconnects <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	received := make(chan *eventsv1.Event, 100)
	runDone := make(chan error, 1)
	go func() {
		for ev, err := range sub.Events(ctx) {
			if err != nil {
				runDone <- err
				return
			}
			received <- ev
		}
		runDone <- nil
	}()
	<-connected
	waitConnected(t, ctx, events, "restart-test")
	publish(t, ctx, events, 1, 5)
	got := collect(t, received, 5)

	if err := first.Shutdown(); err != nil {
		t.Fatal(err)
	}
	startServer(t, dataDir, port)
	// Published before or after the subscriber is back: resume covers both.
	publish(t, ctx, events, 6, 10)
	got = append(got, collect(t, received, 5)...)
	for i, ev := range got {
		if ev.Data != strconv.Itoa(i+1) || ev.Sequence != uint64(i+1) {
			t.Fatalf("event %d is %q (sequence %d): want data %d in order", i, ev.Data, ev.Sequence, i+1)
		}
	}
	select {
	case ev := <-received:
		t.Fatalf("extra event after the 10: %v", ev)
	case <-time.After(300 * time.Millisecond):
	}
	if err := <-disconnects; err == nil {
		t.Fatal("no disconnect reported")
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Fatalf("subscription ended with %v", err)
	}
}

// waitConnected waits until the server has registered the subscription,
// so the first events published are live for it.
func waitConnected(t *testing.T, ctx context.Context, events eventsv1.EventServiceClient, clientID string) {
	t.Helper()
	for {
		st, err := events.GetConnectionStatus(ctx, &eventsv1.SubscribeRequest{ClientId: clientID})
		if err != nil {
			t.Fatal(err)
		}
		if st.Connected {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func collect(t *testing.T, received <-chan *eventsv1.Event, n int) []*eventsv1.Event {
	t.Helper()
	var got []*eventsv1.Event
	timeout := time.After(20 * time.Second)
	for len(got) < n {
		select {
		case ev := <-received:
			got = append(got, ev)
		case <-timeout:
			t.Fatalf("got %d of %d events: %v", len(got), n, fmt.Sprint(got))
		}
	}
	return got
}
