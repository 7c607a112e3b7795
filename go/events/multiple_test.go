package events

import (
	"io"
	"slices"
	"testing"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

func TestSubscribeMultipleReplacesFiltersAndChannel(t *testing.T) {
	ts := startServer(t, Config{})
	old := ts.publish("a.0")
	stream, err := ts.client.SubscribeMultiple(ts.ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The first request subscribes, resuming like Subscribe does.
	if err := stream.Send(&eventsv1.SubscribeRequest{ClientId: "m", EventTypes: []string{"a.*"}, LastEventId: "unknown"}); err != nil {
		t.Fatal(err)
	}
	if ev := recvSkippingHeartbeats(t, stream); ev.Type != typeReplayGap || ev.Metadata["oldest_retained_id"] != old.EventId {
		t.Fatalf("got %v, want a replay gap", ev)
	}
	if ev := recvSkippingHeartbeats(t, stream); ev.Id != old.EventId {
		t.Fatalf("got %v, want the replay of a.0", ev)
	}
	ts.waitStreams("m", 1)
	ts.publish("b.1")
	ts.publish("a.1")
	if ev := recvSkippingHeartbeats(t, stream); ev.Type != "a.1" || ev.Channel != "default" {
		t.Fatalf("got %v, want a.1 on default", ev)
	}

	// A later request replaces filters and channel; its last_event_id is ignored.
	if err := stream.Send(&eventsv1.SubscribeRequest{ClientId: "m", EventTypes: []string{"b.*", "c"}, Channel: "x", LastEventId: old.EventId}); err != nil {
		t.Fatal(err)
	}
	ack := recvSkippingHeartbeats(t, stream)
	if ack.Type != "polystream.subscription_updated" || ack.Sequence != 0 || ack.Id != "" || ack.Channel != "x" ||
		ack.Metadata["channel"] != "x" || ack.Metadata["event_types"] != "b.*,c" {
		t.Fatalf("acknowledgement %v", ack)
	}
	ts.publish("a.2")
	ts.publish("b.2", withTargets("default"))
	want := ts.publish("b.3", withTargets("x"))
	if ev := recvSkippingHeartbeats(t, stream); ev.Id != want.EventId || ev.Channel != "x" {
		t.Fatalf("got %v, want b.3 on x only", ev)
	}
	if st := ts.status("m"); st.ActiveStreams != 1 || st.EventsReceived != 3 {
		t.Fatalf("status %v", st)
	}

	// Half-close ends the stream with OK once what was queued before it
	// (here the last acknowledgement) is delivered.
	if err := stream.Send(&eventsv1.SubscribeRequest{ClientId: "m", EventTypes: []string{"z"}}); err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	if ev := recvSkippingHeartbeats(t, stream); ev.Type != typeSubscriptionUpdated || ev.Channel != "default" || ev.Metadata["event_types"] != "z" {
		t.Fatalf("got %v, want the last acknowledgement before the end", ev)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("got %v, want io.EOF (status OK)", err)
	}
	ts.waitStreams("m", 0)
}

// TestSubscribeMultipleUpdateIsAtomic switches filters while events are
// published: every event before the acknowledgement matches the old
// filter, every one after it the new one, and none is lost at the switch.
func TestSubscribeMultipleUpdateIsAtomic(t *testing.T) {
	const total = 2000
	ts := startServer(t, Config{QueueSize: total})
	stream, err := ts.client.SubscribeMultiple(ts.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&eventsv1.SubscribeRequest{ClientId: "m", EventTypes: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	ts.waitStreams("m", 1)
	types := make([]string, total+1) // by sequence: odd a, even b
	for s := 1; s <= total; s++ {
		types[s] = map[bool]string{true: "a", false: "b"}[s%2 == 1]
	}
	publisher := make(chan struct{})
	go func() {
		defer close(publisher)
		for s := 1; s <= total; s++ {
			if _, err := ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: types[s]}}); err != nil {
				t.Error(err)
				return
			}
		}
	}()

	var before, after []uint64
	acked := false
	for {
		ev := recvSkippingHeartbeats(t, stream)
		switch {
		case ev.Type == typeSubscriptionUpdated:
			acked = true
		case !acked:
			before = append(before, ev.Sequence)
			if len(before) == 200 {
				if err := stream.Send(&eventsv1.SubscribeRequest{ClientId: "m", EventTypes: []string{"b"}}); err != nil {
					t.Fatal(err)
				}
			}
		default:
			after = append(after, ev.Sequence)
		}
		if ev.Sequence == total {
			break
		}
	}
	<-publisher
	// There is a switch point X: before = every a (odd) <= X, after =
	// every b (even) > X.
	if len(after) == 0 {
		t.Fatal("no event after the switch")
	}
	split := func(x uint64) (wantBefore, wantAfter []uint64) {
		for s := uint64(1); s <= total; s++ {
			if s <= x && s%2 == 1 {
				wantBefore = append(wantBefore, s)
			}
			if s > x && s%2 == 0 {
				wantAfter = append(wantAfter, s)
			}
		}
		return wantBefore, wantAfter
	}
	found := false
	for x := uint64(0); x < after[0]; x++ {
		wb, wa := split(x)
		found = found || (slices.Equal(before, wb) && slices.Equal(after, wa))
	}
	if !found {
		t.Fatalf("no switch point explains before %v, after %v", before, after)
	}
	if len(after) == 0 || after[len(after)-1] != total {
		t.Fatalf("after the switch: %v", after)
	}
}
