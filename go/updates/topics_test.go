package updates

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

func TestSubscribeRequiresTopics(t *testing.T) {
	e := newEnv(t, Config{})
	for _, topics := range [][]string{nil, {""}} {
		s, err := e.client.SubscribeToUpdates(grpctest.Context(t), &updatesv1.SubscribeRequest{Topics: topics, ClientId: "c"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		grpctest.WantStatus(t, err, codes.InvalidArgument, "at least one topic is required")
	}
	_, err := e.client.PublishUpdate(grpctest.Context(t), &updatesv1.PublishUpdateRequest{Message: "m"})
	grpctest.WantStatus(t, err, codes.InvalidArgument, "topic is required")
}

// subscribe opens a subscription and returns once the server has registered it.
func subscribe(t *testing.T, ctx context.Context, c updatesv1.StreamServiceClient, topics ...string) updatesv1.StreamService_SubscribeToUpdatesClient {
	t.Helper()
	s, err := c.SubscribeToUpdates(ctx, &updatesv1.SubscribeRequest{Topics: topics, ClientId: "c-" + strings.Join(topics, "+")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Header(); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTopicRoutingAndSequence(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	ab := subscribe(t, ctx, e.client, "a", "b", "a")
	b := subscribe(t, ctx, e.client, "b")

	for _, c := range []struct {
		topic string
		want  int32
	}{{"a", 1}, {"b", 2}, {"c", 0}, {"a", 1}} {
		r, err := e.client.PublishUpdate(ctx, &updatesv1.PublishUpdateRequest{Topic: c.topic, Message: "m-" + c.topic, Metadata: map[string]string{"k": c.topic}})
		if err != nil {
			t.Fatal(err)
		}
		if r.GetRecipients() != c.want {
			t.Fatalf("publish %s: recipients %d, want %d", c.topic, r.GetRecipients(), c.want)
		}
	}
	for i, want := range []string{"a", "b", "a"} {
		u, err := ab.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if u.GetTopic() != want || u.GetMessage() != "m-"+want || u.GetMetadata()["k"] != want || u.GetSequence() != uint64(i+1) || u.GetTimestamp() == nil {
			t.Fatalf("update %d: %v", i, u)
		}
	}
	u, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if u.GetTopic() != "b" || u.GetSequence() != 1 {
		t.Fatalf("b got %v", u)
	}
}

// A subscriber that stops reading loses updates (drop-only, counted) while the
// publisher and a reading subscriber carry on; its own sequence stays gap-free.
func TestSlowSubscriberDoesNotHoldUpOthers(t *testing.T) {
	e := newEnv(t, Config{QueueSize: 8})
	ctx := grpctest.Context(t)
	// Static HTTP/2 windows, so the stalled stream's buffers are bounded.
	slowClient := e.dial(t, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	slow := subscribe(t, ctx, slowClient, "t")
	fastCtx, cancelFast := context.WithCancel(ctx)
	defer cancelFast()
	fast := subscribe(t, fastCtx, e.client, "t")

	const n = 200
	payload := strings.Repeat("x", 16<<10)
	sawDrop := false
	for i := 1; i <= n; i++ {
		r, err := e.client.PublishUpdate(ctx, &updatesv1.PublishUpdateRequest{Topic: "t", Message: payload})
		if err != nil {
			t.Fatal(err)
		}
		if r.GetRecipients() < 1 {
			t.Fatalf("publish %d: the fast subscriber was not a recipient", i)
		}
		if r.GetRecipients() == 1 {
			sawDrop = true
		}
		u, err := fast.Recv() // lock-step: the fast one is never behind
		if err != nil {
			t.Fatal(err)
		}
		if u.GetSequence() != uint64(i) {
			t.Fatalf("fast: sequence %d, want %d", u.GetSequence(), i)
		}
	}
	if !sawDrop {
		t.Fatal("the stalled subscriber never missed an update: its queue is not bounded")
	}
	// Stop the fast one, then read what the slow one kept: numbered 1..k
	// without gaps, fewer than were published.
	cancelFast()
	grpctest.WaitFor(t, "fast subscriber gone", func() bool { return e.svc.topics.count("t") == 1 })
	got := make(chan []uint64, 1)
	go func() {
		var seqs []uint64
		for {
			u, err := slow.Recv()
			if err != nil || u.GetMessage() == "end" {
				got <- seqs
				return
			}
			seqs = append(seqs, u.GetSequence())
		}
	}()
	// "end" is queued once reading has made room; then it is the last one.
	// Every "end" the full queue turned away is a drop too.
	ends := 0
	for {
		r, err := e.client.PublishUpdate(ctx, &updatesv1.PublishUpdateRequest{Topic: "t", Message: "end"})
		if err != nil {
			t.Fatal(err)
		}
		ends++
		if r.GetRecipients() == 1 {
			break
		}
	}
	seqs := <-got
	if len(seqs) == 0 || len(seqs) >= n {
		t.Fatalf("slow subscriber kept %d of %d updates", len(seqs), n)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("slow subscriber: sequence %d at position %d", s, i)
		}
	}
	// Its drops were counted: one for each update it did not get.
	if d, want := e.svc.topics.dropped("t"), uint64(n-len(seqs)+ends-1); d != want {
		t.Fatalf("dropped counter %d, want %d (%d of %d updates kept, %d turned-away ends)", d, want, len(seqs), n, ends-1)
	}
}

// Close ends streams that are still open with UNAVAILABLE.
func TestCloseEndsStreams(t *testing.T) {
	e := newEnv(t, Config{})
	s := subscribe(t, grpctest.Context(t), e.client, "t")
	f, err := e.client.TailLogs(grpctest.Context(t), &updatesv1.LogRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Header(); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	grpctest.WantStatus(t, err, codes.Unavailable, "server is shutting down")
	for {
		if _, err = f.Recv(); err != nil {
			break // the follower may first see the records Close itself logged
		}
	}
	grpctest.WantStatus(t, err, codes.Unavailable, "server is shutting down")
}
