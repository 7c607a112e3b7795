package server

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

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

func TestRPCLoggerNamesAClientEndedStreamByItsContext(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want string
	}{
		{"send failed as the client closed", cancelled, status.Error(codes.Unavailable, "transport is closing"), "CANCELLED"},
		{"deadline", expired, status.Error(codes.Unavailable, "transport is closing"), "DEADLINE_EXCEEDED"},
		{"own verdict kept", cancelled, status.Error(codes.InvalidArgument, "bad"), "INVALID_ARGUMENT"},
		{"live client", context.Background(), status.Error(codes.Unavailable, "server is shutting down"), "UNAVAILABLE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := rpcLogger{log: slog.New(slog.NewTextHandler(&buf, nil))}
			_ = l.stream(nil, fakeStream{ctx: tc.ctx}, &grpc.StreamServerInfo{FullMethod: "/m"}, func(any, grpc.ServerStream) error { return tc.err })
			if !strings.Contains(buf.String(), "code="+tc.want) {
				t.Fatalf("logged %q, want code=%s", buf.String(), tc.want)
			}
		})
	}
}
