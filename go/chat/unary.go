package chat

import (
	"context"
	"io"
	"time"

	"google.golang.org/grpc/status"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
)

func (s *Service) SendMessage(ctx context.Context, req *chatv1.SendMessageRequest) (*chatv1.SendMessageResponse, error) {
	room := roomName(req.GetRoom())
	msg, err := accept(&chatv1.Message{User: req.GetUser(), Content: req.GetContent()}, room)
	if err != nil {
		return nil, err
	}
	s.rooms.deliver(room, msg, nil)
	return &chatv1.SendMessageResponse{MessageId: msg.GetId(), Timestamp: msg.GetTimestamp()}, nil
}

// UploadMessages delivers each message to its room as it arrives; gRPC flow
// control paces a fast uploader because nothing is buffered here. Under
// Config.UploadReadDelay each read (the half-close's included) waits first.
func (s *Service) UploadMessages(stream chatv1.ChatService_UploadMessagesServer) error {
	var count int32
	for {
		if !s.uploadReadWait(stream.Context()) {
			return status.FromContextError(stream.Context().Err()).Err()
		}
		in, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&chatv1.UploadResponse{MessageCount: count, Success: true})
		}
		if err != nil {
			return err
		}
		room := roomName(in.GetRoom())
		msg, err := accept(in, room)
		if err != nil {
			return err
		}
		count++
		s.rooms.deliver(room, msg, nil)
	}
}

// uploadReadWait waits Config.UploadReadDelay before an upload's next read
// (at once when it is 0); false when ctx ended first.
func (s *Service) uploadReadWait(ctx context.Context) bool {
	if s.uploadReadDelay <= 0 {
		return true
	}
	t := time.NewTimer(s.uploadReadDelay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
