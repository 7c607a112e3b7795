package events

import (
	"context"
	"testing"
	"time"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// The response headers arrive as soon as the subscription is registered,
// before any event: a client that has them is subscribed (no polling of
// GetConnectionStatus needed). Heartbeats are 30 s away, so without the
// headers being sent at once Header() would block past the 5 s bound.

func TestSubscribeSendsHeadersOnceRegistered(t *testing.T) {
	ts := startServer(t, Config{})
	ctx, cancel := context.WithTimeout(ts.ctx, 5*time.Second)
	defer cancel()
	stream, err := ts.client.Subscribe(ctx, &eventsv1.SubscribeRequest{ClientId: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatalf("headers: %v", err)
	}
	checkSubscribed(t, ts, "h", stream)
}

func TestSubscribeMultipleSendsHeadersOnceRegistered(t *testing.T) {
	ts := startServer(t, Config{})
	ctx, cancel := context.WithTimeout(ts.ctx, 5*time.Second)
	defer cancel()
	stream, err := ts.client.SubscribeMultiple(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&eventsv1.SubscribeRequest{ClientId: "hm"}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatalf("headers: %v", err)
	}
	checkSubscribed(t, ts, "hm", stream)
}

// checkSubscribed: right after the headers, the server counts the stream
// and a publish reaches it.
func checkSubscribed(t *testing.T, ts *testServer, clientID string, stream eventReceiver) {
	t.Helper()
	if st := ts.status(clientID); st.ActiveStreams != 1 {
		t.Fatalf("after headers: active_streams %d, want 1", st.ActiveStreams)
	}
	res := ts.publish("h.event")
	if res.Recipients != 1 {
		t.Fatalf("recipients %d, want 1", res.Recipients)
	}
	if ev := recvSkippingHeartbeats(t, stream); ev.Id != res.EventId {
		t.Fatalf("got %v, want %s", ev, res.EventId)
	}
}
