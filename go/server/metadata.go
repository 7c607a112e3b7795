package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// The metadata echo of docs/contract.md ("Metadata"): every RPC, health and
// reflection included, echoes request header x-request-id as a response
// header and x-echo-trailer as a trailer, first value only, whatever status
// it ends with. Both are set before the handler runs: grpc-go sends set
// headers with the first message or with the status, and set trailers with
// the status, so errors carry them too.
const (
	RequestIDHeader   = "x-request-id"
	EchoTrailerHeader = "x-echo-trailer"
)

// echoed returns the header and trailer to set for a call's incoming
// metadata (empty when the client sent neither).
func echoed(ctx context.Context) (header, trailer metadata.MD) {
	in, _ := metadata.FromIncomingContext(ctx)
	header, trailer = metadata.MD{}, metadata.MD{}
	if v := in.Get(RequestIDHeader); len(v) > 0 {
		header.Set(RequestIDHeader, v[0])
	}
	if v := in.Get(EchoTrailerHeader); len(v) > 0 {
		trailer.Set(EchoTrailerHeader, v[0])
	}
	return header, trailer
}

func echoMetadataUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	header, trailer := echoed(ctx)
	if len(header) > 0 {
		_ = grpc.SetHeader(ctx, header) // fails only once headers are sent: not yet
	}
	if len(trailer) > 0 {
		_ = grpc.SetTrailer(ctx, trailer)
	}
	return handler(ctx, req)
}

func echoMetadataStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	header, trailer := echoed(ss.Context())
	if len(header) > 0 {
		_ = ss.SetHeader(header) // merged with what the handler sends in SendHeader
	}
	if len(trailer) > 0 {
		ss.SetTrailer(trailer)
	}
	return handler(srv, ss)
}
