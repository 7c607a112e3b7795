package server

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/polystream/polystream/go/chat"
	codenames "github.com/polystream/polystream/go/internal/codes"
)

// ShuttingDownMessage is the status message of streams ended by shutdown.
const ShuttingDownMessage = "server is shutting down"

// shutdownInterceptor gives every stream handler a context that is also
// cancelled when graceful shutdown begins: that is how long-lived streams
// end, so GracefulStop does not wait on them. The handler's result is then
// turned into UNAVAILABLE so clients know to reconnect.
func shutdownInterceptor(shuttingDown context.Context) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		stop := context.AfterFunc(shuttingDown, cancel)
		defer stop()
		err := handler(srv, &streamWithContext{ServerStream: ss, ctx: ctx})
		if shuttingDown.Err() != nil && ss.Context().Err() == nil && endedByCancel(err) {
			return status.Error(codes.Unavailable, ShuttingDownMessage)
		}
		return err
	}
}

// endedByCancel tells whether a handler's result looks like a reaction to
// its context ending (rather than its own verdict, such as INVALID_ARGUMENT).
func endedByCancel(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable:
		return true
	}
	return false
}

type streamWithContext struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *streamWithContext) Context() context.Context { return s.ctx }

// rpcStats counts what chat's StreamMetrics reports about the server.
type rpcStats struct {
	requests      atomic.Uint64
	activeStreams atomic.Int64
}

func (s *rpcStats) snapshot() chat.Stats {
	return chat.Stats{Requests: s.requests.Load(), ActiveStreams: s.activeStreams.Load()}
}

func (s *rpcStats) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.requests.Add(1)
	return handler(ctx, req)
}

func (s *rpcStats) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	s.requests.Add(1)
	s.activeStreams.Add(1)
	defer s.activeStreams.Add(-1)
	return handler(srv, ss)
}

// rpcLogger logs one info record "rpc" (method, code) as each RPC ends;
// TailLogs serves these records.
type rpcLogger struct {
	log   *slog.Logger
	fault string // ignore-cancel logs client-ended calls as OK (faults.go)
}

func (l rpcLogger) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	l.log.Info("rpc", "method", info.FullMethod, "code", codenames.Name(loggedCode(l.fault, status.Code(err))))
	return resp, err
}

func (l rpcLogger) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	code := status.Code(err)
	// A client that cancels and closes its connection at once can make the
	// handler's last Send fail with UNAVAILABLE ("transport is closing") before
	// it sees its context end; the call was still ended by the client.
	if ctxErr := ss.Context().Err(); ctxErr != nil && endedByCancel(err) {
		code = status.FromContextError(ctxErr).Code()
	}
	l.log.Info("rpc", "method", info.FullMethod, "code", codenames.Name(loggedCode(l.fault, code)))
	return err
}
