// Package lifetime ties long-lived streams to the life of the service that
// serves them: when the service closes, every stream it opened through
// Stream ends, with UNAVAILABLE "server is shutting down" (docs/contract.md),
// instead of outliving it.
package lifetime

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrShuttingDown ends a stream that is still open when its service closes.
var ErrShuttingDown = status.Error(codes.Unavailable, "server is shutting down")

// Lifetime is one service's life; Close ends it.
type Lifetime struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// New starts a lifetime.
func New() *Lifetime {
	ctx, cancel := context.WithCancel(context.Background())
	return &Lifetime{ctx: ctx, cancel: cancel}
}

// Close ends the lifetime and the streams in it; safe to call more than once.
func (l *Lifetime) Close() { l.cancel() }

// Stream returns the stream's context, also cancelled when the lifetime
// ends; call the returned func when the handler ends.
func (l *Lifetime) Stream(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// Err turns the end of a stream's context into the status its client
// should see: ErrShuttingDown once the lifetime ended, else CANCELLED or
// DEADLINE_EXCEEDED.
func (l *Lifetime) Err(ctx context.Context) error {
	if l.ctx.Err() != nil {
		return ErrShuttingDown
	}
	return status.FromContextError(ctx.Err()).Err()
}
