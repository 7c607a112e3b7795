// Package client is the Go client of polystream: a resilient event
// subscriber (backoff, resume, de-duplication, heartbeat watchdog) and
// helpers for rate limiting, batching and de-duplication. It imports no
// server package: it speaks to any polystream server over gRPC.
package client

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Keepalive is what every polystream client sends (docs/contract.md): pings
// every 10 s, also without streams, above both servers' minimum ping time
// of 5 s, so no server answers with GOAWAY too_many_pings.
var Keepalive = keepalive.ClientParameters{
	Time:                10 * time.Second,
	Timeout:             5 * time.Second,
	PermitWithoutStream: true,
}

// Dial makes a plaintext connection to addr (host:port) with the contract's
// keepalive. The connection is lazy: it connects on the first call.
func Dial(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(Keepalive),
	}
	return grpc.NewClient(addr, append(base, opts...)...)
}
