package events

import (
	"crypto/rand"
	"fmt"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// record is one event in the log. It is never modified after it is
// appended, so every subscriber's stream can share it.
type record struct {
	seq      uint64
	id       string
	typ      string
	typeSegs []string // typ split on ".", for filters
	targets  []string // channels it is for; empty = every channel
	time     *timestamppb.Timestamp
	data     string
	payload  *anypb.Any
	metadata map[string]string
}

// forChannel reports whether a subscriber on channel may see the record.
func (r *record) forChannel(channel string) bool {
	return len(r.targets) == 0 || slices.Contains(r.targets, channel)
}

// event is the record as delivered on one channel. The message shares the
// record's read-only parts; marshalling them concurrently is safe.
func (r *record) event(channel string) *eventsv1.Event {
	return &eventsv1.Event{
		Id:        r.id,
		Type:      r.typ,
		Timestamp: r.time,
		Data:      r.data,
		Payload:   r.payload,
		Metadata:  r.metadata,
		Sequence:  r.seq,
		Channel:   channel,
	}
}

// eventLog is the retained window of the log (the newest `retain`
// records, oldest first) with an index by id, in front of a store that
// makes it durable. It has no lock of its own: the hub's lock guards it.
type eventLog struct {
	store   store
	retain  int
	window  []*record // sequences ascending
	byID    map[string]*record
	lastSeq uint64 // highest sequence ever given, also after trimming
}

// openLog loads the retained window from the store, so sequences continue
// after a restart.
func openLog(st store, retain int) (*eventLog, error) {
	recs, last, err := st.load(retain)
	if err != nil {
		return nil, err
	}
	l := &eventLog{store: st, retain: retain, byID: make(map[string]*record, len(recs)), lastSeq: last}
	for _, r := range recs {
		l.window = append(l.window, r)
		l.byID[r.id] = r
	}
	return l, nil
}

// append gives r the next sequence, stores it and trims the window to the
// retention size. On a store error nothing changes.
func (l *eventLog) append(r *record) error {
	r.seq = l.lastSeq + 1
	var trimTo uint64 // forget sequences <= trimTo
	if r.seq > uint64(l.retain) {
		trimTo = r.seq - uint64(l.retain)
	}
	if err := l.store.append(r, trimTo); err != nil {
		return err
	}
	l.lastSeq = r.seq
	l.window = append(l.window, r)
	l.byID[r.id] = r
	if len(l.window) > l.retain {
		drop := len(l.window) - l.retain
		for _, old := range l.window[:drop] {
			delete(l.byID, old.id)
		}
		// Copy down rather than reslice, so the backing array (and the
		// records it still points at) does not grow without bound.
		n := copy(l.window, l.window[drop:])
		clear(l.window[n:])
		l.window = l.window[:n]
	}
	return nil
}

// after returns the retained records with sequence > seq, oldest first.
func (l *eventLog) after(seq uint64) []*record {
	i := sort.Search(len(l.window), func(i int) bool { return l.window[i].seq > seq })
	return slices.Clone(l.window[i:])
}

// oldest is the oldest retained record, or nil when the log is empty.
func (l *eventLog) oldest() *record {
	if len(l.window) == 0 {
		return nil
	}
	return l.window[0]
}

// newRecord builds an unsequenced record from a publisher's event; the
// server decides id (unless given), time and sequence.
func newRecord(ev *eventsv1.Event, targets []string) *record {
	id := ev.GetId()
	if id == "" {
		id = newUUID()
	}
	return &record{
		id:       id,
		typ:      ev.GetType(),
		typeSegs: strings.Split(ev.GetType(), "."),
		targets:  targets,
		time:     timestamppb.Now(),
		data:     ev.GetData(),
		payload:  ev.GetPayload(),
		metadata: ev.GetMetadata(),
	}
}

// newUUID returns a random (version 4) UUID string.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
