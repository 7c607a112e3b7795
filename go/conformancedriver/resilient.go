package conformancedriver

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
)

// subscribeResilient uses go/client's resilient subscriber.
func (r *run) subscribeResilient(s *pb.Subscribe) error {
	return status.Error(codes.Unimplemented, "resilient subscribe: go/client is not integrated yet")
}
