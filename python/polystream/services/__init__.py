"""The three services, one module each (events, updates, chat); none imports another.
`polystream.server` wires them into one grpc.aio server."""
