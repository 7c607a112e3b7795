package events

import (
	"context"
	"io"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// Control event types (docs/contract.md, "Control events").
const (
	typeHeartbeat           = "heartbeat"
	typeReplayGap           = "polystream.replay_gap"
	typeDropped             = "polystream.dropped"
	typeSubscriptionUpdated = "polystream.subscription_updated"
)

// eventStream is the part of Subscribe's and SubscribeMultiple's server
// streams that delivery needs.
type eventStream interface {
	Send(*eventsv1.Event) error
	SendHeader(metadata.MD) error
	Context() context.Context
}

// serve runs one subscription until its stream ends: the client goes
// away, the hub ends it (queue overflow), sending fails, or, for
// SubscribeMultiple (recv != nil), the client half-closes or sends a bad
// update.
//
// Sending happens in its own goroutine, so that the handler can return
// while a Send is blocked on a stalled client's flow control: returning is
// the only way to end a gRPC stream, and it also unblocks that Send.
func (s *Service) serve(stream eventStream, req *eventsv1.SubscribeRequest, recv func() (*eventsv1.SubscribeRequest, error)) error {
	sr, err := parseSubscribeRequest(req)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	sub := newSubscriber(req.GetClientId(), sr.filter, sr.channel, s.subscriberQueueSize())
	replay, gap := s.hub.subscribe(sub, req.GetLastEventId() != "", req.GetLastEventId())
	gap = s.replayGap(gap)
	keep := false // ignore-cancel fault: stay counted after the context ended
	defer func() { s.hub.unsubscribe(sub, keep) }()
	s.log.Debug("subscribed", "client_id", sub.clientID, "channel", sr.channel,
		"event_types", strings.Join(req.GetEventTypes(), ","), "last_event_id", req.GetLastEventId(), "replay", len(replay))

	ctx, cancel := context.WithCancel(ctx) // ends the helpers when serve returns
	defer cancel()
	// Headers tell the client it is subscribed: events published from now
	// on reach it (docs/contract.md).
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	d := &delivery{stream: stream, sub: sub, channel: sr.channel, interval: sr.heartbeat, acks: make(chan struct{}, 1),
		faults: newFaultDelivery(s.fault), noHeartbeats: !s.sendsHeartbeats(), miscountDrops: s.miscountsDrops()}
	done := make(chan error, 2)
	go func() { done <- d.run(ctx, replay, gap) }()
	if recv != nil {
		go func() {
			// After a half-close the sender ends the stream (nil) once it
			// has delivered what was queued before it.
			if err := receiveUpdates(ctx, sub, d.acks, recv); err != nil {
				done <- err
			}
		}()
	}

	select {
	case <-ctx.Done():
		keep = s.keepCancelled()
		return status.FromContextError(ctx.Err()).Err()
	case <-sub.ended:
		err := sub.endErr()
		s.log.Warn("slow subscriber disconnected", "client_id", sub.clientID, "error", err)
		return err
	case err := <-done:
		return err
	}
}

// receiveUpdates applies SubscribeMultiple's later requests until the
// client half-closes (nil) or sends a bad one (its status). At most one
// acknowledgement waits in the queue (acks is a one-slot semaphore the
// sender frees), so a client that sends updates without reading cannot
// grow server memory; it is held back by flow control instead.
func receiveUpdates(ctx context.Context, sub *subscriber, acks chan struct{}, recv func() (*eventsv1.SubscribeRequest, error)) error {
	for {
		req, err := recv()
		if err == io.EOF {
			sub.finish() // half-close ends the stream (docs/contract.md)
			return nil
		}
		if err != nil {
			return err
		}
		sr, err := parseSubscribeRequest(req)
		if err != nil {
			return err
		}
		if req.GetClientId() != sub.clientID {
			return status.Error(codes.InvalidArgument, "client_id cannot change within a stream")
		}
		select {
		case acks <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		sub.update(sr.filter, sr.channel, req.GetEventTypes())
	}
}

// delivery is the sending side of one stream: replay first, then the
// subscriber's queue, with heartbeats when due.
type delivery struct {
	stream     eventStream
	sub        *subscriber
	channel    string // changes when a subscription update is delivered
	interval   time.Duration
	heartbeats uint64
	acks       chan struct{}
	faults     *faultDelivery // nil unless a self-test fault is active (faults.go)
	// noHeartbeats: the no-heartbeat self-test fault (faults.go).
	noHeartbeats bool
	// miscountDrops: the miscount-drops self-test fault (faults.go).
	miscountDrops bool
}

func (d *delivery) run(ctx context.Context, replay []*record, gap *replayGap) error {
	ticker := time.NewTicker(d.interval)
	defer ticker.Stop()
	defer d.faults.stop()
	if gap != nil {
		if err := d.stream.Send(d.control(typeReplayGap, map[string]string{
			"requested_id":       gap.requestedID,
			"oldest_retained_id": gap.oldestID,
		})); err != nil {
			return err
		}
	}
	for _, r := range replay {
		if err := d.sendRecord(r); err != nil {
			return err
		}
		if err := d.heartbeatIfDue(ticker); err != nil {
			return err
		}
	}
	for {
		for {
			e, ok := d.sub.next()
			if !ok {
				break
			}
			if e.end {
				return d.sendLogEvent(d.faults.release())
			}
			if err := d.sendEntry(e); err != nil {
				return err
			}
			if err := d.heartbeatIfDue(ticker); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.sub.ready:
		case <-ticker.C:
			if err := d.sendHeartbeat(); err != nil {
				return err
			}
		case <-d.faults.holdExpired():
			if err := d.sendLogEvent(d.faults.release()); err != nil {
				return err
			}
		}
	}
}

func (d *delivery) sendEntry(e entry) error {
	switch {
	case e.rec != nil:
		return d.sendRecord(e.rec)
	case e.drop != nil:
		m := e.drop
		return d.stream.Send(d.control(typeDropped, map[string]string{
			"count":                  strconv.FormatUint(d.markerCount(m), 10),
			"first_dropped_id":       m.first.id,
			"last_dropped_id":        m.last.id,
			"first_dropped_sequence": strconv.FormatUint(m.first.seq, 10),
			"last_dropped_sequence":  strconv.FormatUint(m.last.seq, 10),
		}))
	default:
		u := e.update
		d.channel = u.channel
		err := d.stream.Send(d.control(typeSubscriptionUpdated, map[string]string{
			"channel":     u.channel,
			"event_types": strings.Join(u.eventTypes, ","),
		}))
		<-d.acks // the next update may be queued now
		return err
	}
}

// sendRecord sends one log event, through the self-test fault if one is
// active.
func (d *delivery) sendRecord(r *record) error {
	if d.faults != nil {
		for _, r := range d.faults.pass(r) {
			if err := d.sendLogEvent(r); err != nil {
				return err
			}
		}
		return nil
	}
	return d.sendLogEvent(r)
}

// sendLogEvent sends r (nothing when nil) and counts it.
func (d *delivery) sendLogEvent(r *record) error {
	if r == nil {
		return nil
	}
	if err := d.stream.Send(r.event(d.channel)); err != nil {
		return err
	}
	d.sub.stats.received.Add(1)
	return nil
}

// heartbeatIfDue lets a busy stream keep its heartbeats.
func (d *delivery) heartbeatIfDue(ticker *time.Ticker) error {
	select {
	case <-ticker.C:
		return d.sendHeartbeat()
	default:
		return nil
	}
}

func (d *delivery) sendHeartbeat() error {
	if d.noHeartbeats {
		return nil
	}
	d.heartbeats++
	now := timestamppb.Now()
	payload, err := anypb.New(&eventsv1.HeartbeatEvent{Timestamp: now, Sequence: d.heartbeats})
	if err != nil {
		return err
	}
	ev := d.control(typeHeartbeat, nil)
	ev.Timestamp, ev.Payload = now, payload
	return d.stream.Send(ev)
}

// control builds an event that is not in the log: no id, sequence 0.
func (d *delivery) control(typ string, metadata map[string]string) *eventsv1.Event {
	return &eventsv1.Event{Type: typ, Timestamp: timestamppb.Now(), Metadata: metadata, Channel: d.channel}
}
