package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// unary dials, makes one call on the stub newStub builds, under the unary
// deadline, and prints the response as one JSON line.
func unary[S any, R proto.Message](ctx context.Context, c *connection, newStub func(grpc.ClientConnInterface) S, call func(context.Context, S) (R, error)) error {
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := c.unaryContext(ctx)
	defer cancel()
	resp, err := call(ctx, newStub(conn))
	if err != nil {
		return err
	}
	return printMessage(resp)
}

// stream dials and opens a stream under the stream deadline; the caller
// reads it and then calls done.
func stream[S any](ctx context.Context, c *connection, newStub func(grpc.ClientConnInterface) S) (context.Context, S, func(), error) {
	var zero S
	conn, err := c.dial()
	if err != nil {
		return nil, zero, nil, err
	}
	ctx, cancel := c.streamContext(ctx)
	return ctx, newStub(conn), func() { cancel(); conn.Close() }, nil
}
