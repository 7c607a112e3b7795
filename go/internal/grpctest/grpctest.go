// Package grpctest holds the helpers the Go tests share: a gRPC server on a
// real 127.0.0.1:0 listener, client connections to it, a bounded context,
// polling with a hang guard, and status and stream checks.
//
// It is for tests only: import it from _test.go files, never from the
// services or the commands.
package grpctest

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// HangGuard bounds WaitFor: a guard against a hung test, not a speed
// requirement.
const HangGuard = 20 * time.Second

// Serve starts a gRPC server with opts on 127.0.0.1:0, lets register add its
// services, and returns the server (for tests that stop it early; Stop is
// idempotent) and its address. When the test ends the server is stopped
// and Serve has returned.
func Serve(t testing.TB, register func(grpc.ServiceRegistrar), opts ...grpc.ServerOption) (*grpc.Server, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	register(srv)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return srv, lis.Addr().String()
}

// Dial opens a plaintext client connection to addr with opts added, closed
// when the test ends.
func Dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Context returns a context that ends after 30 s or with the test.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// WaitFor polls cond until it holds, failing the test after HangGuard.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	WaitWithin(t, HangGuard, what, cond)
}

// WaitWithin polls cond until it holds, failing the test after guard.
func WaitWithin(t testing.TB, guard time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// WantStatus fails the test unless err is a status with exactly code and
// msg (a nil error or io.EOF never matches).
func WantStatus(t testing.TB, err error, code codes.Code, msg string) {
	t.Helper()
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("got %v, want %v %q", err, code, msg)
	}
	st, _ := status.FromError(err)
	if st.Code() != code || st.Message() != msg {
		t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), code, msg)
	}
}

// RecvAll reads a stream to its end and returns the messages and the final
// error (nil on a clean end).
func RecvAll[T any](s interface{ Recv() (*T, error) }) ([]*T, error) {
	var out []*T
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}
