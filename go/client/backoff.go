package client

import (
	"math"
	"math/rand/v2"
	"time"
)

// Backoff is exponential backoff with jitter between reconnect attempts.
type Backoff struct {
	Base       time.Duration // delay before the first retry
	Max        time.Duration // no delay is longer
	Multiplier float64       // growth per attempt, >= 1
	// Jitter is the fraction (0..1) by which a delay is randomly scaled up
	// or down, so clients cut off together do not return together.
	Jitter float64
	// MaxRetries is how many retries in a row are allowed; -1 = forever.
	MaxRetries int
}

// DefaultBackoff retries forever: 500 ms, doubling, up to 30 s, 20 %
// jitter (the Python client's defaults).
var DefaultBackoff = Backoff{Base: 500 * time.Millisecond, Max: 30 * time.Second, Multiplier: 2, Jitter: 0.2, MaxRetries: -1}

// Ceiling is the delay before retry number attempt (1-based) without
// jitter: Base * Multiplier^(attempt-1), at most Max.
func (b Backoff) Ceiling(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	mult := math.Max(b.Multiplier, 1)
	d := float64(b.Base) * math.Pow(mult, float64(attempt-1))
	if b.Max > 0 && d > float64(b.Max) {
		return b.Max
	}
	if d > math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(d)
}

// Delay is Ceiling(attempt) scaled by a random factor in
// [1-Jitter, 1+Jitter], as in the Python client.
func (b Backoff) Delay(attempt int) time.Duration {
	jitter := math.Min(math.Max(b.Jitter, 0), 1)
	factor := 1 - jitter + 2*jitter*rand.Float64()
	return time.Duration(factor * float64(b.Ceiling(attempt)))
}

// Allows tells whether retry number attempt (1-based) may happen.
func (b Backoff) Allows(attempt int) bool {
	return b.MaxRetries < 0 || attempt <= b.MaxRetries
}
