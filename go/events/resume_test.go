package events

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// TestResumeSeamUnderConcurrentPublishing resumes many subscribers while
// thousands of events are being published and checks that each sees every
// sequence after its resume point exactly once, in order.
func TestResumeSeamUnderConcurrentPublishing(t *testing.T) {
	const total, publishers = 2000, 4
	ts := startServer(t, Config{HistorySize: total, QueueSize: total})
	ids := make([]string, total+1) // by sequence
	var mu sync.Mutex
	published := make(chan uint64, total)

	var pubs sync.WaitGroup
	for range publishers {
		pubs.Go(func() {
			for range total / publishers {
				res, err := ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "tick"}})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				ids[res.Sequence] = res.EventId
				mu.Unlock()
				published <- res.Sequence
			}
		})
	}
	go func() { pubs.Wait(); close(published) }()

	var wg sync.WaitGroup
	check := func(name string, from uint64, req *eventsv1.SubscribeRequest) {
		stream, cancel := ts.subscribe(ts.dial(), req)
		wg.Go(func() {
			defer cancel()
			want, live := from+1, from == 0 && req.LastEventId == ""
			for want <= total {
				ev, err := stream.Recv()
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				if ev.Sequence == 0 {
					continue
				}
				if live { // no resume: starts with whatever is published next
					want, live = ev.Sequence, false
				}
				if ev.Sequence != want {
					t.Errorf("%s (resumed after %d): got sequence %d, want %d", name, from, ev.Sequence, want)
					return
				}
				want++
			}
		})
	}
	idOf := func(seq uint64) string {
		mu.Lock()
		defer mu.Unlock()
		return ids[seq]
	}
	n := 0
	for seq := range published {
		if seq%200 != 0 || seq >= total || idOf(seq-100) == "" {
			continue
		}
		n++
		check(fmt.Sprintf("resume-%d", n), seq-100, &eventsv1.SubscribeRequest{ClientId: "r", LastEventId: idOf(seq - 100)})
		check(fmt.Sprintf("live-%d", n), 0, &eventsv1.SubscribeRequest{ClientId: "l"})
		check(fmt.Sprintf("resume-latest-%d", n), seq, &eventsv1.SubscribeRequest{ClientId: "r", LastEventId: idOf(seq)})
	}
	wg.Wait()
	if n < 5 {
		t.Fatalf("only %d resume points", n)
	}
}

func TestResumeReplaysOnlyMatchingEventsAfterTheID(t *testing.T) {
	ts := startServer(t, Config{})
	var ids []string
	for _, typ := range []string{"a.1", "b.1", "a.2", "b.2", "a.3"} {
		ids = append(ids, ts.publish(typ, withTargets("x")).EventId)
	}
	ts.publish("a.other-channel", withTargets("y"))
	stream, _ := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "c", Channel: "x", EventTypes: []string{"a.*"}, LastEventId: ids[0]})
	got, control := recvLog(t, stream, 2)
	if got[0].Type != "a.2" || got[1].Type != "a.3" || got[0].Channel != "x" || len(control) != 0 {
		t.Fatalf("replay %v, control %v", got, control)
	}
	live := ts.publish("a.4")
	if ev := recvSkippingHeartbeats(t, stream); ev.Id != live.EventId {
		t.Fatalf("live %v", ev)
	}
}

func TestReplayGap(t *testing.T) {
	ts := startServer(t, Config{HistorySize: 5})

	// Empty log: a gap with no oldest id, then live.
	stream, cancel := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "c", LastEventId: "unknown", Channel: "ch"})
	gap := recvSkippingHeartbeats(t, stream)
	if gap.Type != "polystream.replay_gap" || gap.Sequence != 0 || gap.Id != "" || gap.Channel != "ch" ||
		gap.Metadata["requested_id"] != "unknown" || gap.Metadata["oldest_retained_id"] != "" {
		t.Fatalf("gap on empty log: %v", gap)
	}
	cancel()

	ids := []string{""} // by sequence
	for i := range 10 {
		ids = append(ids, ts.publish(fmt.Sprintf("e.%d", i+1)).EventId)
	}
	at := func(seq int) func() string { return func() string { return ids[seq] } }
	unknown := func() string { return "never-seen" }
	// Trimmed, unknown, retained, newest, and retained after two live events.
	for _, id := range []func() string{at(2), unknown, at(7), at(10), at(12)} {
		lastID := id()
		// Expected: the window is the last 5 sequences; an id in it resumes
		// after itself, anything else gets a gap and the whole window.
		last := uint64(len(ids) - 1)
		oldest := last - 4
		from, gap := oldest-1, true
		if i := slices.Index(ids, lastID); i >= int(oldest) {
			from, gap = uint64(i), false
		}
		var want []uint64
		for s := from + 1; s <= last; s++ {
			want = append(want, s)
		}

		stream, cancel := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "c", LastEventId: lastID})
		if gap {
			ev := recvSkippingHeartbeats(t, stream)
			if ev.Type != typeReplayGap || ev.Metadata["requested_id"] != lastID || ev.Metadata["oldest_retained_id"] != ids[oldest] {
				t.Fatalf("resume from %s: gap %v, want oldest %s", lastID, ev, ids[oldest])
			}
		}
		got, control := recvLog(t, stream, len(want))
		if !slices.Equal(seqs(got), want) || len(control) != 0 {
			t.Fatalf("resume from %s: got %v (control %v), want %v", lastID, seqs(got), control, want)
		}
		// Nothing else was replayed: the next event is live.
		live := ts.publish("live")
		ids = append(ids, live.EventId)
		if ev := recvSkippingHeartbeats(t, stream); ev.Id != live.EventId {
			t.Fatalf("resume from %s: after replay got %v, want the live event", lastID, ev)
		}
		cancel()
	}

	// An id older than retention is new again.
	if r := ts.publish("again", withID(ids[1])); r.Sequence != 16 || r.EventId != ids[1] {
		t.Fatalf("re-used expired id: %v", r)
	}
}

func TestDurableLogSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, Config{DataDir: dir, HistorySize: 4})
	payload, _ := anypb.New(&eventsv1.NotificationEvent{NotificationId: "n1", Title: "hi"})
	var sent []*eventsv1.Event
	var lastID string
	for i := range 6 {
		res, err := ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{
			Event:          &eventsv1.Event{Type: fmt.Sprintf("n.%d", i+1), Data: `{"i":1}`, Payload: payload, Metadata: map[string]string{"i": fmt.Sprint(i)}},
			TargetChannels: []string{"x", "default"},
		})
		if err != nil {
			t.Fatal(err)
		}
		lastID = res.EventId
	}
	// Read what the first server delivers for sequences 3..6, to compare.
	stream, cancel := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "c", LastEventId: "gone"})
	sent, _ = recvLog(t, stream, 4)
	cancel()
	ts.stop()

	// A new service on the same directory: same window, next sequence 7.
	ts2 := startServer(t, Config{DataDir: dir, HistorySize: 4})
	stream, _ = ts2.subscribe(ts2.client, &eventsv1.SubscribeRequest{ClientId: "c", LastEventId: sent[0].Id})
	got, _ := recvLog(t, stream, 3)
	for i, ev := range got {
		if !proto.Equal(ev, sent[i+1]) {
			t.Fatalf("after restart got %v, want %v", ev, sent[i+1])
		}
	}
	if got[2].Id != lastID {
		t.Fatalf("last id %s, want %s", got[2].Id, lastID)
	}
	next := ts2.publish("after.restart")
	if next.Sequence != 7 {
		t.Fatalf("sequence after restart %d, want 7", next.Sequence)
	}
	if ev := recvSkippingHeartbeats(t, stream); ev.Id != next.EventId {
		t.Fatalf("live after restart: %v", ev)
	}
	// Idempotency survives the restart too.
	if r := ts2.publish("n.6", withID(lastID)); r.Sequence != 6 || r.Recipients != 0 {
		t.Fatalf("repeat of a stored id: %v", r)
	}
	// Resuming from a trimmed id reports the oldest retained (sequence 4).
	stream, _ = ts2.subscribe(ts2.client, &eventsv1.SubscribeRequest{ClientId: "c", LastEventId: "gone"})
	gap := recvSkippingHeartbeats(t, stream)
	if gap.Metadata["oldest_retained_id"] != sent[1].Id {
		t.Fatalf("gap after restart: %v, want oldest %s", gap, sent[1].Id)
	}
	ts2.stop()

	// The file layout the Python server shares.
	db, err := sql.Open("sqlite", filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT name FROM pragma_table_info('events') ORDER BY cid`)
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	for rows.Next() {
		var c string
		rows.Scan(&c)
		cols = append(cols, c)
	}
	rows.Close()
	if want := []string{"sequence", "id", "type", "channels", "timestamp", "data", "payload", "metadata"}; !slices.Equal(cols, want) {
		t.Fatalf("columns %v, want %v", cols, want)
	}
	var n, minSeq int
	var channels, metadata string
	if err := db.QueryRow(`SELECT COUNT(*), MIN(sequence) FROM events`).Scan(&n, &minSeq); err != nil || n != 4 || minSeq != 4 {
		t.Fatalf("retained rows %d from %d (%v), want 4 from 4", n, minSeq, err)
	}
	if err := db.QueryRow(`SELECT channels, metadata FROM events WHERE sequence = 5`).Scan(&channels, &metadata); err != nil ||
		channels != `["default","x"]` || metadata != `{"i":"4"}` {
		t.Fatalf("row 5: channels %s metadata %s (%v)", channels, metadata, err)
	}
}
