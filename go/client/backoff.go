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
	// Jitter is the fraction (0..1) by which a delay is randomly shortened,
	// so clients cut off together do not return together.
	Jitter float64
	// MaxRetries is how many retries in a row are allowed; -1 = forever.
	MaxRetries int
}

// DefaultBackoff retries forever: 250 ms, doubling, up to 10 s, 20 % jitter.
var DefaultBackoff = Backoff{Base: 250 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.2, MaxRetries: -1}

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

// Delay is Ceiling(attempt) shortened by a random part of up to Jitter, so
// it lies in [(1-Jitter)*Ceiling, Ceiling].
func (b Backoff) Delay(attempt int) time.Duration {
	ceiling := b.Ceiling(attempt)
	jitter := math.Min(math.Max(b.Jitter, 0), 1)
	return ceiling - time.Duration(jitter*rand.Float64()*float64(ceiling))
}

// Allows tells whether retry number attempt (1-based) may happen.
func (b Backoff) Allows(attempt int) bool {
	return b.MaxRetries < 0 || attempt <= b.MaxRetries
}
