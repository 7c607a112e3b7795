package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"

	"github.com/polystream/polystream/go/client"
)

// runSubscribe follows events through the resilient subscriber (retry,
// resume, de-duplication, watchdog) and prints log events; --raw makes one
// plain call and prints control events too.
func runSubscribe(ctx context.Context, args []string) error {
	c := newCommand("subscribe")
	var types listFlag
	req := &eventsv1.SubscribeRequest{}
	c.flags.StringVar(&req.ClientId, "client-id", "", "client id (required)")
	c.flags.Var(&types, "types", "type patterns, e.g. a.*,b")
	c.flags.StringVar(&req.Channel, "channel", "", `channel ("" = default)`)
	c.flags.StringVar(&req.LastEventId, "last-event-id", "", "resume after this event")
	heartbeat := c.flags.Int("heartbeat", 0, "SECONDS between heartbeats (0 = the server's 30)")
	count := c.flags.Int("count", 0, "exit 0 after N log events")
	raw := c.flags.Bool("raw", false, "one plain Subscribe call: no retry, prints control events too")
	if err := c.parse(args); err != nil {
		return err
	}
	if err := c.requireFlag("client-id", req.ClientId); err != nil {
		return err
	}
	req.EventTypes, req.HeartbeatInterval = types, int32(*heartbeat)
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := c.streamContext(ctx)
	defer cancel()

	if *raw {
		stream, err := eventsv1.NewEventServiceClient(conn).Subscribe(ctx, req)
		if err != nil {
			return err
		}
		isLogEvent := func(ev *eventsv1.Event) bool { return ev.GetSequence() > 0 }
		return printStream(stream.Recv, *count, isLogEvent)
	}

	sub, err := client.NewSubscriber(conn, client.SubscriberConfig{
		ClientID:          req.ClientId,
		EventTypes:        req.EventTypes,
		Channel:           req.Channel,
		LastEventID:       req.LastEventId,
		HeartbeatInterval: req.HeartbeatInterval,
		OnControl:         reportControlEvent,
		OnDisconnect: func(err error, attempt int, delay time.Duration) {
			if delay >= 0 {
				fmt.Fprintf(os.Stderr, "polystream: reconnecting in %s (attempt %d): %s\n", delay.Round(time.Millisecond), attempt, describe(err))
			}
		},
	})
	if err != nil {
		return err // INVALID_ARGUMENT, as the server would say
	}
	seen := 0
	for ev, err := range sub.Events(ctx) {
		if err != nil {
			return err
		}
		if err := printMessage(ev); err != nil {
			return err
		}
		if seen++; *count > 0 && seen >= *count {
			return nil
		}
	}
	// --timeout bounds the whole subscription, reconnections included.
	return status.FromContextError(ctx.Err()).Err()
}

// reportControlEvent tells a person about gaps and drops on stderr;
// heartbeats are routine and stay silent.
func reportControlEvent(ev *eventsv1.Event) {
	if ev.GetType() != "heartbeat" {
		fmt.Fprintf(os.Stderr, "polystream: %s %v\n", ev.GetType(), ev.GetMetadata())
	}
}

func runPublish(ctx context.Context, args []string) error {
	c := newCommand("publish")
	ev := &eventsv1.Event{}
	var channels listFlag
	metadata := mapFlag{}
	c.flags.StringVar(&ev.Type, "type", "", "event type, e.g. user.created (required)")
	c.flags.StringVar(&ev.Data, "data", "", "JSON text")
	c.flags.StringVar(&ev.Id, "id", "", "event id; one already in the log makes the call idempotent")
	c.flags.Var(&channels, "channels", "target channels a,b (default: all)")
	c.flags.Var(&metadata, "metadata", "k=v,k2=v2")
	if err := c.parse(args); err != nil {
		return err
	}
	if err := c.requireFlag("type", ev.Type); err != nil {
		return err
	}
	ev.Metadata = metadata
	return unary(ctx, c, eventsv1.NewEventServiceClient, func(ctx context.Context, conn eventsv1.EventServiceClient) (*eventsv1.BroadcastResponse, error) {
		return conn.Broadcast(ctx, &eventsv1.BroadcastRequest{Event: ev, TargetChannels: channels})
	})
}

func runStatus(ctx context.Context, args []string) error {
	c := newCommand("status")
	req := &eventsv1.SubscribeRequest{}
	c.flags.StringVar(&req.ClientId, "client-id", "", "client id")
	if err := c.parse(args); err != nil {
		return err
	}
	return unary(ctx, c, eventsv1.NewEventServiceClient, func(ctx context.Context, conn eventsv1.EventServiceClient) (*eventsv1.ConnectionStatus, error) {
		return conn.GetConnectionStatus(ctx, req)
	})
}
