package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrBatcherClosed is returned by Add after Close.
var ErrBatcherClosed = errors.New("batcher is closed")

// Batcher groups items and hands each group to flush when it reaches size
// items or when period has passed since its first item, whichever comes
// first. Flushes run one at a time, in order, on the batcher's goroutine;
// Add waits while a flush runs, so a slow flush slows the producer down
// instead of growing memory.
type Batcher[T any] struct {
	size   int
	period time.Duration
	flush  func([]T)

	in        chan T
	closed    chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// NewBatcher starts a batcher; Close it to flush the rest and stop.
func NewBatcher[T any](size int, period time.Duration, flush func([]T)) (*Batcher[T], error) {
	if size < 1 {
		return nil, fmt.Errorf("batch size must be >= 1, got %d", size)
	}
	if period <= 0 {
		return nil, fmt.Errorf("flush period must be > 0, got %s", period)
	}
	b := &Batcher[T]{size: size, period: period, flush: flush,
		in: make(chan T), closed: make(chan struct{}), done: make(chan struct{})}
	go b.loop()
	return b, nil
}

// Add queues item for the next batch.
func (b *Batcher[T]) Add(ctx context.Context, item T) error {
	select {
	case b.in <- item:
		return nil
	case <-b.closed:
		return ErrBatcherClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close flushes what is pending and waits for the last flush to finish.
func (b *Batcher[T]) Close() {
	b.closeOnce.Do(func() { close(b.closed) })
	<-b.done
}

func (b *Batcher[T]) loop() {
	defer close(b.done)
	var batch []T
	timer := time.NewTimer(b.period)
	timer.Stop()
	var due <-chan time.Time // nil while the batch is empty
	send := func() {
		timer.Stop()
		due = nil
		if len(batch) > 0 {
			b.flush(batch)
			batch = nil
		}
	}
	for {
		select {
		case item := <-b.in:
			batch = append(batch, item)
			if len(batch) == 1 {
				timer.Reset(b.period)
				due = timer.C
			}
			if len(batch) >= b.size {
				send()
			}
		case <-due:
			send()
		case <-b.closed:
			send()
			return
		}
	}
}
