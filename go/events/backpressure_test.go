package events

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// bigData makes each event 16 KiB, so a consumer that does not read stalls
// the server's sends (64 KiB client window, see dial) after a few events
// and its queue of 4 fills soon after.
var bigData = `"` + strings.Repeat("x", 16<<10) + `"`

// published remembers every Broadcast response by sequence.
type published struct {
	ids        map[uint64]string
	recipients map[uint64]int32
	last       uint64
}

func (p *published) add(r *eventsv1.BroadcastResponse) {
	if p.ids == nil {
		p.ids, p.recipients = map[uint64]string{}, map[uint64]int32{}
	}
	p.ids[r.Sequence], p.recipients[r.Sequence] = r.EventId, r.Recipients
	p.last = r.Sequence
}

// publishUntil publishes big events until cond holds (bounded).
func (ts *testServer) publishUntil(p *published, what string, cond func() bool) {
	ts.t.Helper()
	for !cond() {
		if p.last > 500 {
			ts.t.Fatalf("no %s after 500 events", what)
		}
		p.add(ts.publish("big", withData(bigData)))
	}
}

// drop is a polystream.dropped marker as the client saw it.
type drop struct{ count, first, last uint64 }

// readAccountingFor reads until every sequence up to p.last was delivered
// or reported dropped, and checks that each marker stands exactly at its
// gap: no sequence missing, none twice, ids matching the log.
func readAccountingFor(t *testing.T, stream grpc.ServerStreamingClient[eventsv1.Event], p *published) (delivered []uint64, drops []drop) {
	t.Helper()
	want := uint64(1)
	prevMarker := false
	for want <= p.last {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for sequence %d: %v", want, err)
		}
		switch {
		case ev.Sequence > 0:
			if ev.Sequence != want || ev.Id != p.ids[want] {
				t.Fatalf("got event %d (%s), want %d (%s)", ev.Sequence, ev.Id, want, p.ids[want])
			}
			delivered = append(delivered, want)
			want++
			prevMarker = false
		case ev.Type == typeDropped:
			md := ev.Metadata
			d := drop{}
			d.count, _ = strconv.ParseUint(md["count"], 10, 64)
			d.first, _ = strconv.ParseUint(md["first_dropped_sequence"], 10, 64)
			d.last, _ = strconv.ParseUint(md["last_dropped_sequence"], 10, 64)
			if prevMarker {
				t.Fatalf("two markers in a row: consecutive drops must merge")
			}
			if d.first != want || d.last < d.first || d.count != d.last-d.first+1 ||
				md["first_dropped_id"] != p.ids[d.first] || md["last_dropped_id"] != p.ids[d.last] ||
				ev.Id != "" || ev.Channel != "default" {
				t.Fatalf("marker %v does not describe the gap starting at %d", md, want)
			}
			drops = append(drops, d)
			want = d.last + 1
			prevMarker = true
		case ev.Type != typeHeartbeat:
			t.Fatalf("unexpected %v", ev)
		}
	}
	return delivered, drops
}

func TestDropNewestWithStalledConsumer(t *testing.T) {
	ts := startServer(t, Config{QueueSize: 4, Policy: DropNewest})
	slow, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "slow"})
	var p published
	ts.publishUntil(&p, "drop", func() bool { return ts.status("slow").EventsDropped > 0 })
	firstDrop := p.last
	for range 5 { // the consumer still stalls: all refused, merged into one marker
		p.add(ts.publish("big", withData(bigData)))
	}

	delivered, drops := readAccountingFor(t, slow, &p)
	t.Logf("published %d, delivered %v, drops %v", p.last, delivered, drops)
	var total uint64
	for _, d := range drops {
		total += d.count
		for s := d.first; s <= d.last; s++ {
			if p.recipients[s] != 0 {
				t.Fatalf("dropped event %d counted as a recipient", s)
			}
		}
	}
	last := drops[len(drops)-1]
	if len(drops) != 1 || last.first != firstDrop || last.last != p.last {
		t.Fatalf("drops %v: want one marker %d..%d (newest refused)", drops, firstDrop, p.last)
	}
	if st := ts.status("slow"); st.EventsDropped != total || st.EventsReceived != uint64(len(delivered)) {
		t.Fatalf("status %v; markers report %d dropped, %d delivered", st, total, len(delivered))
	}
	// Recovered: the next event arrives normally.
	next := ts.publish("small")
	if ev := recvSkippingHeartbeats(t, slow); ev.Id != next.EventId || next.Recipients != 1 {
		t.Fatalf("after the drop got %v (recipients %d)", ev, next.Recipients)
	}
}

func TestDropOldestWithStalledConsumer(t *testing.T) {
	ts := startServer(t, Config{QueueSize: 4, Policy: DropOldest})
	slow, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "slow"})
	var p published
	ts.publishUntil(&p, "drop", func() bool { return ts.status("slow").EventsDropped > 0 })
	for range 5 {
		p.add(ts.publish("big", withData(bigData)))
	}

	delivered, drops := readAccountingFor(t, slow, &p)
	t.Logf("published %d, delivered %v, drops %v", p.last, delivered, drops)
	var total uint64
	for _, d := range drops {
		total += d.count
	}
	if len(drops) != 1 || total < 6 {
		t.Fatalf("drops %v: want one merged marker of at least 6", drops)
	}
	// The newest 4 (the queue's size) survive, after the marker.
	if n := len(delivered); n < 4 || delivered[n-4] != p.last-3 || drops[0].last != p.last-4 {
		t.Fatalf("delivered %v, marker %v: want the newest 4 kept", delivered, drops[0])
	}
	for s, r := range p.recipients {
		if r != 1 {
			t.Fatalf("event %d: recipients %d; drop-oldest queues every new event", s, r)
		}
	}
	if st := ts.status("slow"); st.EventsDropped != total || st.EventsReceived != uint64(len(delivered)) {
		t.Fatalf("status %v; markers report %d dropped, %d delivered", st, total, len(delivered))
	}
}

// fastReader consumes a stream as fast as it can and records when each
// sequence arrived.
type fastReader struct {
	mu      sync.Mutex
	arrived map[uint64]time.Time
	err     error
	done    chan struct{}
}

func readFast(stream grpc.ServerStreamingClient[eventsv1.Event]) *fastReader {
	r := &fastReader{arrived: map[uint64]time.Time{}, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			ev, err := stream.Recv()
			r.mu.Lock()
			if err != nil {
				r.err = err
				r.mu.Unlock()
				return
			}
			r.arrived[ev.Sequence] = time.Now()
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *fastReader) at(seq uint64) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.arrived[seq]
	return at, ok
}

// checkDisconnected reads the slow stream: contiguous events, then the
// exact RESOURCE_EXHAUSTED; resuming from the last one gets the rest.
func checkDisconnected(t *testing.T, ts *testServer, slow grpc.ServerStreamingClient[eventsv1.Event], p *published) {
	t.Helper()
	var lastID string
	want := uint64(1)
	for {
		ev, err := slow.Recv()
		if err != nil {
			grpctest.WantStatus(t, err, codes.ResourceExhausted, "subscriber queue full (4 events); resume from last_event_id")
			break
		}
		if ev.Sequence != want || ev.Type == typeDropped {
			t.Fatalf("got %v, want sequence %d", ev, want)
		}
		lastID = ev.Id
		want++
	}
	if want > p.last {
		t.Fatalf("the slow subscriber got everything (%d); it was not slow", want-1)
	}
	if st := ts.status("slow"); st.EventsDropped != 0 || st.ActiveStreams != 0 {
		t.Fatalf("status %v: disconnecting drops nothing", st)
	}
	resumed, _ := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "slow", LastEventId: lastID})
	got, control := recvLog(t, resumed, int(p.last-want+1))
	if got[0].Sequence != want || got[len(got)-1].Sequence != p.last || len(control) != 0 {
		t.Fatalf("resume from %d: got %v, control %v", want-1, seqs(got), control)
	}
}

func TestDisconnectWithStalledConsumer(t *testing.T) {
	ts := startServer(t, Config{QueueSize: 4}) // Disconnect is the default
	slow, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "slow"})
	fastStream, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "fast"})
	fast := readFast(fastStream)
	var p published
	ts.publishUntil(&p, "disconnect", func() bool { return ts.status("slow").ActiveStreams == 0 })
	if p.recipients[p.last] != 1 {
		t.Fatalf("recipients of the overflowing event: %d, want 1 (fast only)", p.recipients[p.last])
	}
	ts.waitFor("fast subscriber to get everything", func() bool { _, ok := fast.at(p.last); return ok })
	for s := uint64(1); s <= p.last; s++ {
		if _, ok := fast.at(s); !ok {
			t.Fatalf("fast subscriber missed %d: a slow one held it up", s)
		}
	}
	checkDisconnected(t, ts, slow, &p)
}

func TestBlockTimesOutThenDisconnects(t *testing.T) {
	const timeout = 500 * time.Millisecond
	ts := startServer(t, Config{QueueSize: 4, Policy: Block, PublishTimeout: timeout})
	slow, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "slow"})
	fastStream, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "fast"})
	fast := readFast(fastStream)

	var p published
	var took time.Duration
	var returned time.Time
	for ts.status("slow").ActiveStreams == 1 {
		if p.last > 500 {
			t.Fatal("no disconnect after 500 events")
		}
		start := time.Now()
		p.add(ts.publish("big", withData(bigData)))
		returned = time.Now()
		took = returned.Sub(start)
	}
	if took < timeout*9/10 {
		t.Fatalf("the publish that disconnected took %v; Block waits %v first", took, timeout)
	}
	// The fast subscriber was served before the publisher started waiting.
	ts.waitFor("fast subscriber to get the last event", func() bool { _, ok := fast.at(p.last); return ok })
	if at, _ := fast.at(p.last); !at.Before(returned) {
		t.Fatalf("fast subscriber got event %d at %v, after the blocked publish returned at %v", p.last, at, returned)
	}
	checkDisconnected(t, ts, slow, &p)
}

func TestBlockWaitsForAConsumerThatCatchesUp(t *testing.T) {
	ts := startServer(t, Config{QueueSize: 4, Policy: Block, PublishTimeout: 30 * time.Second})
	slow, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "slow"})
	const total = 40
	var p published
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range total {
			r, err := ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "big", Data: bigData}})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			p.add(r)
			mu.Unlock()
		}
	}()
	// Start reading only once the queue is full: the publisher must wait.
	ts.waitFor("a full queue", func() bool { return queuedEvents(ts.svc, "slow") == 4 })
	mu.Lock()
	stuckAt := p.last
	mu.Unlock()
	if stuckAt >= total {
		t.Fatalf("all %d published while the consumer stalled", total)
	}
	got, control := recvLog(t, slow, total)
	<-done
	for i, ev := range got {
		if ev.Sequence != uint64(i+1) {
			t.Fatalf("got %v, want 1..%d in order", seqs(got), total)
		}
	}
	for s, r := range p.recipients {
		if r != 1 {
			t.Fatalf("event %d recipients %d", s, r)
		}
	}
	if st := ts.status("slow"); len(control) != 0 || st.EventsDropped != 0 || st.ActiveStreams != 1 {
		t.Fatalf("control %v, status %v: nothing dropped, still connected", control, st)
	}
}

// queuedEvents reads a subscriber's queue length on the server.
func queuedEvents(svc *Service, clientID string) int {
	svc.hub.mu.Lock()
	subs := svc.hub.subs
	svc.hub.mu.Unlock()
	for _, s := range subs {
		if s.clientID == clientID {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.q.events
		}
	}
	return -1
}
