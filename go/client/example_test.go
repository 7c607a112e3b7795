package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/polystream/polystream/go/client"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// Iterating: each log event once, in log order, across reconnections.
func ExampleSubscriber_Events() {
	conn, err := client.Dial("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	sub, err := client.NewSubscriber(conn, client.SubscriberConfig{
		ClientID:          "billing-worker",
		EventTypes:        []string{"user.*", "**.error"},
		HeartbeatInterval: 5, // the watchdog reconnects after 10 s of silence
	})
	if err != nil {
		log.Fatal(err)
	}
	for ev, err := range sub.Events(context.Background()) {
		if err != nil {
			log.Fatal(err) // a final answer (e.g. INVALID_ARGUMENT), or retries used up
		}
		fmt.Println(ev.Sequence, ev.Type, ev.Data)
		if ev.Type == "user.deleted" {
			break // ends the subscription
		}
	}
	fmt.Println("resume later from", sub.LastEventID())
}

// Callbacks: Run blocks until ctx ends or the subscription fails for good.
func ExampleSubscriber_Run() {
	conn, err := client.Dial("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	sub, err := client.NewSubscriber(conn, client.SubscriberConfig{
		ClientID: "audit",
		Backoff:  client.Backoff{Base: 200 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.2, MaxRetries: -1},
		OnEvent:  func(ev *eventsv1.Event) { fmt.Println("event", ev.Id, ev.Type) },
		OnConnect: func(attempt int) {
			fmt.Println("connected; retries before this:", attempt)
		},
		OnDisconnect: func(err error, attempt int, delay time.Duration) {
			if delay < 0 {
				fmt.Println("giving up:", err)
				return
			}
			fmt.Printf("disconnected (%v); retry %d in %s\n", err, attempt, delay)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sub.Run(ctx); err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

func ExampleBatcher() {
	batcher, err := client.NewBatcher(50, 500*time.Millisecond, func(rows []int) {
		fmt.Println("writing", len(rows))
	})
	if err != nil {
		log.Fatal(err)
	}
	for n := range 120 {
		batcher.Add(context.Background(), n)
	}
	batcher.Close() // flushes the last 20
	// Output:
	// writing 50
	// writing 50
	// writing 20
}

func ExampleDedup() {
	dedup := client.NewDedup(10_000) // remembers the 10,000 most recent ids
	fmt.Println(dedup.Seen("evt-1"), dedup.Seen("evt-1"))
	// Output: false true
}

func ExampleLimiter() {
	limiter, err := client.NewLimiter(100, 20) // 100 calls/s on average, bursts of 20
	if err != nil {
		log.Fatal(err)
	}
	for range 25 {
		if err := limiter.Wait(context.Background()); err != nil {
			log.Fatal(err)
		}
		// publish ...
	}
	// The first 20 passed at once, the last 5 waited about 10 ms each.
	// limiter.Allow() is the variant that never waits.
	fmt.Println("sent 25")
	// Output: sent 25
}
