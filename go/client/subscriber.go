package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// ErrStreamEnded is what the subscriber reports (to OnDisconnect, and from
// Run when it gives up) when the server ended a subscription with OK: a live
// subscription never ends on purpose, so the subscriber resumes (it is
// retryable, like a transport failure).
var ErrStreamEnded = errors.New("server ended the subscription")

// defaultHeartbeat is the server's interval when the request asks for 0.
const defaultHeartbeat = 30 * time.Second

// SubscriberConfig says what to subscribe to and how to react.
type SubscriberConfig struct {
	ClientID    string   // required
	EventTypes  []string // patterns; empty = all
	Channel     string   // "" = default
	LastEventID string   // resume after this event; "" = live only
	// HeartbeatInterval in seconds (0 = the server's 30 s). The watchdog
	// reconnects when nothing arrives for twice this long.
	HeartbeatInterval int32

	Backoff     Backoff // zero value = DefaultBackoff
	DedupWindow int     // event ids remembered to drop duplicates; 0 = 10000

	// Retryable decides which failures are retried; nil = the package's
	// Retryable. (The conformance self-test uses it to retry everything.)
	Retryable func(error) bool
	// NoWatchdog turns the heartbeat watchdog off: a silent stream is
	// waited on for ever. Only for the conformance self-test's faults.
	NoWatchdog bool

	// OnEvent gets each log event (sequence > 0) once, in order.
	OnEvent func(*eventsv1.Event)
	// OnControl gets control events: heartbeat, polystream.replay_gap,
	// polystream.dropped, ...
	OnControl func(*eventsv1.Event)
	// OnConnect is called when a stream is open and the server has the
	// subscription (its headers arrived); attempt is 0 for the first
	// connection, n for the n-th retry in a row.
	OnConnect func(attempt int)
	// OnDisconnect is called when a stream ends with err. attempt and delay
	// describe the retry that follows; delay < 0 means none will.
	OnDisconnect func(err error, attempt int, delay time.Duration)
}

// Subscriber is a resilient EventService subscription: it reconnects with
// backoff on retryable failures, resumes after the last event it delivered,
// drops duplicates and reconnects streams that go silent. Run it once at a
// time.
type Subscriber struct {
	events eventsv1.EventServiceClient
	conn   grpc.ClientConnInterface
	cfg    SubscriberConfig
	dedup  *Dedup

	mu          sync.Mutex
	lastEventID string
}

// NewSubscriber checks cfg and prepares a subscriber on conn. A request
// the server would refuse is refused here with the server's code and
// message (INVALID_ARGUMENT), so callers handle both the same way.
func NewSubscriber(conn grpc.ClientConnInterface, cfg SubscriberConfig) (*Subscriber, error) {
	if cfg.ClientID == "" {
		return nil, status.Error(codes.InvalidArgument, "client_id is required")
	}
	if cfg.HeartbeatInterval < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "heartbeat_interval must be >= 0, got %d", cfg.HeartbeatInterval)
	}
	if cfg.Backoff == (Backoff{}) {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.DedupWindow <= 0 {
		cfg.DedupWindow = 10000
	}
	if cfg.Retryable == nil {
		cfg.Retryable = Retryable
	}
	return &Subscriber{
		events:      eventsv1.NewEventServiceClient(conn),
		conn:        conn,
		cfg:         cfg,
		dedup:       NewDedup(cfg.DedupWindow),
		lastEventID: cfg.LastEventID,
	}, nil
}

// LastEventID is the resume point: the id of the last log event delivered.
func (s *Subscriber) LastEventID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastEventID
}

// Run subscribes and delivers events to the callbacks until ctx ends
// (returning ctx's error), a non-retryable error occurs, or the retries
// are used up (returning the last error).
func (s *Subscriber) Run(ctx context.Context) error {
	return s.run(ctx, s.cfg.OnEvent)
}

// Events runs the subscription as an iterator of log events. Breaking out
// of the loop ends the subscription; an error that ends it is yielded last
// with a nil event. Ending ctx ends the iteration without an error.
func (s *Subscriber) Events(ctx context.Context) iter.Seq2[*eventsv1.Event, error] {
	return func(yield func(*eventsv1.Event, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stopped := false
		err := s.run(ctx, func(ev *eventsv1.Event) {
			if !stopped && !yield(ev, nil) {
				stopped = true
				cancel()
			}
		})
		if !stopped && ended(ctx) == nil && err != nil {
			yield(nil, err)
		}
	}
}

func (s *Subscriber) run(ctx context.Context, onEvent func(*eventsv1.Event)) error {
	attempt := 0 // retries in a row since the last stream that delivered something
	for {
		received, err := s.session(ctx, attempt, onEvent)
		if err := ended(ctx); err != nil {
			return err
		}
		if received {
			attempt = 0
		}
		attempt++
		retryable := s.cfg.Retryable(err)
		if !retryable || !s.cfg.Backoff.Allows(attempt) {
			s.disconnected(err, attempt, -1)
			if retryable {
				return fmt.Errorf("giving up after %d retries: %w", attempt-1, err)
			}
			return err
		}
		delay := s.cfg.Backoff.Delay(attempt)
		s.disconnected(err, attempt, delay)
		if err := sleep(ctx, delay); err != nil {
			return err
		}
		// Our backoff decides when to reconnect, not the channel's own.
		if c, ok := s.conn.(interface{ ResetConnectBackoff() }); ok {
			c.ResetConnectBackoff()
		}
	}
}

// session runs one Subscribe stream and reports whether it delivered
// anything and why it ended.
func (s *Subscriber) session(ctx context.Context, attempt int, onEvent func(*eventsv1.Event)) (received bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The watchdog covers a connection attempt that hangs too, and only
	// runs while waiting for the server, so a slow callback is not
	// mistaken for a silent stream.
	silence := 2 * s.heartbeat()
	if s.cfg.NoWatchdog {
		silence = math.MaxInt64 // a timer that never fires
	}
	watchdog := time.AfterFunc(silence, func() { cancel(ErrStalled) })
	defer watchdog.Stop()
	stream, err := s.events.Subscribe(ctx, &eventsv1.SubscribeRequest{
		ClientId:          s.cfg.ClientID,
		EventTypes:        s.cfg.EventTypes,
		LastEventId:       s.LastEventID(),
		Channel:           s.cfg.Channel,
		HeartbeatInterval: s.cfg.HeartbeatInterval,
	})
	if err != nil {
		if errors.Is(context.Cause(ctx), ErrStalled) {
			return false, ErrStalled
		}
		return false, err
	}
	// Connected means subscribed: the servers send the headers once the
	// subscription is registered, so what is published after OnConnect
	// reaches this stream (as the Python client's wait_for_connection).
	// A stream that fails first reports why at its Recv below.
	// (A stream that ends without headers, trailers only, has none.)
	if md, err := stream.Header(); err == nil && md != nil && s.cfg.OnConnect != nil {
		s.cfg.OnConnect(attempt)
	}
	for {
		ev, err := stream.Recv()
		watchdog.Stop()
		switch {
		case errors.Is(context.Cause(ctx), ErrStalled):
			return received, ErrStalled
		case errors.Is(err, io.EOF):
			return received, ErrStreamEnded
		case err != nil:
			return received, err
		}
		received = true
		s.deliver(ev, onEvent)
		watchdog.Reset(silence)
	}
}

func (s *Subscriber) heartbeat() time.Duration {
	if s.cfg.HeartbeatInterval == 0 {
		return defaultHeartbeat
	}
	return time.Duration(s.cfg.HeartbeatInterval) * time.Second
}

// deliver passes a log event on once, moving the resume point; control
// events (sequence 0) never move it.
func (s *Subscriber) deliver(ev *eventsv1.Event, onEvent func(*eventsv1.Event)) {
	if ev.GetSequence() == 0 {
		if s.cfg.OnControl != nil {
			s.cfg.OnControl(ev)
		}
		return
	}
	if ev.GetId() != "" && s.dedup.Seen(ev.GetId()) {
		return
	}
	s.mu.Lock()
	s.lastEventID = ev.GetId()
	s.mu.Unlock()
	if onEvent != nil {
		onEvent(ev)
	}
}

func (s *Subscriber) disconnected(err error, attempt int, delay time.Duration) {
	if s.cfg.OnDisconnect != nil {
		s.cfg.OnDisconnect(err, attempt, delay)
	}
}

// ended is ctx's error, also in the moment when gRPC has already acted on
// ctx's deadline (failing the stream with DEADLINE_EXCEEDED) but ctx's own
// timer has not fired yet.
func ended(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if deadline, ok := ctx.Deadline(); ok && !time.Now().Before(deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
