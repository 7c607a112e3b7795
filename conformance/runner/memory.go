package runner

import (
	"context"
	"sync"
	"time"

	"github.com/polystream/polystream/conformance/config"
)

// memorySampleEvery is how often a case with a memory check samples the
// server's memory: the check is on the peak while the client is stalled,
// not on what is left once the stream ended and the queue was freed.
const memorySampleEvery = 250 * time.Millisecond

// peakMemory samples a server container's memory until stopped.
type peakMemory struct {
	mu     sync.Mutex
	max    uint64
	cancel context.CancelFunc
	done   chan struct{}
}

// samplesMemory reports whether the case checks the server's memory.
func samplesMemory(c *config.Case) bool {
	for _, e := range c.Expect {
		if e.Kind == "memory" {
			return true
		}
	}
	return false
}

func samplePeak(ctx context.Context, sample func(context.Context) (uint64, error)) *peakMemory {
	ctx, cancel := context.WithCancel(ctx)
	p := &peakMemory{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(memorySampleEvery)
		defer t.Stop()
		for {
			if b, err := sample(ctx); err == nil {
				p.mu.Lock()
				p.max = max(p.max, b)
				p.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return p
}

// Peak stops sampling and returns the largest sample, with one last one.
func (p *peakMemory) Peak(ctx context.Context, sample func(context.Context) (uint64, error)) (uint64, error) {
	p.cancel()
	<-p.done
	b, err := sample(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil && p.max == 0 {
		return 0, err
	}
	return max(p.max, b), nil
}
