// Package codes names gRPC status codes the canonical way (INVALID_ARGUMENT),
// as grpc's status protos, Python's grpc.StatusCode and both CLIs print them;
// Go's codes.Code.String() says InvalidArgument instead.
package codes

import "google.golang.org/grpc/codes"

var names = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// Name returns a status code's canonical name, e.g. INVALID_ARGUMENT.
func Name(c codes.Code) string {
	if name, ok := names[c]; ok {
		return name
	}
	return c.String()
}
