package client

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrStalled ends a stream whose server sent nothing, not even a
// heartbeat, for more than twice the heartbeat interval.
var ErrStalled = errors.New("stream silent for more than twice its heartbeat interval")

// Retryable tells whether a stream that ended with err is worth opening
// again: UNAVAILABLE (server down, restarting or shutting down),
// RESOURCE_EXHAUSTED (a slow subscriber cut off; it may resume), ABORTED,
// and transport failures (non-status errors, a stalled stream). Anything
// else is the server's verdict on the request and would fail again.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, ErrStalled) {
		return true
	}
	st, ok := status.FromError(err)
	if !ok {
		return true // a transport failure without a status
	}
	switch st.Code() {
	case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return true
	}
	return false
}
