package client

import (
	"google.golang.org/grpc/codes"

	codenames "github.com/polystream/polystream/go/internal/codes"
)

// CodeName returns a status code's canonical name, e.g. INVALID_ARGUMENT.
func CodeName(c codes.Code) string { return codenames.Name(c) }
