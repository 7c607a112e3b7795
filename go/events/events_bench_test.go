package events

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// discardStream is a server stream without a transport: it counts what it
// is sent, so the fan-out and memory benchmarks measure the pattern (hub,
// queues, delivery goroutines), not gRPC's framing.
type discardStream struct {
	ctx  context.Context
	sent *atomic.Int64
}

func (d discardStream) Send(*eventsv1.Event) error { d.sent.Add(1); return nil }
func (d discardStream) Context() context.Context   { return d.ctx }
func (discardStream) SendHeader(metadata.MD) error { return nil }

// startSubscribers runs n subscriptions on discard streams and waits until
// all are registered; stop ends them and waits for their handlers.
func startSubscribers(b *testing.B, svc *Service, n int, sent *atomic.Int64) (stop func()) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req := &eventsv1.SubscribeRequest{ClientId: fmt.Sprint("bench-", i)}
			_ = svc.serve(discardStream{ctx: ctx, sent: sent}, req, nil)
		})
	}
	for {
		svc.hub.mu.Lock()
		registered := len(svc.hub.subs)
		svc.hub.mu.Unlock()
		if registered == n {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return func() { cancel(); wg.Wait() }
}

// BenchmarkFanOut publishes events to n subscribers and waits until every
// delivery goroutine has sent every event. Block keeps it lossless, so the
// figure is end-to-end throughput: publish → log → queues → streams.
func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{1, 100, 10000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			svc, err := New(Config{Policy: Block, PublishTimeout: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			defer svc.Close()
			var sent atomic.Int64
			stop := startSubscribers(b, svc, n, &sent)
			defer stop()
			ev := &eventsv1.Event{Type: "bench.tick", Data: `{"n":1}`}

			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := svc.hub.publish(newRecord(ev, nil)); err != nil {
					b.Fatal(err)
				}
			}
			for sent.Load() < int64(b.N*n) {
				runtime.Gosched()
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}

// BenchmarkDeliveryLatency measures one Broadcast until the subscriber has
// received the event, over a real gRPC connection on 127.0.0.1.
func BenchmarkDeliveryLatency(b *testing.B) {
	ts := startServer(b, Config{})
	stream, err := ts.client.Subscribe(ts.ctx, &eventsv1.SubscribeRequest{ClientId: "latency"})
	if err != nil {
		b.Fatal(err)
	}
	ev := &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "bench.tick", Data: `{"n":1}`}}
	// Wait until the subscription is registered.
	for {
		st, err := ts.client.GetConnectionStatus(ts.ctx, &eventsv1.SubscribeRequest{ClientId: "latency"})
		if err != nil {
			b.Fatal(err)
		}
		if st.ActiveStreams == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := ts.client.Broadcast(ts.ctx, ev)
		if err != nil {
			b.Fatal(err)
		}
		for {
			got, err := stream.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if got.Sequence == res.Sequence {
				break
			}
		}
	}
}

// BenchmarkIdleSubscriberMemory reports the heap and stack an idle
// subscription costs on the server side of the pattern (subscriber, queue,
// handler and delivery goroutines; gRPC's own per-stream state excluded).
func BenchmarkIdleSubscriberMemory(b *testing.B) {
	const n = 1000
	for i := 0; i < b.N; i++ {
		svc, err := New(Config{})
		if err != nil {
			b.Fatal(err)
		}
		var sent atomic.Int64
		before := memInUse()
		stop := startSubscribers(b, svc, n, &sent)
		after := memInUse()
		stop()
		svc.Close()
		b.ReportMetric(float64(after-before)/n, "bytes/subscriber")
	}
}

func memInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
