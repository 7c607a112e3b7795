// Package driver runs one scenario on a client implementation through its
// ClientDriver service (proto/polystream/conformance/v1/driver.proto) and
// records what the client observed, as it happens, so the harness can wait
// for a moment (the 500th event, a reconnection) and inject a fault there.
package driver

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"

	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
)

// Observations is everything a session saw, in order, with the harness's
// clock next to the client's.
type Observations struct {
	StartedAt    time.Time
	All          []Obs
	Received     []Received
	Connected    []Connected
	Disconnected []Disconnected
	Finished     *pb.Finished
	FinishedAt   time.Time
	// RunErr is an error of the Run call itself (the driver failed, not the
	// client under test); a finished observation is then missing.
	RunErr error
}

// Obs is one observation and when the harness got it.
type Obs struct {
	At time.Time
	O  *pb.Observation
}

// Received is a message the client received.
type Received struct {
	At time.Time
	*pb.Received
}

// Connected is a connection the client reported.
type Connected struct {
	At time.Time
	*pb.Connected
}

// Disconnected is a disconnection the client reported.
type Disconnected struct {
	At time.Time
	*pb.Disconnected
}

// LogCount is how many received messages carry a sequence (> 0): log events
// for EventService (control events have 0), every message for the others.
func (o *Observations) LogCount() int {
	n := 0
	for _, r := range o.Received {
		if r.GetSequence() > 0 {
			n++
		}
	}
	return n
}

// SentCount is the highest sent.count reported (client streams).
func (o *Observations) SentCount() int {
	n := 0
	for _, x := range o.All {
		if s := x.O.GetSent(); s != nil && int(s.GetCount()) > n {
			n = int(s.GetCount())
		}
	}
	return n
}

// MaxAttempt is the highest connected.attempt seen, -1 if none.
func (o *Observations) MaxAttempt() int {
	m := -1
	for _, c := range o.Connected {
		if int(c.GetAttempt()) > m {
			m = int(c.GetAttempt())
		}
	}
	return m
}

// Session is one Run call in progress.
type Session struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	obs     Observations
	changed chan struct{} // closed and replaced on every observation
}

// Start calls Run and records observations until the stream ends.
func Start(ctx context.Context, cc *grpc.ClientConn, req *pb.RunRequest) *Session {
	ctx, cancel := context.WithCancel(ctx)
	s := &Session{cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	s.obs.StartedAt = time.Now()
	go s.loop(ctx, pb.NewClientDriverClient(cc), req)
	return s
}

func (s *Session) loop(ctx context.Context, c pb.ClientDriverClient, req *pb.RunRequest) {
	defer close(s.done)
	defer s.cancel()
	stream, err := c.Run(ctx, req)
	if err != nil {
		s.fail(err)
		return
	}
	for {
		o, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				s.mu.Lock()
				if s.obs.Finished == nil {
					s.obs.RunErr = errors.New("driver ended Run without a finished observation")
				}
				s.notifyLocked()
				s.mu.Unlock()
				return
			}
			s.fail(err)
			return
		}
		s.add(o)
	}
}

func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.obs.Finished == nil {
		s.obs.RunErr = err
	}
	s.notifyLocked()
	s.mu.Unlock()
}

func (s *Session) add(o *pb.Observation) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.obs.All = append(s.obs.All, Obs{At: now, O: o})
	switch k := o.GetKind().(type) {
	case *pb.Observation_Received:
		s.obs.Received = append(s.obs.Received, Received{At: now, Received: k.Received})
	case *pb.Observation_Connected:
		s.obs.Connected = append(s.obs.Connected, Connected{At: now, Connected: k.Connected})
	case *pb.Observation_Disconnected:
		s.obs.Disconnected = append(s.obs.Disconnected, Disconnected{At: now, Disconnected: k.Disconnected})
	case *pb.Observation_Finished:
		if s.obs.Finished == nil {
			s.obs.Finished = k.Finished
			s.obs.FinishedAt = now
		}
	}
	s.notifyLocked()
}

func (s *Session) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Snapshot copies what was observed so far.
func (s *Session) Snapshot() Observations {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.obs
	o.All = append([]Obs(nil), o.All...)
	o.Received = append([]Received(nil), o.Received...)
	o.Connected = append([]Connected(nil), o.Connected...)
	o.Disconnected = append([]Disconnected(nil), o.Disconnected...)
	return o
}

// Done is closed when the Run stream ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// Stop cancels the Run call (the driver then cancels the client's call).
func (s *Session) Stop() { s.cancel() }

// WaitFor waits until cond holds on the observations, the session ended,
// or within passed. It returns whether cond held.
func (s *Session) WaitFor(ctx context.Context, within time.Duration, cond func(*Observations) bool) bool {
	t := time.NewTimer(within)
	defer t.Stop()
	for {
		s.mu.Lock()
		ok := cond(&s.obs)
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-s.done:
			s.mu.Lock()
			ok := cond(&s.obs)
			s.mu.Unlock()
			return ok
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}
