package server

// The server-wide self-test faults: deliberate defects for the conformance
// harness's self-test only (conformance/selftest.yaml; semantics in
// docs/contract.md, "Fault modes (self-test only)"). None is active unless
// Config.Fault names it (`--fault`); every use of them goes through this file.

import (
	"context"
	"math"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

const (
	// FaultWrongStatus: every INVALID_ARGUMENT or NOT_FOUND status an RPC
	// returns has its message replaced by WrongStatusMessage (code unchanged).
	FaultWrongStatus = "wrong-status"
	// FaultStrictKeepalive: the keepalive enforcement policy becomes
	// MinTime 1 minute, PermitWithoutStream false, so clients pinging every
	// 10 s get GOAWAY too_many_pings.
	FaultStrictKeepalive = "strict-keepalive"

	WrongStatusMessage = "wrong-status fault"
)

// serverFaults are the faults go/server itself implements.
var serverFaults = []string{FaultWrongStatus, FaultStrictKeepalive}

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
