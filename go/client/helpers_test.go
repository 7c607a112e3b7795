package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: 0.3, MaxRetries: 5}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		attempt := i + 1
		ceiling := b.Ceiling(attempt)
		if ceiling != w*time.Millisecond {
			t.Errorf("Ceiling(%d) = %v, want %v", attempt, ceiling, w*time.Millisecond)
		}
		low := time.Duration(float64(ceiling) * (1 - b.Jitter))
		high := time.Duration(float64(ceiling) * (1 + b.Jitter))
		for range 200 {
			if d := b.Delay(attempt); d < low || d > high {
				t.Fatalf("Delay(%d) = %v, outside [%v, %v]", attempt, d, low, high)
			}
		}
	}
	if b.Ceiling(10_000) != time.Second {
		t.Errorf("a huge attempt must stay at Max, got %v", b.Ceiling(10_000))
	}
	if !b.Allows(5) || b.Allows(6) {
		t.Error("MaxRetries 5 must allow retry 5 and refuse 6")
	}
	b.MaxRetries = -1
	if !b.Allows(1 << 30) {
		t.Error("MaxRetries -1 must retry forever")
	}
	b.MaxRetries = 0
	if b.Allows(1) {
		t.Error("MaxRetries 0 must not retry")
	}
}

func TestBackoffJitterSpreadsDelays(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[DefaultBackoff.Delay(3)] = true
	}
	if len(seen) < 2 {
		t.Fatal("50 delays were all equal: no jitter")
	}
}

func TestDedupForgetsOldestBeyondWindow(t *testing.T) {
	d := NewDedup(3)
	for _, id := range []string{"a", "b", "c"} {
		if d.Seen(id) {
			t.Fatalf("%s reported as seen the first time", id)
		}
	}
	if !d.Seen("a") || !d.Seen("c") {
		t.Fatal("ids within the window must be reported as seen")
	}
	d.Seen("d") // evicts a, the oldest
	if d.Len() != 3 {
		t.Fatalf("Len = %d, want the window 3", d.Len())
	}
	if d.Seen("a") {
		t.Fatal("a should have been forgotten")
	}
	for i := range 10_000 {
		d.Seen(fmt.Sprint(i))
	}
	if d.Len() != 3 {
		t.Fatalf("memory grew: Len = %d", d.Len())
	}
}

func TestLimiterBurstThenRate(t *testing.T) {
	if _, err := NewLimiter(0, 1); err == nil || err.Error() != "rate must be > 0, got 0" {
		t.Fatalf("rate 0: %v", err)
	}
	if _, err := NewLimiter(1, 0); err == nil || err.Error() != "burst must be >= 1, got 0" {
		t.Fatalf("burst 0: %v", err)
	}
	l, _ := NewLimiter(20, 3) // one token every 50 ms
	for i := range 3 {
		if !l.Allow() {
			t.Fatalf("burst call %d refused", i)
		}
	}
	if l.Allow() {
		t.Fatal("a fourth call right away must be refused")
	}
	began := time.Now()
	for range 2 {
		if err := l.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(began); took < 80*time.Millisecond {
		t.Fatalf("two tokens at 20/s came after %v, want >= ~100ms", took)
	}
}

func TestLimiterWaitGivesTokenBackOnCancel(t *testing.T) {
	l, _ := NewLimiter(1, 1)
	l.Allow()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the deadline", err)
	}
	l.mu.Lock()
	tokens := l.tokens
	l.mu.Unlock()
	if tokens < -0.5 {
		t.Fatalf("cancelled Wait kept its token: %v left", tokens)
	}
}

func TestBatcherFlushesBySizeAndByPeriod(t *testing.T) {
	var mu sync.Mutex
	var batches [][]int
	flushed := make(chan struct{}, 10)
	b, err := NewBatcher(3, 50*time.Millisecond, func(batch []int) {
		mu.Lock()
		batches = append(batches, slices.Clone(batch))
		mu.Unlock()
		flushed <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 1; i <= 4; i++ {
		b.Add(ctx, i)
	}
	<-flushed // by size: 1,2,3
	<-flushed // by period: 4
	b.Add(ctx, 5)
	b.Close() // flushes 5
	if err := b.Add(ctx, 6); !errors.Is(err, ErrBatcherClosed) {
		t.Fatalf("Add after Close = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(batches) != "[[1 2 3] [4] [5]]" {
		t.Fatalf("batches %v", batches)
	}
}

func TestNewBatcherRejectsBadSettings(t *testing.T) {
	if _, err := NewBatcher(0, time.Second, func([]int) {}); err == nil || err.Error() != "batch size must be >= 1, got 0" {
		t.Errorf("size 0: %v", err)
	}
	if _, err := NewBatcher(1, 0, func([]int) {}); err == nil || err.Error() != "flush period must be > 0, got 0s" {
		t.Errorf("period 0: %v", err)
	}
}
