package lifetime

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestCloseEndsStreamsWithUnavailable(t *testing.T) {
	l := New()
	ctx, done := l.Stream(context.Background())
	defer done()
	l.Close()
	<-ctx.Done()
	if s := status.Convert(l.Err(ctx)); s.Code() != codes.Unavailable || s.Message() != "server is shutting down" {
		t.Fatalf("got %v", s)
	}
	l.Close() // twice is fine
}

func TestClientEndKeepsItsCode(t *testing.T) {
	l := New()
	defer l.Close()
	parent, cancel := context.WithCancel(context.Background())
	ctx, done := l.Stream(parent)
	defer done()
	cancel()
	<-ctx.Done()
	if c := status.Code(l.Err(ctx)); c != codes.Canceled {
		t.Fatalf("got %v, want CANCELLED", c)
	}
}

func TestDoneReleasesTheStream(t *testing.T) {
	l := New()
	ctx, done := l.Stream(context.Background())
	done()
	if ctx.Err() == nil {
		t.Fatal("the stream's context outlived its handler")
	}
	l.Close()
}
