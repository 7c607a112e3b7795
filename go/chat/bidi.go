package chat

import (
	"context"
	"io"
	"time"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
)

// inbound is what the receiving goroutine hands the sending one: an echo to
// send, or the error that ends the stream. The first echo also carries the
// membership the stream has just taken, so the sender learns its room before
// anything else happens on the stream.
type inbound struct {
	echo   *chatv1.Message
	err    error
	joined *member
	room   string
}

// Chat runs two goroutines: the handler's is the stream's only sender
// (echoes, room messages, keep-alives, each stamped with the next sequence);
// the other receives. Echoes pass through a small channel the receiver blocks
// on, so a client that stops reading its echoes is paced by flow control
// rather than buffered without bound; room messages from others use the
// member's drop-only queue. The handler never waits for the receiver: a Recv
// blocked on a silent client returns when the handler has ended the stream.
func (s *Service) Chat(stream chatv1.ChatService_ChatServer) error {
	ctx, done := s.life.Stream(stream.Context())
	defer done()

	in := make(chan inbound, 16)
	go s.chatReceive(ctx, stream, in)

	var (
		seq   uint64
		queue <-chan *chatv1.Message // nil until joined, so it never fires
		room  string
	)
	send := func(msg *chatv1.Message) error {
		seq++
		return stream.Send(stamped(msg, seq))
	}
	tick := time.NewTicker(s.keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return s.life.Err(ctx)
		case it, ok := <-in:
			if !ok {
				return nil // half-closed and every echo sent
			}
			if it.err != nil {
				if ctx.Err() != nil {
					return s.life.Err(ctx)
				}
				return it.err
			}
			if it.joined != nil {
				queue, room = it.joined.queue, it.room
			}
			if err := send(it.echo); err != nil {
				return err
			}
		case msg := <-queue:
			if err := send(msg); err != nil {
				return err
			}
		case <-tick.C:
			if err := send(systemMessage(chatv1.MessageType_MESSAGE_TYPE_SYSTEM, "system", room, "keep-alive")); err != nil {
				return err
			}
		}
	}
}

// chatReceive reads the client's messages: the first one joins its room, each
// is broadcast to the others there and handed to the sender as an echo.
func (s *Service) chatReceive(ctx context.Context, stream chatv1.ChatService_ChatServer, in chan<- inbound) {
	defer close(in)
	var (
		me   *member
		room string
	)
	defer func() {
		if me != nil {
			s.leave(room, me)
		}
	}()
	push := func(it inbound) bool {
		select {
		case in <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return
		}
		if err != nil {
			push(inbound{err: err})
			return
		}
		// The stream's room is its first message's room; later messages go
		// to the same room.
		r := room
		if me == nil {
			r = roomName(msg.GetRoom())
		}
		echo, err := accept(msg, r)
		if err != nil {
			push(inbound{err: err})
			return
		}
		it := inbound{echo: echo}
		if me == nil {
			room = r
			me = newMember(msg.GetUser())
			s.rooms.join(room, me)
			s.rooms.deliver(room, systemMessage(chatv1.MessageType_MESSAGE_TYPE_JOIN, me.user, room, me.user+" joined"), me)
			it.joined, it.room = me, room
		}
		s.rooms.deliver(room, echo, me)
		if !push(it) {
			return
		}
	}
}
