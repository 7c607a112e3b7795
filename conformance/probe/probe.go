// Package probe is the harness's own gRPC client of a server under test: it
// publishes events (remembering the id and sequence the server gave each) and
// asks the server what it observed (GetConnectionStatus, TailLogs), so checks
// do not guess from the client's side alone. It uses only the generated stubs.
package probe

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

// Probe talks to one server over its published port; addr is asked again
// whenever a call fails, since the port changes when the container restarts.
type Probe struct {
	addr func(context.Context) (string, error)

	mu   sync.Mutex
	cur  string
	conn *grpc.ClientConn
}

// New returns a probe; addr returns the server's current 127.0.0.1 address.
func New(addr func(context.Context) (string, error)) *Probe { return &Probe{addr: addr} }

// Close closes the connection.
func (p *Probe) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
}

// Conn returns a connection to the server's current address.
func (p *Probe) Conn(ctx context.Context) (*grpc.ClientConn, error) {
	a, err := p.addr(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil && p.cur == a {
		return p.conn, nil
	}
	if p.conn != nil {
		p.conn.Close()
	}
	cc, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	p.conn, p.cur = cc, a
	return cc, nil
}

// Published is one event the harness published, as the server numbered it.
type Published struct {
	ID       string
	Sequence uint64
	At       time.Time
}

// PublishSpec says what to publish.
type PublishSpec struct {
	Count       int
	Type        string
	Channels    []string
	DataBytes   int
	Concurrency int
	Interval    time.Duration
	Metadata    map[string]string
	// ID is a publisher-supplied id (Count 1).
	ID string
	// Tag goes into every event's data so a report can tell cases apart.
	Tag string
}

// Publish broadcasts Count events and returns them sorted by sequence.
func (p *Probe) Publish(ctx context.Context, spec PublishSpec) ([]Published, error) {
	cc, err := p.Conn(ctx)
	if err != nil {
		return nil, err
	}
	c := eventsv1.NewEventServiceClient(cc)
	conc := spec.Concurrency
	if conc <= 0 {
		conc = 1
	}
	typ := spec.Type
	if typ == "" {
		typ = "conformance.event"
	}
	pad := ""
	if spec.DataBytes > 0 {
		pad = strings.Repeat("x", spec.DataBytes)
	}
	out := make([]Published, spec.Count)
	errs := make(chan error, conc)
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				data := fmt.Sprintf(`{"tag":%q,"n":%d,"pad":%q}`, spec.Tag, i+1, pad)
				cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				res, err := c.Broadcast(cctx, &eventsv1.BroadcastRequest{
					Event:          &eventsv1.Event{Id: spec.ID, Type: typ, Data: data, Metadata: spec.Metadata},
					TargetChannels: spec.Channels,
				})
				cancel()
				if err != nil {
					errs <- fmt.Errorf("Broadcast #%d: %w", i+1, err)
					return
				}
				out[i] = Published{ID: res.GetEventId(), Sequence: res.GetSequence(), At: time.Now()}
			}
		}()
	}
	var sendErr error
feed:
	for i := 0; i < spec.Count; i++ {
		if i > 0 && spec.Interval > 0 {
			time.Sleep(spec.Interval)
		}
		select {
		case next <- i:
		case sendErr = <-errs:
			break feed
		case <-ctx.Done():
			sendErr = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	if sendErr == nil {
		select {
		case sendErr = <-errs:
		default:
		}
	}
	if sendErr != nil {
		return nil, sendErr
	}
	sortBySeq(out)
	return out, nil
}

func sortBySeq(ps []Published) {
	// insertion sort is fine for mostly sorted input; use a simple sort.
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].Sequence < ps[j-1].Sequence; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// Status is GetConnectionStatus for a client id.
func (p *Probe) Status(ctx context.Context, clientID string) (*eventsv1.ConnectionStatus, error) {
	cc, err := p.Conn(ctx)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return eventsv1.NewEventServiceClient(cc).GetConnectionStatus(cctx, &eventsv1.SubscribeRequest{ClientId: clientID})
}

// WaitStreams polls GetConnectionStatus until every client id has want active
// streams, or within passes. It returns the last counts seen.
func (p *Probe) WaitStreams(ctx context.Context, ids []string, want int, within time.Duration) (map[string]int, error) {
	deadline := time.Now().Add(within)
	seen := map[string]int{}
	var last error
	for {
		ok := true
		for _, id := range ids {
			st, err := p.Status(ctx, id)
			if err != nil {
				last = err
				ok = false
				seen[id] = -1
				continue
			}
			seen[id] = int(st.GetActiveStreams())
			if seen[id] != want {
				ok = false
			}
		}
		if ok {
			return seen, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if last != nil {
				return seen, last
			}
			return seen, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// LogRecord is one record of the server's TailLogs.
type LogRecord struct {
	At      time.Time
	Level   string
	Message string
	Service string
	Fields  map[string]string
}

// Logs returns up to lines of the server's recent log records (no follow).
func (p *Probe) Logs(ctx context.Context, lines int) ([]LogRecord, error) {
	cc, err := p.Conn(ctx)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := updatesv1.NewStreamServiceClient(cc).TailLogs(cctx, &updatesv1.LogRequest{LogLevel: "debug", Lines: int32(lines)})
	if err != nil {
		return nil, err
	}
	var out []LogRecord
	for {
		e, err := st.Recv()
		if err != nil {
			break
		}
		out = append(out, LogRecord{At: e.GetTimestamp().AsTime(), Level: e.GetLevel(), Message: e.GetMessage(), Service: e.GetService(), Fields: e.GetFields()})
	}
	return out, nil
}

// LogFollower collects the server's log records as they are written
// (TailLogs with follow), so a record is not lost when a busy server's
// ring of recent records moves past it.
type LogFollower struct {
	mu   sync.Mutex
	recs []LogRecord
	stop context.CancelFunc
}

// Follow starts collecting; Stop ends it. Errors end the collection quietly
// (e.g. the server restarted): Logs still has the ring to fall back on.
func (p *Probe) Follow(ctx context.Context) *LogFollower {
	ctx, cancel := context.WithCancel(ctx)
	f := &LogFollower{stop: cancel}
	// Not waited for: a server may send no headers before its first record.
	// Records of the case's own calls come well after it is open; the ring
	// (Logs) covers the rest.
	go func() {
		defer cancel()
		cc, err := p.Conn(ctx)
		if err != nil {
			return
		}
		st, err := updatesv1.NewStreamServiceClient(cc).TailLogs(ctx, &updatesv1.LogRequest{LogLevel: "debug", Follow: true})
		if err != nil {
			return
		}
		for {
			e, err := st.Recv()
			if err != nil {
				return
			}
			f.mu.Lock()
			if len(f.recs) < 200000 {
				f.recs = append(f.recs, LogRecord{At: e.GetTimestamp().AsTime(), Level: e.GetLevel(), Message: e.GetMessage(), Service: e.GetService(), Fields: e.GetFields()})
			}
			f.mu.Unlock()
		}
	}()
	return f
}

// Records returns what was collected so far.
func (f *LogFollower) Records() []LogRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]LogRecord(nil), f.recs...)
}

// Stop ends the collection.
func (f *LogFollower) Stop() { f.stop() }
