package events

import (
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// subscriber is one open stream's place in the hub: its filters, its
// bounded queue and the signals between the publisher and its stream.
type subscriber struct {
	clientID string
	stats    *clientStats
	opened   time.Time

	ready chan struct{} // cap 1: the queue has entries
	space chan struct{} // cap 1: an event left the queue (a Block publisher waits on it)
	ended chan struct{} // closed when the hub ends the stream (err says why)

	mu      sync.Mutex
	filter  filter
	channel string
	q       *queue
	err     error
	closing bool // the client half-closed: queue nothing more
}

func newSubscriber(clientID string, f filter, channel string, queueSize int) *subscriber {
	return &subscriber{
		clientID: clientID,
		opened:   time.Now(),
		ready:    make(chan struct{}, 1),
		space:    make(chan struct{}, 1),
		ended:    make(chan struct{}),
		filter:   f,
		channel:  channel,
		q:        newQueue(queueSize),
	}
}

// offerResult is what happened to one event for one subscriber.
type offerResult int

const (
	skipped offerResult = iota // not for this subscriber, or it has ended
	queued
	dropped
	full // Block policy: the publisher must wait
)

// offer applies the filter, then the policy when the queue is full.
func (s *subscriber) offer(r *record, p Policy) offerResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.closing || !r.forChannel(s.channel) || !s.filter.match(r.typeSegs) {
		return skipped
	}
	if !s.q.full() {
		s.q.push(entry{rec: r})
		notify(s.ready)
		return queued
	}
	switch p {
	case DropNewest:
		s.q.dropNewest(r)
		s.stats.dropped.Add(1)
		return dropped
	case DropOldest:
		s.q.dropOldest()
		s.q.push(entry{rec: r})
		s.stats.dropped.Add(1)
		return queued
	case Block:
		return full
	default: // Disconnect
		s.endLocked(s.overflow())
		return skipped
	}
}

// offerWait is Block's second round: wait for room until expired is
// closed, then disconnect the subscriber (it resumes, so nothing is lost).
func (s *subscriber) offerWait(r *record, expired <-chan struct{}) bool {
	for {
		if res := s.offer(r, Block); res != full {
			return res == queued
		}
		select {
		case <-s.space:
		case <-s.ended:
			return false
		case <-expired:
			s.mu.Lock()
			s.endLocked(s.overflow())
			s.mu.Unlock()
			return false
		}
	}
}

// next takes the queue's first entry, if any.
func (s *subscriber) next() (entry, bool) {
	s.mu.Lock()
	e, ok := s.q.pop()
	s.mu.Unlock()
	if ok && e.rec != nil {
		notify(s.space)
	}
	return e, ok
}

// update replaces filter and channel and queues the acknowledgement in the
// same critical section, so every event is filtered either before it (old
// rules) or after it (new rules).
func (s *subscriber) update(f filter, channel string, patterns []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.filter, s.channel = f, channel
	s.q.push(entry{update: &subscriptionUpdate{channel: channel, eventTypes: patterns}})
	notify(s.ready)
}

// finish queues the end of the stream: what was queued before is still
// delivered, nothing after.
func (s *subscriber) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	s.q.push(entry{end: true})
	notify(s.ready)
}

// end stops the subscriber: publishers skip it from now on and its stream
// returns err.
func (s *subscriber) end(err error) {
	s.mu.Lock()
	s.endLocked(err)
	s.mu.Unlock()
}

func (s *subscriber) endLocked(err error) {
	if s.err == nil {
		s.err = err
		s.q = newQueue(s.q.size) // free what was queued now; it will not be sent
		close(s.ended)
	}
}

func (s *subscriber) endErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// overflow is the exact status of docs/contract.md for a full queue.
func (s *subscriber) overflow() error {
	return status.Error(codes.ResourceExhausted,
		fmt.Sprintf("subscriber queue full (%d events); resume from last_event_id", s.q.size))
}

// notify sets a level-triggered signal without blocking.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
