package events

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// maxIdleClients bounds how many clients without open streams keep their
// counters (the oldest are forgotten first), so memory stays bounded
// however many client ids come and go.
const maxIdleClients = 10000

// clientStats is what GetConnectionStatus reports for one client id.
type clientStats struct {
	received atomic.Uint64 // log events sent, over all its streams
	dropped  atomic.Uint64 // log events dropped by backpressure

	// guarded by clients.mu
	streams map[*subscriber]struct{}
	idle    *list.Element // position in clients.idle while it has no streams
}

// clients tracks every client id's streams and counters.
type clients struct {
	mu   sync.Mutex
	byID map[string]*clientStats
	idle list.List // ids of clients without streams, least recently closed first
}

func newClients() *clients { return &clients{byID: make(map[string]*clientStats)} }

// open counts a new stream of sub.clientID and attaches its stats.
func (c *clients) open(sub *subscriber) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.byID[sub.clientID]
	if st == nil {
		st = &clientStats{streams: make(map[*subscriber]struct{})}
		c.byID[sub.clientID] = st
	}
	if st.idle != nil {
		c.idle.Remove(st.idle)
		st.idle = nil
	}
	st.streams[sub] = struct{}{}
	sub.stats = st
}

// close forgets a stream; the client's counters stay (within the bound).
func (c *clients) close(sub *subscriber) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := sub.stats
	delete(st.streams, sub)
	if len(st.streams) > 0 {
		return
	}
	st.idle = c.idle.PushBack(sub.clientID)
	if c.idle.Len() > maxIdleClients {
		oldest := c.idle.Remove(c.idle.Front()).(string)
		delete(c.byID, oldest)
	}
}

// status reports one client; an unknown id is simply not connected.
func (c *clients) status(clientID string) *eventsv1.ConnectionStatus {
	out := &eventsv1.ConnectionStatus{ClientId: clientID}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.byID[clientID]
	if st == nil {
		return out
	}
	out.EventsReceived = st.received.Load()
	out.EventsDropped = st.dropped.Load()
	out.ActiveStreams = int32(len(st.streams))
	out.Connected = len(st.streams) > 0
	var oldest time.Time
	for sub := range st.streams {
		if oldest.IsZero() || sub.opened.Before(oldest) {
			oldest = sub.opened
		}
	}
	if !oldest.IsZero() {
		out.ConnectedAt = timestamppb.New(oldest)
	}
	return out
}
