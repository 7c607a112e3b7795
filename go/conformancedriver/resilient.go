package conformancedriver

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/polystream/polystream/go/client"
	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// subscribeResilient runs go/client's Subscriber: connected/disconnected for
// every attempt, control events reported too, log events deduplicated.
// Request headers and deadline_ms apply to the whole subscription.
func (r *run) subscribeResilient(s *pb.Subscribe) error {
	var connects int32
	open := false // a stream is open: connected, not yet disconnected
	var logEvents int32
	stopped := false // stop_after reached: finished OK

	// Callbacks run on the subscriber's goroutine, between reads: a delay here
	// is a slow consumer.
	onMessage := func(e *eventsv1.Event) {
		if r.cancelled || stopped {
			return
		}
		if d := r.req.GetReadDelayMs(); d > 0 {
			select {
			case <-time.After(time.Duration(d) * time.Millisecond):
			case <-r.ctx.Done():
			}
		}
		seq, id, typ := describeEvent(e)
		r.emitReceived(e, seq, id, typ)
		r.received++
		if seq > 0 {
			logEvents++
		}
		if n := r.req.GetCancelAfter(); n > 0 && r.received >= n {
			r.cancelled = true
			r.cancel()
		} else if n := s.GetStopAfter(); n > 0 && logEvents >= n {
			stopped = true
			r.cancel()
		}
	}
	req := s.GetRequest()
	var retryable func(error) bool // nil = go/client's own rule
	if r.fault == FaultRetryAll {
		// Every status; the run's own end (ctx) still stops the subscriber.
		retryable = func(error) bool { return true }
	}
	var sub *client.Subscriber
	sub, err := client.NewSubscriber(r.conn, client.SubscriberConfig{
		ClientID:          req.GetClientId(),
		EventTypes:        req.GetEventTypes(),
		Channel:           req.GetChannel(),
		LastEventID:       req.GetLastEventId(),
		HeartbeatInterval: req.GetHeartbeatInterval(),
		Backoff:           backoff(s.GetBackoff(), r.fault == FaultNoBackoff),
		Retryable:         retryable,
		NoWatchdog:        r.fault == FaultBlind,
		OnEvent:           onMessage,
		OnControl:         onMessage,
		OnConnect: func(int) {
			r.emitConnected(connects, sub.LastEventID())
			connects++
			open = true
		},
		OnDisconnect: func(err error, _ int, delay time.Duration) {
			open = false
			code, msg := errorCode(err)
			d := &pb.Disconnected{Code: code, Message: msg, WillRetry: delay >= 0}
			if delay >= 0 {
				d.DelayMs = delay.Milliseconds()
			}
			r.emit(&pb.Observation{Kind: &pb.Observation_Disconnected{Disconnected: d}})
		},
	})
	if err != nil { // bad client_id or heartbeat: the client refuses before calling
		if _, isStatus := status.FromError(err); !isStatus {
			err = status.Error(codes.InvalidArgument, err.Error())
		}
		return r.finish(err, nil, nil, nil)
	}
	err = sub.Run(r.ctx)
	if stopped {
		err = nil
	}
	if open && errors.Is(err, context.DeadlineExceeded) {
		// The deadline ended an open stream: reported like any other end
		// (go/client returns the context's error without a disconnect).
		code, msg := errorCode(err)
		r.emit(&pb.Observation{Kind: &pb.Observation_Disconnected{Disconnected: &pb.Disconnected{Code: code, Message: msg}}})
	}
	// go/client does not expose the last attempt's headers and trailers.
	code, msg := errorCode(err)
	r.emit(&pb.Observation{Kind: &pb.Observation_Finished{Finished: &pb.Finished{Code: code, Message: msg}}})
	return nil
}

// backoff maps driver.proto's Backoff onto go/client's; unset fields keep
// the client's defaults. constant (the no-backoff fault) makes every delay
// exactly the base: no growth, no jitter.
func backoff(b *pb.Backoff, constant bool) client.Backoff {
	out := client.DefaultBackoff
	if b != nil {
		if b.GetBaseMs() > 0 {
			out.Base = time.Duration(b.GetBaseMs()) * time.Millisecond
		}
		if b.GetMaxMs() > 0 {
			out.Max = time.Duration(b.GetMaxMs()) * time.Millisecond
		}
		if b.GetMultiplier() >= 1 {
			out.Multiplier = b.GetMultiplier()
		}
		out.MaxRetries = int(b.GetMaxRetries())
	}
	if out.Max < out.Base {
		out.Max = out.Base
	}
	if constant {
		out.Multiplier, out.Jitter = 1, 0
	}
	return out
}

// errorCode names a failure the same way as the Python driver: a status
// error by its code; the client's own verdicts ErrStalled (heartbeat
// watchdog) as UNAVAILABLE and a stream the server ended with OK as OK;
// the call's context as CANCELLED or DEADLINE_EXCEEDED.
func errorCode(err error) (string, string) {
	switch {
	case err == nil:
		return "OK", ""
	case errors.Is(err, context.Canceled):
		return "CANCELLED", err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return "DEADLINE_EXCEEDED", err.Error()
	case errors.Is(err, client.ErrStalled):
		return "UNAVAILABLE", err.Error()
	case errors.Is(err, client.ErrStreamEnded):
		return "OK", err.Error()
	}
	if st, ok := status.FromError(err); ok {
		return client.CodeName(st.Code()), st.Message()
	}
	return "UNAVAILABLE", err.Error() // a transport failure without a status, as in the Python driver
}
