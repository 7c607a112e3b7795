package conformancedriver

import (
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// uploadEnds is a ChatService whose UploadMessages reports how each call's
// request stream ended: io.EOF for a half-close, else the error.
type uploadEnds struct {
	chatv1.UnimplementedChatServiceServer
	ends chan error
}

func (u *uploadEnds) UploadMessages(stream chatv1.ChatService_UploadMessagesServer) error {
	for {
		_, err := stream.Recv()
		if err != nil {
			u.ends <- err
			if err == io.EOF {
				return stream.SendAndClose(&chatv1.UploadResponse{})
			}
			return err
		}
	}
}

// A cancelled upload must reach the server as a cancel, never as a
// half-close: the driver once called CloseAndRecv after cancelling, and its
// END_STREAM could overtake the RST_STREAM, so the server ended the call OK
// (seen intermittently in the matrix). Repeated because it was a race.
func TestCancelledUploadIsNeverAHalfClose(t *testing.T) {
	fake := &uploadEnds{ends: make(chan error, 1)}
	_, target := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { chatv1.RegisterChatServiceServer(r, fake) })
	d := startDriver(t)
	for i := 0; i < 200; i++ {
		obs := runAll(t, d, &pb.RunRequest{Target: target, CancelAfter: 3, Scenario: &pb.RunRequest_Upload{Upload: &pb.Upload{
			Count: 1000, ContentBytes: 10, User: "u", Room: "r"}}})
		wantCode(t, obs, "CANCELLED")
		select {
		case err := <-fake.ends:
			if errors.Is(err, io.EOF) || status.Code(err) != codes.Canceled {
				t.Fatalf("run %d: the server's Recv ended with %v, want CANCELLED", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("run %d: the server never saw the call end", i)
		}
	}
}
