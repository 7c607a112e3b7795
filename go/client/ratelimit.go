package client

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Limiter is a token bucket: up to burst calls at once, then rate per
// second on average. Use it to keep a publisher under a server's limits.
type Limiter struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64 // may go negative: tokens promised to waiting callers
	last   time.Time
}

// NewLimiter allows perSecond calls per second with bursts of up to burst.
func NewLimiter(perSecond float64, burst int) (*Limiter, error) {
	if perSecond <= 0 {
		return nil, fmt.Errorf("rate must be > 0, got %g", perSecond)
	}
	if burst < 1 {
		return nil, fmt.Errorf("burst must be >= 1, got %d", burst)
	}
	return &Limiter{rate: perSecond, burst: float64(burst), tokens: float64(burst), last: time.Now()}, nil
}

// refill adds the tokens earned since the last call; mu must be held.
func (l *Limiter) refill(now time.Time) {
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
}

// Allow takes a token if one is there now.
func (l *Limiter) Allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(time.Now())
	if l.tokens >= 1 {
		l.tokens--
		return true
	}
	return false
}

// Wait takes a token, waiting for it if needed; if ctx ends first the token
// is given back and ctx's error returned.
func (l *Limiter) Wait(ctx context.Context) error {
	l.mu.Lock()
	l.refill(time.Now())
	l.tokens--
	wait := time.Duration(-l.tokens / l.rate * float64(time.Second))
	l.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	if err := sleep(ctx, wait); err != nil {
		l.mu.Lock()
		l.tokens++
		l.mu.Unlock()
		return err
	}
	return nil
}
