package events

import (
	"context"
	"slices"
	"sync"
	"time"
)

// hub is the middle of the line publish → log → queues: it appends to the
// log and offers each new record to every subscriber's queue.
type hub struct {
	policy         Policy
	publishTimeout time.Duration
	clients        *clients
	// repeatIDs: the duplicate-broadcast self-test fault (faults.go).
	repeatIDs bool

	// publishMu lets one publish fan out at a time, so every queue receives
	// events in log order; a Block publisher holds it while it waits, which
	// is what makes Block hold up publishers and nobody else.
	publishMu sync.Mutex

	// mu guards the log and the subscriber list. Registering a subscriber
	// and reading the log's end happen under it together: that is the
	// resume seam (replay covers up to that end, the queue everything after).
	mu     sync.Mutex
	log    *eventLog
	subs   []*subscriber // copy-on-write: a publish iterates a snapshot
	closed bool
}

// replayGap is what a polystream.replay_gap event reports.
type replayGap struct {
	requestedID, oldestID string
}

// subscribe registers sub and returns the retained records it must see
// first. With resume, lastID is where the client stopped; an id the log
// does not hold yields a gap and a replay from the oldest retained record.
func (h *hub) subscribe(sub *subscriber, resume bool, lastID string) ([]*record, *replayGap) {
	h.mu.Lock()
	var window []*record
	var gap *replayGap
	if resume {
		if r, ok := h.log.byID[lastID]; ok {
			window = h.log.after(r.seq)
		} else {
			gap = &replayGap{requestedID: lastID}
			if o := h.log.oldest(); o != nil {
				gap.oldestID = o.id
			}
			window = h.log.after(0)
		}
	}
	// Counted as an active stream at the moment it can receive events.
	h.clients.open(sub)
	h.subs = append(slices.Clip(h.subs), sub)
	h.mu.Unlock()

	// The subscriber's filters cannot change before its stream starts.
	replay := window[:0]
	for _, r := range window {
		if r.forChannel(sub.channel) && sub.filter.match(r.typeSegs) {
			replay = append(replay, r)
		}
	}
	return replay, gap
}

// unsubscribe removes sub; publishers skip it from now on. keepCounted
// (only the ignore-cancel self-test fault) leaves it counted as an active
// stream of its client.
func (h *hub) unsubscribe(sub *subscriber, keepCounted bool) {
	sub.end(errStreamDone)
	h.mu.Lock()
	if i := slices.Index(h.subs, sub); i >= 0 {
		h.subs = slices.Delete(slices.Clone(h.subs), i, i+1)
	}
	h.mu.Unlock()
	if !keepCounted {
		h.clients.close(sub)
	}
}

// publishResult is what Broadcast answers.
type publishResult struct {
	id         string
	seq        uint64
	recipients int
}

// publish appends r to the log (unless its id is already there) and offers
// it to every subscriber. It returns once every queue has taken or refused
// the record.
func (h *hub) publish(r *record) (publishResult, error) {
	h.publishMu.Lock()
	defer h.publishMu.Unlock()

	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return publishResult{}, errLogClosed
	}
	if old, ok := h.log.byID[r.id]; ok {
		if !h.repeatIDs {
			h.mu.Unlock()
			return publishResult{id: old.id, seq: old.seq}, nil // idempotent: nothing delivered
		}
		r.id = newUUID() // duplicate-broadcast fault: a new event after all
	}
	if err := h.log.append(r); err != nil {
		h.mu.Unlock()
		return publishResult{}, err
	}
	subs := h.subs // subscribers registered later replay r instead
	h.mu.Unlock()

	res := publishResult{id: r.id, seq: r.seq}
	var waiting []*subscriber
	for _, s := range subs {
		switch s.offer(r, h.policy) {
		case queued:
			res.recipients++
		case full:
			waiting = append(waiting, s)
		}
	}
	if len(waiting) > 0 {
		// Block: everyone with room already has r; now wait, once for all,
		// for the full ones.
		ctx, cancel := context.WithTimeout(context.Background(), h.publishTimeout)
		defer cancel()
		for _, s := range waiting {
			if s.offerWait(r, ctx.Done()) {
				res.recipients++
			}
		}
	}
	return res, nil
}

// close stops publishing and closes the store; open streams keep running
// (the server ends them).
func (h *hub) close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	return h.log.store.close()
}
