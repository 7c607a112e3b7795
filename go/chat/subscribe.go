package chat

import (
	"fmt"

	"google.golang.org/grpc/metadata"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
)

func (s *Service) SubscribeMessages(req *chatv1.SubscribeRequest, stream chatv1.ChatService_SubscribeMessagesServer) error {
	room := roomName(req.GetRoom())
	if req.GetUser() == "" {
		return invalid("user is required")
	}
	ctx, done := s.life.Stream(stream.Context())
	defer done()

	// Join before the welcome: once the client has the welcome, every later
	// room message reaches it, and the room has heard of the join (the JOIN
	// goes out before this stream can end, so a LEAVE always follows a JOIN).
	m := newMember(req.GetUser())
	s.rooms.join(room, m)
	s.rooms.deliver(room, systemMessage(chatv1.MessageType_MESSAGE_TYPE_JOIN, m.user, room, m.user+" joined"), m)
	defer s.leave(room, m)
	// Headers tell the client it is subscribed, as in the other
	// subscriptions (the welcome follows at once).
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	welcome := systemMessage(chatv1.MessageType_MESSAGE_TYPE_SYSTEM, "system", room, fmt.Sprintf("welcome to %s, %s", room, m.user))
	if err := stream.Send(stamped(welcome, 1)); err != nil {
		return err
	}

	seq := uint64(1)
	for {
		select {
		case <-ctx.Done():
			return s.life.Err(ctx)
		case msg := <-m.queue:
			seq++
			if err := stream.Send(stamped(msg, seq)); err != nil {
				return err
			}
		}
	}
}
