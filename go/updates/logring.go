package updates

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logRecord is a log record flattened at logging time, so the ring holds only
// strings and never keeps the caller's values (or their memory) alive.
type logRecord struct {
	seq     uint64 // position in the ring's history, 1, 2, 3, ...
	time    time.Time
	level   string // debug, info, warn, error
	message string
	service string
	fields  map[string]string
}

// LogRing keeps the server's last N slog records for TailLogs. Followers do not
// get queues of their own: they keep a cursor into the ring and are woken by a
// broadcast channel, so a slow follower costs no memory and never blocks logging;
// one that falls more than N records behind skips to the oldest retained record.
type LogRing struct {
	mu      sync.Mutex
	buf     []logRecord // circular, len == capacity once full
	next    uint64      // seq of the next record
	changed chan struct{}
}

// NewLogRing returns a ring that keeps the last capacity records (1000 when
// capacity <= 0).
func NewLogRing(capacity int) *LogRing {
	if capacity <= 0 {
		capacity = 1000
	}
	return &LogRing{buf: make([]logRecord, 0, capacity), next: 1, changed: make(chan struct{})}
}

func (r *LogRing) add(rec logRecord) {
	r.mu.Lock()
	rec.seq = r.next
	r.next++
	if len(r.buf) < cap(r.buf) {
		r.buf = append(r.buf, rec)
	} else {
		r.buf[int((rec.seq-1)%uint64(cap(r.buf)))] = rec
	}
	close(r.changed) // wake every follower at once
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// since returns the retained records with seq >= from (oldest first), the seq to
// ask for next, and a channel closed on the next append.
func (r *LogRing) since(from uint64) ([]logRecord, uint64, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	oldest := r.next - uint64(len(r.buf))
	if from < oldest {
		from = oldest
	}
	out := make([]logRecord, 0, r.next-from)
	for s := from; s < r.next; s++ {
		out = append(out, r.buf[int((s-1)%uint64(cap(r.buf)))])
	}
	return out, r.next, r.changed
}

// Handler returns a slog.Handler that records into the ring and passes every
// record on to next. The ring records what next is enabled for, so the server's
// --log-level decides what TailLogs can see.
func (r *LogRing) Handler(next slog.Handler) slog.Handler {
	return &ringHandler{ring: r, next: next}
}

type ringHandler struct {
	ring    *LogRing
	next    slog.Handler
	service string            // from a top-level "service" attribute
	attrs   map[string]string // pre-formatted WithAttrs, keys prefixed by groups
	groups  string            // "g1.g2." prefix for attributes added later
}

func (h *ringHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *ringHandler) Handle(ctx context.Context, rec slog.Record) error {
	fields := make(map[string]string, len(h.attrs)+rec.NumAttrs())
	for k, v := range h.attrs {
		fields[k] = v
	}
	service := h.service
	rec.Attrs(func(a slog.Attr) bool {
		if h.groups == "" && a.Key == "service" {
			service = a.Value.Resolve().String()
			return true
		}
		flatten(fields, h.groups, a)
		return true
	})
	h.ring.add(logRecord{
		time:    rec.Time,
		level:   levelName(rec.Level),
		message: rec.Message,
		service: service,
		fields:  fields,
	})
	return h.next.Handle(ctx, rec)
}

func (h *ringHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = make(map[string]string, len(h.attrs)+len(as))
	for k, v := range h.attrs {
		c.attrs[k] = v
	}
	for _, a := range as {
		if h.groups == "" && a.Key == "service" {
			c.service = a.Value.Resolve().String()
			continue
		}
		flatten(c.attrs, h.groups, a)
	}
	c.next = h.next.WithAttrs(as)
	return &c
}

func (h *ringHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.groups = h.groups + name + "."
	c.next = h.next.WithGroup(name)
	return &c
}

// flatten writes a (possibly nested) attribute as dotted keys.
func flatten(dst map[string]string, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p = prefix + a.Key + "."
		}
		for _, g := range v.Group() {
			flatten(dst, p, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	dst[prefix+a.Key] = v.String()
}

// levelName maps slog levels onto the four names of the contract.
func levelName(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	default:
		return "error"
	}
}

var levelRank = map[string]int{"debug": 0, "info": 1, "warn": 2, "error": 3}
