package main

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDescribeRPCErrors(t *testing.T) {
	plain := status.Error(codes.InvalidArgument, "client_id is required")
	wrapped := fmt.Errorf("giving up after 3 retries: %w", status.Error(codes.Unavailable, "connection refused"))
	for err, want := range map[error]string{
		plain:                   "INVALID_ARGUMENT: client_id is required",
		wrapped:                 "UNAVAILABLE: giving up after 3 retries: connection refused",
		errors.New("job ended"): "job ended",
		status.Error(codes.DeadlineExceeded, "context deadline exceeded"):                               "DEADLINE_EXCEEDED: Deadline Exceeded",
		status.Error(codes.DeadlineExceeded, "stream terminated by RST_STREAM with error code: CANCEL"): "DEADLINE_EXCEEDED: Deadline Exceeded",
	} {
		if got := describe(err); got != want {
			t.Errorf("describe(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestExitCodes(t *testing.T) {
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want int
	}{
		{ctx, nil, 0},
		{ctx, errBrokenPipe, 0},
		{ctx, usagef("bad flag"), 2},
		{ctx, status.Error(codes.NotFound, "x"), 1},
		{cancelled, status.Error(codes.Canceled, "x"), 130},
	} {
		if got := exitCode(tc.ctx, tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if got := run(ctx, []string{"nope"}); got != 2 {
		t.Errorf("unknown command exits %d, want 2", got)
	}
	if got := run(ctx, []string{"publish", "--nope"}); got != 2 {
		t.Errorf("unknown flag exits %d, want 2", got)
	}
	if got := run(ctx, []string{"serve", "--backpressure", "x"}); got != 2 {
		t.Errorf("bad serve flag exits %d, want 2", got)
	}
	// An unknown --fault is refused at start, before anything listens.
	if got := run(ctx, []string{"serve", "--port", "0", "--fault", "x"}); got != 2 {
		t.Errorf("unknown --fault exits %d, want 2", got)
	}
	if got := run(ctx, []string{"serve", "--port", "0", "--initial-window-size", "1000"}); got != 2 {
		t.Errorf("too small --initial-window-size exits %d, want 2", got)
	}
	if got := run(ctx, []string{"serve", "--port", "0", "--upload-read-delay", "2m"}); got != 2 {
		t.Errorf("too long --upload-read-delay exits %d, want 2", got)
	}
}

func TestListAndMapFlags(t *testing.T) {
	var l listFlag
	l.Set(" a.*, b ,,")
	if fmt.Sprint([]string(l)) != "[a.* b]" {
		t.Errorf("list %q", l)
	}
	m := mapFlag{}
	if err := m.Set("k=v,k2=v=2"); err != nil || m["k"] != "v" || m["k2"] != "v=2" {
		t.Errorf("map %v, %v", m, err)
	}
	if err := m.Set("novalue"); err == nil {
		t.Error("k without =v must be refused")
	}
}
