package client

import "sync"

// Dedup remembers the last window ids it was shown, so memory stays
// bounded however long a stream runs: an id older than the window is
// forgotten (and would pass again).
type Dedup struct {
	mu   sync.Mutex
	seen map[string]struct{}
	ring []string // the remembered ids, oldest at next once full
	next int
}

// NewDedup remembers up to window ids (at least 1).
func NewDedup(window int) *Dedup {
	window = max(window, 1)
	return &Dedup{seen: make(map[string]struct{}, window), ring: make([]string, 0, window)}
}

// Seen reports whether id is among the remembered ones, and remembers it.
func (d *Dedup) Seen(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.seen[id]; ok {
		return true
	}
	if len(d.ring) < cap(d.ring) {
		d.ring = append(d.ring, id)
	} else {
		delete(d.seen, d.ring[d.next])
		d.ring[d.next] = id
		d.next = (d.next + 1) % len(d.ring)
	}
	d.seen[id] = struct{}{}
	return false
}

// Len is how many ids are remembered.
func (d *Dedup) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.seen)
}
