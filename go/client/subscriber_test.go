package client

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fastBackoff keeps retry tests short; the bounds still apply.
var fastBackoff = Backoff{Base: 5 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 2, Jitter: 0.5, MaxRetries: 3}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type disconnect struct {
	err     error
	attempt int
	delay   time.Duration
}

// recorder collects callbacks for checks after Run.
type recorder struct {
	mu          sync.Mutex
	events      []string
	controls    []string
	connects    []int
	disconnects []disconnect
}

func (r *recorder) config(cfg SubscriberConfig) SubscriberConfig {
	cfg.OnEvent = func(ev *eventsv1.Event) { r.mu.Lock(); r.events = append(r.events, ev.Id); r.mu.Unlock() }
	cfg.OnControl = func(ev *eventsv1.Event) { r.mu.Lock(); r.controls = append(r.controls, ev.Type); r.mu.Unlock() }
	cfg.OnConnect = func(a int) { r.mu.Lock(); r.connects = append(r.connects, a); r.mu.Unlock() }
	cfg.OnDisconnect = func(err error, a int, d time.Duration) {
		r.mu.Lock()
		r.disconnects = append(r.disconnects, disconnect{err, a, d})
		r.mu.Unlock()
	}
	return cfg
}

func TestNonRetryableCodesAreNotRetried(t *testing.T) {
	for _, code := range []codes.Code{codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.Internal, codes.Unknown, codes.FailedPrecondition} {
		t.Run(CodeName(code), func(t *testing.T) {
			fake, conn := startScripted(t, func(int, *eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error {
				return status.Error(code, "no")
			})
			rec := &recorder{}
			sub, err := NewSubscriber(conn, rec.config(SubscriberConfig{ClientID: "c", Backoff: fastBackoff}))
			if err != nil {
				t.Fatal(err)
			}
			err = sub.Run(testContext(t))
			if status.Code(err) != code {
				t.Fatalf("Run = %v, want %v", err, code)
			}
			if n := len(fake.calls()); n != 1 {
				t.Fatalf("%d Subscribe calls, want 1 (no retry)", n)
			}
			if len(rec.disconnects) != 1 || rec.disconnects[0].delay >= 0 {
				t.Fatalf("OnDisconnect calls %+v, want one with delay < 0", rec.disconnects)
			}
		})
	}
}

func TestRetryableCodesAreRetriedUpToMaxRetries(t *testing.T) {
	for _, code := range []codes.Code{codes.Unavailable, codes.ResourceExhausted, codes.Aborted} {
		t.Run(CodeName(code), func(t *testing.T) {
			fake, conn := startScripted(t, func(int, *eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error {
				return status.Error(code, "try again")
			})
			rec := &recorder{}
			sub, _ := NewSubscriber(conn, rec.config(SubscriberConfig{ClientID: "c", Backoff: fastBackoff}))
			err := sub.Run(testContext(t))
			if status.Code(err) != code || !strings.Contains(err.Error(), "giving up after 3 retries") {
				t.Fatalf("Run = %v, want %v after 3 retries", err, code)
			}
			if n := len(fake.calls()); n != 4 {
				t.Fatalf("%d Subscribe calls, want 1 + 3 retries", n)
			}
			for i, d := range rec.disconnects[:3] {
				ceiling := fastBackoff.Ceiling(i + 1)
				if d.attempt != i+1 || d.delay > ceiling*3/2 || d.delay < ceiling/2 {
					t.Errorf("disconnect %d: attempt %d delay %v, want attempt %d and delay in [%v, %v]", i, d.attempt, d.delay, i+1, ceiling/2, ceiling*3/2)
				}
			}
			if last := rec.disconnects[3]; last.delay >= 0 {
				t.Errorf("last disconnect %+v should announce no retry", last)
			}
		})
	}
}

// The first stream delivers two events and fails; the second must ask for
// the last one and may repeat it: the subscriber drops the repeat.
func TestResumesWithLastEventIDAndDropsDuplicates(t *testing.T) {
	fake, conn := startScripted(t, func(call int, req *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error {
		switch call {
		case 0:
			stream.Send(event("e1", 1))
			stream.Send(heartbeat())
			stream.Send(event("e2", 2))
			return status.Error(codes.Unavailable, "going away")
		default:
			stream.Send(event("e2", 2)) // a duplicate across the seam
			stream.Send(heartbeat())
			stream.Send(event("e3", 3))
			<-stream.Context().Done()
			return nil
		}
	})
	rec := &recorder{}
	sub, _ := NewSubscriber(conn, rec.config(SubscriberConfig{ClientID: "c", LastEventID: "e0", Backoff: fastBackoff}))
	var got []string
	for ev, err := range sub.Events(testContext(t)) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Id)
		if len(got) == 3 {
			break
		}
	}
	if strings.Join(got, ",") != "e1,e2,e3" {
		t.Fatalf("events %v, want e1,e2,e3", got)
	}
	calls := fake.calls()
	if calls[0].LastEventId != "e0" || calls[1].LastEventId != "e2" {
		t.Fatalf("resume ids %q, %q; want e0, e2", calls[0].LastEventId, calls[1].LastEventId)
	}
	if sub.LastEventID() != "e3" {
		t.Fatalf("LastEventID = %q", sub.LastEventID())
	}
	if strings.Join(rec.controls, ",") != "heartbeat,heartbeat" {
		t.Fatalf("control events %v", rec.controls)
	}
	if len(rec.connects) != 2 || rec.connects[0] != 0 || rec.connects[1] != 1 {
		t.Fatalf("OnConnect attempts %v, want [0 1]", rec.connects)
	}
}

// A stream that goes silent is reconnected after twice its heartbeat.
func TestWatchdogReconnectsSilentStream(t *testing.T) {
	fake, conn := startScripted(t, func(call int, req *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error {
		if call == 0 {
			stream.Send(event("e1", 1))
		} else {
			stream.Send(event("e2", 2))
		}
		<-stream.Context().Done() // then silence, as a hung server would
		return nil
	})
	rec := &recorder{}
	sub, _ := NewSubscriber(conn, rec.config(SubscriberConfig{ClientID: "c", HeartbeatInterval: 1, Backoff: fastBackoff}))
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	began := time.Now()
	var got []string
	for ev, err := range sub.Events(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Id)
		if len(got) == 2 {
			break
		}
	}
	if took := time.Since(began); took < 2*time.Second {
		t.Errorf("reconnected after %v, before 2 heartbeats of silence", took)
	}
	if strings.Join(got, ",") != "e1,e2" || fake.calls()[1].LastEventId != "e1" {
		t.Fatalf("events %v, resume id %q", got, fake.calls()[1].LastEventId)
	}
	if len(rec.disconnects) == 0 || !errors.Is(rec.disconnects[0].err, ErrStalled) {
		t.Fatalf("disconnects %+v, want ErrStalled first", rec.disconnects)
	}
}

func TestRunEndsWhenContextEnds(t *testing.T) {
	_, conn := startScripted(t, func(_ int, _ *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error {
		<-stream.Context().Done()
		return nil
	})
	sub, _ := NewSubscriber(conn, SubscriberConfig{ClientID: "c"})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := sub.Run(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the context's error", err)
	}
}

func TestNewSubscriberRejectsBadConfig(t *testing.T) {
	_, conn := startScripted(t, nil)
	_, err := NewSubscriber(conn, SubscriberConfig{})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != "client_id is required" {
		t.Errorf("no client id: %v", err)
	}
	_, err = NewSubscriber(conn, SubscriberConfig{ClientID: "c", HeartbeatInterval: -5})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != "heartbeat_interval must be >= 0, got -5" {
		t.Errorf("negative heartbeat: %v", err)
	}
}

func TestRetryable(t *testing.T) {
	for err, want := range map[error]bool{
		status.Error(codes.Unavailable, ""):       true,
		status.Error(codes.ResourceExhausted, ""): true,
		status.Error(codes.Aborted, ""):           true,
		status.Error(codes.InvalidArgument, ""):   false,
		status.Error(codes.Canceled, ""):          false,
		context.Canceled:                          false,
		ErrStalled:                                true,
		ErrStreamEnded:                            true,
	} {
		if Retryable(err) != want {
			t.Errorf("Retryable(%v) = %v", err, !want)
		}
	}
}

// A stream the server ends with OK is reported as ErrStreamEnded (to
// OnDisconnect, and from Run once retries are used up), and resumed.
func TestServerEndingWithOKIsErrStreamEnded(t *testing.T) {
	fake, conn := startScripted(t, func(call int, _ *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error {
		if call == 0 {
			stream.Send(event("e1", 1))
		}
		return nil // OK: the server ended the subscription
	})
	rec := &recorder{}
	backoff := fastBackoff
	backoff.MaxRetries = 1
	sub, _ := NewSubscriber(conn, rec.config(SubscriberConfig{ClientID: "c", Backoff: backoff}))
	err := sub.Run(testContext(t))
	if !errors.Is(err, ErrStreamEnded) {
		t.Fatalf("Run = %v, want ErrStreamEnded", err)
	}
	if len(rec.disconnects) == 0 || !errors.Is(rec.disconnects[0].err, ErrStreamEnded) || rec.disconnects[0].delay < 0 {
		t.Fatalf("disconnects %+v, want ErrStreamEnded with a retry first", rec.disconnects)
	}
	if calls := fake.calls(); len(calls) < 2 || calls[1].LastEventId != "e1" {
		t.Fatalf("calls %v, want a resume after e1", calls)
	}
}

// OnConnect means subscribed: it waits for the server's headers, which the
// servers send once the subscription is registered, so an event published
// after OnConnect is never missed. A stream refused without headers never
// counts as connected.
func TestOnConnectWaitsForTheServersHeaders(t *testing.T) {
	registered := make(chan struct{})
	_, conn := startScripted(t, func(call int, _ *eventsv1.SubscribeRequest, stream eventsv1.EventService_SubscribeServer) error {
		if call == 0 {
			return status.Error(codes.Unavailable, "not yet") // trailers only
		}
		time.Sleep(300 * time.Millisecond) // registering
		close(registered)
		if err := stream.SendHeader(metadata.MD{}); err != nil {
			return err
		}
		<-stream.Context().Done()
		return nil
	})
	connected := make(chan int, 2)
	sub, _ := NewSubscriber(conn, SubscriberConfig{ClientID: "c", Backoff: fastBackoff,
		OnConnect: func(attempt int) {
			select {
			case <-registered:
			default:
				t.Error("OnConnect before the server sent its headers")
			}
			connected <- attempt
		}})
	ctx, cancel := context.WithCancel(testContext(t))
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx) }()
	select {
	case a := <-connected:
		if a != 1 {
			t.Errorf("OnConnect(%d), want 1: the refused attempt 0 never connected", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("never connected")
	}
	cancel()
	<-done
}
