package events

import (
	"context"
	"io"
	"regexp"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestBroadcastDeliversToSubscribers(t *testing.T) {
	ts := startServer(t, Config{})
	a, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "a"})
	b, _ := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "b"})

	payload, _ := anypb.New(&eventsv1.UserEvent{UserId: "u1", Action: "created"})
	before := time.Now()
	res, err := ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{
		Type: "user.created", Data: `{"x":1}`, Payload: payload, Metadata: map[string]string{"k": "v"},
		Sequence: 99, Channel: "ignored", Timestamp: timestamppb.New(time.Unix(1, 0)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sequence != 1 || res.Recipients != 2 || !uuidV4.MatchString(res.EventId) {
		t.Fatalf("response %v", res)
	}
	for _, s := range []eventReceiver{a, b} {
		ev := recvSkippingHeartbeats(t, s)
		if ev.Id != res.EventId || ev.Sequence != 1 || ev.Type != "user.created" || ev.Data != `{"x":1}` ||
			ev.Channel != "default" || ev.Metadata["k"] != "v" || !proto.Equal(ev.Payload, payload) {
			t.Fatalf("event %v", ev)
		}
		if ts := ev.Timestamp.AsTime(); ts.Before(before.Add(-time.Second)) || ts.After(time.Now().Add(time.Second)) {
			t.Fatalf("timestamp %v is not the publish time", ts)
		}
	}
	if res := ts.publish("user.deleted"); res.Sequence != 2 {
		t.Fatalf("second sequence %d", res.Sequence)
	}
}

func TestFiltersApplyToLiveDelivery(t *testing.T) {
	ts := startServer(t, Config{})
	users, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "u", EventTypes: []string{"user.*"}})
	errs, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "e", EventTypes: []string{"**.error"}})
	for _, typ := range []string{"user.created", "system.db.error", "user", "error", "user.created.late", "user.deleted"} {
		ts.publish(typ)
	}
	got, _ := recvLog(t, users, 2)
	if got[0].Type != "user.created" || got[1].Type != "user.deleted" {
		t.Fatalf("user.* got %v %v", got[0].Type, got[1].Type)
	}
	got, _ = recvLog(t, errs, 2)
	if got[0].Type != "system.db.error" || got[1].Type != "error" {
		t.Fatalf("**.error got %v %v", got[0].Type, got[1].Type)
	}
}

func TestTargetChannels(t *testing.T) {
	ts := startServer(t, Config{})
	def, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "d"})
	a, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "a", Channel: "a"})
	b, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "b", Channel: "b"})

	if r := ts.publish("only.a", withTargets("a")); r.Recipients != 1 {
		t.Fatalf("recipients %d, want 1", r.Recipients)
	}
	if r := ts.publish("a.and.default", withTargets("a", "")); r.Recipients != 2 {
		t.Fatalf("recipients %d, want 2", r.Recipients)
	}
	if r := ts.publish("everyone"); r.Recipients != 3 {
		t.Fatalf("recipients %d, want 3", r.Recipients)
	}
	check := func(s eventReceiver, channel string, types ...string) {
		t.Helper()
		got, _ := recvLog(t, s, len(types))
		for i, ev := range got {
			if ev.Type != types[i] || ev.Channel != channel {
				t.Fatalf("channel %s: got %s on %q, want %s", channel, ev.Type, ev.Channel, types[i])
			}
		}
	}
	check(def, "default", "a.and.default", "everyone")
	check(a, "a", "only.a", "a.and.default", "everyone")
	check(b, "b", "everyone")
}

func TestBroadcastIsIdempotentByID(t *testing.T) {
	ts := startServer(t, Config{})
	s, _ := ts.subscribed(ts.client, &eventsv1.SubscribeRequest{ClientId: "c"})
	first := ts.publish("order.placed", withID("order-1"))
	again := ts.publish("order.placed", withID("order-1"), withData(`{"changed":true}`))
	if first.EventId != "order-1" || first.Sequence != 1 || first.Recipients != 1 {
		t.Fatalf("first %v", first)
	}
	if again.EventId != "order-1" || again.Sequence != 1 || again.Recipients != 0 {
		t.Fatalf("repeat %v, want the original sequence and 0 recipients", again)
	}
	next := ts.publish("next")
	got, _ := recvLog(t, s, 2)
	if got[0].Id != "order-1" || got[0].Data != `{}` || got[1].Id != next.EventId || next.Sequence != 2 {
		t.Fatalf("delivered %v then %v", got[0], got[1])
	}
}

func TestConcurrentBroadcastsOfOneIDAppendOnce(t *testing.T) {
	ts := startServer(t, Config{})
	var wg sync.WaitGroup
	results := make([]*eventsv1.BroadcastResponse, 20)
	for i := range results {
		wg.Go(func() {
			res, err := ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Id: "same", Type: "t"}})
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = res
		})
	}
	wg.Wait()
	for _, r := range results {
		if r == nil || r.Sequence != 1 {
			t.Fatalf("got %v, want sequence 1 for all", r)
		}
	}
	if r := ts.publish("t"); r.Sequence != 2 {
		t.Fatalf("log has more than one copy: next sequence %d", r.Sequence)
	}
}

func TestBadInput(t *testing.T) {
	ts := startServer(t, Config{})
	subscribeErr := func(req *eventsv1.SubscribeRequest) error {
		stream, _ := ts.subscribe(ts.client, req)
		_, err := stream.Recv()
		return err
	}
	multipleErr := func(reqs ...*eventsv1.SubscribeRequest) error {
		stream, err := ts.client.SubscribeMultiple(ts.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range reqs {
			if err := stream.Send(r); err != nil {
				break // the server already ended the stream; Recv says why
			}
		}
		for {
			ev, err := stream.Recv()
			if err != nil {
				return err
			}
			if ev.Type == typeSubscriptionUpdated {
				t.Fatalf("bad update acknowledged: %v", ev)
			}
		}
	}
	cases := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"subscribe without client_id", subscribeErr(&eventsv1.SubscribeRequest{}), codes.InvalidArgument, "client_id is required"},
		{"negative heartbeat", subscribeErr(&eventsv1.SubscribeRequest{ClientId: "c", HeartbeatInterval: -5}), codes.InvalidArgument, "heartbeat_interval must be >= 0, got -5"},
		{"bad filter", subscribeErr(&eventsv1.SubscribeRequest{ClientId: "c", EventTypes: []string{"ok.*", "a..b"}}), codes.InvalidArgument, `invalid event type pattern "a..b": empty segment`},
		{"empty filter pattern", subscribeErr(&eventsv1.SubscribeRequest{ClientId: "c", EventTypes: []string{""}}), codes.InvalidArgument, `invalid event type pattern "": empty segment`},
		{"multiple without client_id", multipleErr(&eventsv1.SubscribeRequest{}), codes.InvalidArgument, "client_id is required"},
		{"multiple bad filter", multipleErr(&eventsv1.SubscribeRequest{ClientId: "c", EventTypes: []string{"a..b"}}), codes.InvalidArgument, `invalid event type pattern "a..b": empty segment`},
		{"multiple client_id change", multipleErr(&eventsv1.SubscribeRequest{ClientId: "c"}, &eventsv1.SubscribeRequest{ClientId: "other"}), codes.InvalidArgument, "client_id cannot change within a stream"},
		{"multiple later bad filter", multipleErr(&eventsv1.SubscribeRequest{ClientId: "c"}, &eventsv1.SubscribeRequest{ClientId: "c", EventTypes: []string{"a..b"}}), codes.InvalidArgument, `invalid event type pattern "a..b": empty segment`},
		{"multiple later negative heartbeat", multipleErr(&eventsv1.SubscribeRequest{ClientId: "c"}, &eventsv1.SubscribeRequest{ClientId: "c", HeartbeatInterval: -5}), codes.InvalidArgument, "heartbeat_interval must be >= 0, got -5"},
	}
	_, err := ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{})
	cases = append(cases, struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{"broadcast without event", err, codes.InvalidArgument, "event is required"})
	_, err = ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Data: "{}"}})
	cases = append(cases, struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{"broadcast without type", err, codes.InvalidArgument, "event.type is required"})
	_, err = ts.client.GetConnectionStatus(ts.ctx, &eventsv1.SubscribeRequest{})
	cases = append(cases, struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{"status without client_id", err, codes.InvalidArgument, "client_id is required"})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { grpctest.WantStatus(t, tc.err, tc.code, tc.msg) })
	}
	if r := ts.publish("x"); r.Sequence != 1 {
		t.Fatalf("bad input changed the log: sequence %d", r.Sequence)
	}
}

func TestConnectionStatusReportsRealState(t *testing.T) {
	ts := startServer(t, Config{})
	st := ts.status("nobody")
	if st.ClientId != "nobody" || st.Connected || st.ActiveStreams != 0 || st.EventsReceived != 0 || st.ConnectedAt != nil {
		t.Fatalf("unknown client: %v", st)
	}

	opened := time.Now()
	first, cancelFirst := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "c"})
	second, cancelSecond := ts.subscribed(ts.dial(), &eventsv1.SubscribeRequest{ClientId: "c", EventTypes: []string{"b"}})
	ts.publish("a")
	ts.publish("b")
	recvLog(t, first, 2)
	recvLog(t, second, 1)
	ts.waitFor("3 events counted", func() bool { return ts.status("c").EventsReceived == 3 })
	st = ts.status("c")
	if !st.Connected || st.ActiveStreams != 2 || st.EventsDropped != 0 {
		t.Fatalf("two streams: %v", st)
	}
	if at := st.ConnectedAt.AsTime(); at.Before(opened.Add(-time.Second)) || at.After(time.Now()) {
		t.Fatalf("connected_at %v, opened at %v", at, opened)
	}

	cancelFirst()
	ts.waitStreams("c", 1)
	cancelSecond()
	ts.waitStreams("c", 0)
	st = ts.status("c")
	if st.Connected || st.ConnectedAt != nil || st.EventsReceived != 3 {
		t.Fatalf("after cancel: %v", st)
	}
	// The server released both: a new event reaches nobody.
	if r := ts.publish("a"); r.Recipients != 0 {
		t.Fatalf("recipients after cancel: %d", r.Recipients)
	}
}

func TestHeartbeats(t *testing.T) {
	ts := startServer(t, Config{})
	start := time.Now()
	stream, _ := ts.subscribe(ts.client, &eventsv1.SubscribeRequest{ClientId: "h", Channel: "c", HeartbeatInterval: 1})
	for want := uint64(1); want <= 2; want++ {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var hb eventsv1.HeartbeatEvent
		if ev.Type != "heartbeat" || ev.Id != "" || ev.Sequence != 0 || ev.Channel != "c" || ev.Payload.UnmarshalTo(&hb) != nil {
			t.Fatalf("heartbeat %v", ev)
		}
		if hb.Sequence != want || hb.Timestamp == nil {
			t.Fatalf("heartbeat payload %v, want sequence %d", &hb, want)
		}
	}
	// Two heartbeats one second apart cannot come before ~2s; generous upper bound.
	if d := time.Since(start); d < 1900*time.Millisecond || d > 10*time.Second {
		t.Fatalf("two 1s heartbeats took %v", d)
	}
	if r := ts.publish("x"); r.Sequence != 1 {
		t.Fatalf("heartbeats entered the log: sequence %d", r.Sequence)
	}
}

func TestHeartbeatIntervalDefault(t *testing.T) {
	sr, err := parseSubscribeRequest(&eventsv1.SubscribeRequest{ClientId: "c"})
	if err != nil || sr.heartbeat != 30*time.Second || sr.channel != "default" {
		t.Fatalf("got %+v %v", sr, err)
	}
}

func TestBroadcastAfterCloseIsUnavailable(t *testing.T) {
	ts := startServer(t, Config{})
	if err := ts.svc.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := ts.client.Broadcast(ts.ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "x"}})
	grpctest.WantStatus(t, err, codes.Unavailable, "event log is closed")
}

func TestSubscribeMultipleWithoutRequestEndsOK(t *testing.T) {
	ts := startServer(t, Config{})
	stream, err := ts.client.SubscribeMultiple(ts.ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("got %v, want io.EOF (status OK)", err)
	}
}

func TestParsePolicy(t *testing.T) {
	for name, want := range map[string]Policy{"drop-newest": DropNewest, "drop-oldest": DropOldest, "block": Block, "disconnect": Disconnect} {
		if p, err := ParsePolicy(name); err != nil || p != want || p.String() != name {
			t.Errorf("%s: %v %v", name, p, err)
		}
	}
	if _, err := ParsePolicy("nope"); err == nil {
		t.Error("unknown policy accepted")
	}
	if (Config{}).Policy != Disconnect {
		t.Error("the zero Policy must be the default, Disconnect")
	}
}

func TestDeadlineReleasesTheSubscriber(t *testing.T) {
	ts := startServer(t, Config{})
	ctx, cancel := context.WithTimeout(ts.ctx, 300*time.Millisecond)
	defer cancel()
	stream, err := ts.client.Subscribe(ctx, &eventsv1.SubscribeRequest{ClientId: "d"})
	if err != nil {
		t.Fatal(err)
	}
	ts.waitStreams("d", 1)
	for {
		if _, err = stream.Recv(); err != nil {
			break
		}
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", err)
	}
	ts.waitStreams("d", 0)
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{HistorySize: -1}, {QueueSize: -1}, {PublishTimeout: -time.Second}, {Policy: Policy(42)}} {
		if svc, err := New(cfg); err == nil {
			svc.Close()
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
