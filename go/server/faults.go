package server

// The server-wide self-test faults: deliberate defects for the conformance
// harness's self-test only (conformance/selftest.yaml; semantics in
// docs/contract.md, "Fault modes (self-test only)"). None is active unless
// Config.Fault names it (`--fault`); every use of them goes through this file.

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/polystream/polystream/go/events"
)

const (
	// FaultWrongStatus: every INVALID_ARGUMENT or NOT_FOUND status an RPC
	// returns has its message replaced by WrongStatusMessage (code unchanged).
	FaultWrongStatus = "wrong-status"
	// FaultStrictKeepalive: the keepalive enforcement policy becomes
	// MinTime 1 minute, PermitWithoutStream false, so clients pinging every
	// 10 s get GOAWAY too_many_pings.
	FaultStrictKeepalive = "strict-keepalive"
	// FaultSkipSequence: on every server-streaming or bidi RPC, the 5th
	// message sent with a non-zero `sequence` goes out with sequence + 1.
	FaultSkipSequence = "skip-sequence"
	// FaultLoseRequest: on every client-streaming or bidi RPC, the 5th
	// request message is discarded before the handler sees it.
	FaultLoseRequest = "lose-request"
	// FaultNoMetadata: no x-request-id / x-echo-trailer echo (metadata.go).
	FaultNoMetadata = "no-metadata"
	// FaultAbruptShutdown: SIGINT/SIGTERM (Shutdown) stops the server at
	// once: no grace, no "server is shutting down".
	FaultAbruptShutdown = "abrupt-shutdown"
	// FaultUnboundedWindow: --initial-window-size is ignored; stream and
	// connection windows are fixed at UnboundedWindowSize.
	FaultUnboundedWindow = "unbounded-window"

	WrongStatusMessage = "wrong-status fault"
	// UnboundedWindowSize is unbounded-window's HTTP/2 window (16 MiB).
	UnboundedWindowSize = 16 << 20
	// faultNth: skip-sequence and lose-request act on a stream's 5th message.
	faultNth = 5
)

// serverFaults are the faults go/server itself implements.
var serverFaults = []string{FaultWrongStatus, FaultStrictKeepalive, FaultSkipSequence, FaultLoseRequest,
	FaultNoMetadata, FaultAbruptShutdown, FaultUnboundedWindow}

// enforcementPolicy is the keepalive enforcement policy: --keepalive-min-time
// with pings allowed without streams, unless strict-keepalive is active.
func enforcementPolicy(cfg Config) keepalive.EnforcementPolicy {
	if cfg.Fault == FaultStrictKeepalive {
		return keepalive.EnforcementPolicy{MinTime: time.Minute, PermitWithoutStream: false}
	}
	return keepalive.EnforcementPolicy{MinTime: cfg.KeepaliveMinTime, PermitWithoutStream: true}
}

// serverParameters are the server's own keepalive pings. strict-keepalive
// also stops them (as grpcio's defaults do), so an idle client has to ping
// itself and meets the strict policy instead of being kept busy by the server.
func serverParameters(cfg Config) keepalive.ServerParameters {
	if cfg.Fault == FaultStrictKeepalive {
		return keepalive.ServerParameters{Time: time.Duration(math.MaxInt64), Timeout: cfg.KeepaliveTimeout}
	}
	return keepalive.ServerParameters{Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout}
}

// windowSize is the fixed HTTP/2 stream and connection window (0 = grpc-go's
// dynamic ones): --initial-window-size, or 16 MiB under unbounded-window.
func windowSize(cfg Config) int {
	if cfg.Fault == FaultUnboundedWindow {
		return UnboundedWindowSize
	}
	return cfg.InitialWindowSize
}

// echoesMetadata tells whether the metadata echo is installed (not under
// no-metadata).
func echoesMetadata(cfg Config) bool { return cfg.Fault != FaultNoMetadata }

// stopsAbruptly tells whether Shutdown skips the graceful path
// (abrupt-shutdown): grpc's Stop at once, without marking health
// NOT_SERVING or starting the shutdown interceptor, so clients see their
// library's own status for the cut streams.
func stopsAbruptly(cfg Config) bool { return cfg.Fault == FaultAbruptShutdown }

// loggedCode is the code the rpc log record shows: under ignore-cancel
// (an events fault that also reaches this record) a call the client ended
// (CANCELLED, DEADLINE_EXCEEDED) is logged as OK.
func loggedCode(fault string, code codes.Code) codes.Code {
	if fault == events.FaultIgnoreCancel && (code == codes.Canceled || code == codes.DeadlineExceeded) {
		return codes.OK
	}
	return code
}

// faultInterceptors are the interceptors of the active server fault, run
// innermost (after logging, stats, shutdown and the metadata echo).
func faultInterceptors(fault string) ([]grpc.UnaryServerInterceptor, []grpc.StreamServerInterceptor) {
	switch fault {
	case FaultWrongStatus:
		return []grpc.UnaryServerInterceptor{wrongStatusUnary}, []grpc.StreamServerInterceptor{wrongStatusStream}
	case FaultSkipSequence:
		return nil, []grpc.StreamServerInterceptor{skipSequenceStream}
	case FaultLoseRequest:
		return nil, []grpc.StreamServerInterceptor{loseRequestStream}
	}
	return nil, nil
}

// wrongStatus replaces the message of an INVALID_ARGUMENT or NOT_FOUND error.
func wrongStatus(err error) error {
	if c := status.Code(err); c == codes.InvalidArgument || c == codes.NotFound {
		return status.Error(c, WrongStatusMessage)
	}
	return err
}

func wrongStatusUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, wrongStatus(err)
}

func wrongStatusStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return wrongStatus(handler(srv, ss))
}

// skipSequenceStream wraps SendMsg of server-streaming and bidi RPCs.
func skipSequenceStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !info.IsServerStream {
		return handler(srv, ss)
	}
	return handler(srv, &sequenceSkipper{ServerStream: ss})
}

// sequenceSkipper counts the messages sent with a non-zero uint64 field
// `sequence` and sends the 5th as a copy with sequence + 1: the original
// (a log record's event, say) stays as it is.
type sequenceSkipper struct {
	grpc.ServerStream
	sent atomic.Int64 // messages with a sequence; atomic as a guard, Send is not concurrent
}

func (s *sequenceSkipper) SendMsg(m any) error {
	if pm, ok := m.(proto.Message); ok {
		msg := pm.ProtoReflect()
		fd := msg.Descriptor().Fields().ByName("sequence")
		if fd != nil && fd.Kind() == protoreflect.Uint64Kind && msg.Get(fd).Uint() != 0 && s.sent.Add(1) == faultNth {
			skipped := proto.Clone(pm)
			skipped.ProtoReflect().Set(fd, protoreflect.ValueOfUint64(msg.Get(fd).Uint()+1))
			m = skipped
		}
	}
	return s.ServerStream.SendMsg(m)
}

// loseRequestStream wraps RecvMsg of client-streaming and bidi RPCs.
func loseRequestStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !info.IsClientStream {
		return handler(srv, ss)
	}
	return handler(srv, &requestLoser{ServerStream: ss})
}

// requestLoser discards the 5th request message: it reads the next one
// into m instead, so the handler never sees it.
type requestLoser struct {
	grpc.ServerStream
	received atomic.Int64
}

func (s *requestLoser) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && s.received.Add(1) == faultNth {
		return s.ServerStream.RecvMsg(m)
	}
	return err
}
