package server

import (
	"context"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f fakeStream) Context() context.Context { return f.ctx }

func TestShutdownInterceptorTurnsCancelIntoUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		result   func(ctx context.Context) error
		shutdown bool
		want     codes.Code
	}{
		{"ends with nil on shutdown", func(ctx context.Context) error { <-ctx.Done(); return nil }, true, codes.Unavailable},
		{"ends with ctx error on shutdown", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, true, codes.Unavailable},
		{"ends with CANCELLED on shutdown", func(ctx context.Context) error {
			<-ctx.Done()
			return status.FromContextError(ctx.Err()).Err()
		}, true, codes.Unavailable},
		{"own verdict kept on shutdown", func(ctx context.Context) error {
			<-ctx.Done()
			return status.Error(codes.InvalidArgument, "bad")
		}, true, codes.InvalidArgument},
		{"no shutdown: result kept", func(context.Context) error { return nil }, false, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shuttingDown, begin := context.WithCancel(context.Background())
			defer begin()
			if tc.shutdown {
				begin()
			}
			err := shutdownInterceptor(shuttingDown)(nil, fakeStream{ctx: context.Background()}, &grpc.StreamServerInfo{},
				func(_ any, ss grpc.ServerStream) error { return tc.result(ss.Context()) })
			if status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want == codes.Unavailable && status.Convert(err).Message() != ShuttingDownMessage {
				t.Fatalf("message %q", status.Convert(err).Message())
			}
		})
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
