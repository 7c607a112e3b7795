package events

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// Each self-test fault shows its effect over a real listener; without the
// fault the same steps give the correct result (the other tests).

func TestFaultUnknownIsRefused(t *testing.T) {
	_, err := New(Config{Fault: "x"})
	want := `events: fault must be one of reorder, drop, ignore-cancel, forget-history, no-heartbeat, ` +
		`unknown-client-not-found, duplicate-broadcast, no-replay-gap, miscount-drops, unbounded-queue; got "x"`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

func TestNoFaultByDefault(t *testing.T) {
	svc, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if svc.fault != "" || newFaultDelivery(svc.fault) != nil || svc.keepCancelled() || !svc.sendsHeartbeats() ||
		svc.hub.repeatIDs || svc.miscountsDrops() || svc.subscriberQueueSize() != 256 || svc.replayGap(&replayGap{}) == nil {
		t.Fatalf("a fault is active by default: %q", svc.fault)
	}
}

// publishN publishes n events and returns their sequences.
func publishN(ts *testServer, n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = ts.publish("f.event").Sequence
	}
	return out
}

func TestFaultReorderSwapsEveryHundredthWithTheNext(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultReorder, Policy: Block, QueueSize: 1000})
	stream, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "r"})
	pub := publishN(ts, 200)

	start := time.Now()
	got, _ := recvLog(t, stream, 200)
	// 100 waits for 101; 200 has no successor and is sent alone after
	// reorderHoldMax: late, not lost.
	want := slices.Concat(pub[:99], []uint64{pub[100], pub[99]}, pub[101:])
	if !slices.Equal(seqs(got), want) {
		t.Fatalf("got %v\nwant %v", seqs(got), want)
	}
	if waited := time.Since(start); waited < reorderHoldMax/2 {
		t.Fatalf("the 200th event came after %v, want it held about %v", waited, reorderHoldMax)
	}
	// Counted once Send returned, which may be just after the client has it.
	ts.waitFor("events_received == 200", func() bool { return ts.status("r").EventsReceived == 200 })
}

func TestFaultReorderCountsReplayedEventsToo(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultReorder})
	pub := publishN(ts, 150)
	stream, _ := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "r", LastEventId: "unknown"})
	got, _ := recvLog(t, stream, 150)
	want := slices.Concat(pub[:99], []uint64{pub[100], pub[99]}, pub[101:])
	if !slices.Equal(seqs(got), want) {
		t.Fatalf("got %v\nwant %v", seqs(got), want)
	}
}

func TestFaultDropSkipsEveryHundredthSilently(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultDrop, Policy: Block, QueueSize: 1000})
	stream, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "d"})
	pub := publishN(ts, 250)
	last := ts.publish("f.sentinel")

	got, control := recvLog(t, stream, 249)
	want := slices.Concat(pub[:99], pub[100:199], pub[200:], []uint64{last.Sequence})
	if !slices.Equal(seqs(got), want) {
		t.Fatalf("got %v\nwant %v", seqs(got), want)
	}
	for _, ev := range control {
		if ev.Type != typeHeartbeat {
			t.Fatalf("the drop fault must be silent, got %v", ev)
		}
	}
	ts.waitFor("events_received == 249", func() bool { return ts.status("d").EventsReceived == 249 })
	time.Sleep(50 * time.Millisecond) // an extra count would show now
	if st := ts.status("d"); st.EventsReceived != 249 || st.EventsDropped != 0 {
		t.Fatalf("status %v, want received 249, dropped 0", st)
	}
}

func TestFaultIgnoreCancelKeepsCancelledStreamsCounted(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultIgnoreCancel})
	_, cancel := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "ic"})
	cancel()
	// A deadline that passes is the other way a client gives up.
	ctx, cancelDeadline := context.WithTimeout(ts.ctx, 200*time.Millisecond)
	defer cancelDeadline()
	stream, err := ts.client.Subscribe(ctx, &eventsv1.SubscribeRequest{ClientId: "ic"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", err)
	}

	// Both handlers have returned: the hub delivers to nobody ...
	ts.waitFor("no subscribers in the hub", func() bool {
		ts.svc.hub.mu.Lock()
		defer ts.svc.hub.mu.Unlock()
		return len(ts.svc.hub.subs) == 0
	})
	if r := ts.publish("f.event"); r.Recipients != 0 {
		t.Fatalf("recipients %d, want 0", r.Recipients)
	}
	// ... yet GetConnectionStatus still counts both streams as active.
	time.Sleep(100 * time.Millisecond)
	if st := ts.status("ic"); st.ActiveStreams != 2 || !st.Connected {
		t.Fatalf("status %v, want 2 active streams (the fault)", st)
	}
}

func TestFaultIgnoreCancelLeavesServerEndedStreamsAlone(t *testing.T) {
	// A half-closed SubscribeMultiple ends with OK on the server's side:
	// that stream is released as usual.
	ts := startServer(t, Config{Fault: FaultIgnoreCancel})
	stream, err := ts.client.SubscribeMultiple(ts.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&eventsv1.SubscribeRequest{ClientId: "hc"}); err != nil {
		t.Fatal(err)
	}
	ts.waitStreams("hc", 1)
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err == nil {
		t.Fatal("stream did not end")
	}
	ts.waitStreams("hc", 0)
}

func TestFaultForgetHistoryIgnoresTheDataDir(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, Config{DataDir: dir, Fault: FaultForgetHistory})
	first := ts.publish("f.event")
	ts.publish("f.event")
	ts.stop()
	if _, err := os.Stat(filepath.Join(dir, "events.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("events.db written under forget-history: %v", err)
	}

	ts2 := startServer(t, Config{DataDir: dir, Fault: FaultForgetHistory})
	if r := ts2.publish("f.event"); r.Sequence != 1 {
		t.Fatalf("sequence after restart %d, want 1 (history forgotten)", r.Sequence)
	}
	stream, _ := ts2.subscribe(ts2.client, &eventsv1.SubscribeRequest{ClientId: "fh", LastEventId: first.EventId})
	if ev := recvSkippingHeartbeats(t, stream); ev.Type != typeReplayGap {
		t.Fatalf("resume after restart: %v, want %s", ev, typeReplayGap)
	}
}

func TestFaultNoHeartbeatSendsNoHeartbeats(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultNoHeartbeat})
	single, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "h", HeartbeatInterval: 1})
	ctx, cancel := context.WithCancel(ts.ctx)
	defer cancel()
	multi, err := ts.client.SubscribeMultiple(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := multi.Send(&eventsv1.SubscribeRequest{ClientId: "m", HeartbeatInterval: 1}); err != nil {
		t.Fatal(err)
	}
	ts.waitStreams("m", 1)
	// Two 1s heartbeats would be due by now; none is sent, log events still are.
	time.Sleep(2500 * time.Millisecond)
	pub := ts.publish("f.event").Sequence
	for name, s := range map[string]eventReceiver{"Subscribe": single, "SubscribeMultiple": multi} {
		got, control := recvLog(t, s, 1)
		if len(control) != 0 || got[0].Sequence != pub {
			t.Fatalf("%s: got control %v, log %v; want only sequence %d", name, control, got, pub)
		}
	}
}

func TestFaultUnknownClientNotFound(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultUnknownClientNotFound})
	statusErr := func(clientID string) error {
		_, err := ts.client.GetConnectionStatus(ts.ctx, &eventsv1.SubscribeRequest{ClientId: clientID})
		return err
	}
	grpctest.WantStatus(t, statusErr("nobody"), codes.NotFound, `client "nobody" not found`)

	// A client with an open stream is answered as usual ...
	_, cancel := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "c"})
	ts.waitFor("c connected", func() bool { return statusErr("c") == nil })
	if st := ts.status("c"); !st.Connected || st.ActiveStreams != 1 {
		t.Fatalf("status %v, want connected with 1 stream", st)
	}
	// ... and is unknown again once its stream is gone.
	cancel()
	ts.waitFor("c not found", func() bool { return status.Code(statusErr("c")) == codes.NotFound })
	grpctest.WantStatus(t, statusErr("c"), codes.NotFound, `client "c" not found`)
	grpctest.WantStatus(t, statusErr(""), codes.InvalidArgument, "client_id is required")
}

func TestFaultDuplicateBroadcastAppendsARepeatedIDAgain(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultDuplicateBroadcast})
	s, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "c"})
	first := ts.publish("order.placed", withID("order-1"))
	again := ts.publish("order.placed", withID("order-1"), withData(`{"changed":true}`))
	if first.EventId != "order-1" || first.Sequence != 1 || first.Recipients != 1 {
		t.Fatalf("first %v", first)
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	if !uuid.MatchString(again.EventId) || again.Sequence != 2 || again.Recipients != 1 {
		t.Fatalf("repeat %v, want a fresh UUIDv4, sequence 2, 1 recipient (the fault)", again)
	}
	got, _ := recvLog(t, s, 2)
	if got[0].Id != "order-1" || got[1].Id != again.EventId || got[1].Sequence != 2 || got[1].Data != `{"changed":true}` {
		t.Fatalf("delivered %v then %v", got[0], got[1])
	}
}

func TestFaultNoReplayGapSendsNoGapButStillReplays(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultNoReplayGap})
	pub := publishN(ts, 3)
	stream, _ := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "g", LastEventId: "never-seen"})
	got, control := recvLog(t, stream, 3)
	if !slices.Equal(seqs(got), pub) {
		t.Fatalf("replay %v, want %v", seqs(got), pub)
	}
	for _, ev := range control {
		if ev.Type == typeReplayGap {
			t.Fatalf("a replay_gap under no-replay-gap: %v", ev)
		}
	}
	live := ts.publish("live")
	if ev := recvSkippingHeartbeats(t, stream); ev.Id != live.EventId {
		t.Fatalf("after the replay got %v, want the live event", ev)
	}
}

func TestFaultMiscountDropsUndercountsEveryMarker(t *testing.T) {
	ts := startServer(t, Config{Fault: FaultMiscountDrops, QueueSize: 4, Policy: DropNewest})
	slow, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "slow"})
	var p published
	ts.publishUntil(&p, "drop", func() bool { return ts.status("slow").EventsDropped > 0 })
	for range 5 { // refused too, merged into the same marker
		p.add(ts.publish("big", withData(bigData)))
	}

	// Read until every sequence was delivered or stood for by a marker.
	var spanned, markers uint64
	for next := uint64(1); next <= p.last; {
		ev, err := slow.Recv()
		if err != nil {
			t.Fatalf("waiting for sequence %d: %v", next, err)
		}
		switch {
		case ev.Sequence > 0:
			next = ev.Sequence + 1
		case ev.Type == typeDropped:
			md := ev.Metadata
			count, _ := strconv.ParseUint(md["count"], 10, 64)
			first, _ := strconv.ParseUint(md["first_dropped_sequence"], 10, 64)
			last, _ := strconv.ParseUint(md["last_dropped_sequence"], 10, 64)
			if first != next || last < first || md["first_dropped_id"] != p.ids[first] || md["last_dropped_id"] != p.ids[last] {
				t.Fatalf("marker %v does not stand at the gap starting at %d", md, next)
			}
			if count != last-first {
				t.Fatalf("marker count %d for %d..%d, want %d (one less, the fault)", count, first, last, last-first)
			}
			spanned += last - first + 1
			markers++
			next = last + 1
		}
	}
	if markers == 0 {
		t.Fatal("no polystream.dropped marker")
	}
	if st := ts.status("slow"); st.EventsDropped != spanned {
		t.Fatalf("events_dropped %d, markers span %d: the counter must stay right", st.EventsDropped, spanned)
	}
}

func TestFaultUnboundedQueueNeverFillsUnderAnyPolicy(t *testing.T) {
	for _, policy := range []Policy{Disconnect, DropNewest, DropOldest, Block} {
		t.Run(policy.String(), func(t *testing.T) {
			ts := startServer(t, Config{Fault: FaultUnboundedQueue, QueueSize: 4, Policy: policy, PublishTimeout: 200 * time.Millisecond})
			slow, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "slow"})
			// 40 × 16 KiB: far more than the stalled client's 64 KiB window
			// plus a queue of 4 (the correct server drops, blocks or disconnects).
			var p published
			for range 40 {
				p.add(ts.publish("big", withData(bigData)))
			}
			if n := queuedEvents(ts.svc, "slow"); n <= 4 {
				t.Fatalf("%d events queued, want more than --queue-size 4", n)
			}
			if st := ts.status("slow"); st.ActiveStreams != 1 || st.EventsDropped != 0 {
				t.Fatalf("status %v: want still connected, nothing dropped", st)
			}
			for s, r := range p.recipients {
				if r != 1 {
					t.Fatalf("event %d: recipients %d, want 1", s, r)
				}
			}
			got, control := recvLog(t, slow, 40)
			for i, ev := range got {
				if ev.Sequence != uint64(i+1) {
					t.Fatalf("got %v, want 1..40 in order", seqs(got))
				}
			}
			for _, ev := range control {
				if ev.Type != typeHeartbeat {
					t.Fatalf("unexpected %v", ev)
				}
			}
		})
	}
}
