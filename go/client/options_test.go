package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// SubscriberConfig.Retryable replaces the package's rule: here an
// INVALID_ARGUMENT is retried until MaxRetries.
func TestRetryableOption(t *testing.T) {
	fake, conn := startScripted(t, func(int, *eventsv1.SubscribeRequest, eventsv1.EventService_SubscribeServer) error {
		return status.Error(codes.InvalidArgument, "no")
	})
	sub, err := NewSubscriber(conn, SubscriberConfig{ClientID: "c", Backoff: fastBackoff,
		Retryable: func(error) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	err = sub.Run(testContext(t))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Run = %v, want INVALID_ARGUMENT after the retries", err)
	}
	if n := len(fake.calls()); n != 1+fastBackoff.MaxRetries {
		t.Fatalf("%d Subscribe calls, want %d", n, 1+fastBackoff.MaxRetries)
	}
}

// NoWatchdog: a stream silent for longer than twice its heartbeat interval
// is not given up (the watchdog would end it after 2 s).
func TestNoWatchdogOption(t *testing.T) {
	for _, off := range []bool{false, true} {
		fake, conn := startScripted(t, func(_ int, _ *eventsv1.SubscribeRequest, s eventsv1.EventService_SubscribeServer) error {
			<-s.Context().Done()
			return nil
		})
		rec := &recorder{}
		sub, err := NewSubscriber(conn, rec.config(SubscriberConfig{ClientID: "c", HeartbeatInterval: 1,
			Backoff: fastBackoff, NoWatchdog: off}))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(testContext(t), 3*time.Second)
		err = sub.Run(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("NoWatchdog=%v: Run = %v, want the context's deadline", off, err)
		}
		stalled := false
		for _, d := range rec.disconnects {
			stalled = stalled || errors.Is(d.err, ErrStalled)
		}
		if stalled == off || (len(fake.calls()) > 1) == off {
			t.Fatalf("NoWatchdog=%v: disconnects %+v, %d calls", off, rec.disconnects, len(fake.calls()))
		}
	}
}
