package chat

import (
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
)

// member is one stream in a room: SubscribeMessages or Chat.
type member struct {
	user    string
	queue   chan *chatv1.Message // shared read-only messages; the stream stamps its sequence
	dropped atomic.Uint64
}

func newMember(user string) *member {
	return &member{user: user, queue: make(chan *chatv1.Message, queueSize)}
}

// roomHub routes messages to the members of a room through their bounded
// queues. Delivery never blocks: a member whose queue is full misses the
// message (counted), the others are not held up.
type roomHub struct {
	mu    sync.RWMutex
	rooms map[string]map[*member]struct{}
}

func newRoomHub() *roomHub {
	return &roomHub{rooms: make(map[string]map[*member]struct{})}
}

func (h *roomHub) join(room string, m *member) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ms := h.rooms[room]
	if ms == nil {
		ms = make(map[*member]struct{})
		h.rooms[room] = ms
	}
	ms[m] = struct{}{}
}

func (h *roomHub) leave(room string, m *member) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ms := h.rooms[room]; ms != nil {
		delete(ms, m)
		if len(ms) == 0 {
			delete(h.rooms, room) // no empty rooms left behind
		}
	}
}

// deliver queues msg for every member of room except one (the sender, who
// gets its echo instead, or the member a JOIN/LEAVE is about). It returns how
// many queues took it.
func (h *roomHub) deliver(room string, msg *chatv1.Message, except *member) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := 0
	for m := range h.rooms[room] {
		if m == except {
			continue
		}
		select {
		case m.queue <- msg:
			n++
		default:
			m.dropped.Add(1)
		}
	}
	return n
}

// roomName applies the contract's default room.
func roomName(r string) string {
	if r == "" {
		return "general"
	}
	return r
}

// stamped is msg as one stream sends it: the same message with that stream's
// sequence. Copying the fields keeps the shared original untouched.
func stamped(msg *chatv1.Message, seq uint64) *chatv1.Message {
	return &chatv1.Message{
		Id:        msg.GetId(),
		User:      msg.GetUser(),
		Content:   msg.GetContent(),
		Room:      msg.GetRoom(),
		Timestamp: msg.GetTimestamp(),
		Type:      msg.GetType(),
		Sequence:  seq,
	}
}

// systemMessage is a server-made message about room (welcome, keep-alive,
// JOIN, LEAVE).
func systemMessage(typ chatv1.MessageType, user, room, content string) *chatv1.Message {
	return &chatv1.Message{
		Id:        newID(),
		User:      user,
		Content:   content,
		Room:      room,
		Timestamp: timestamppb.New(time.Now()),
		Type:      typ,
	}
}

// accept checks a client's message and completes it as the server delivers it:
// its id (or a new one), the server's timestamp, type CHAT when unset.
func accept(in *chatv1.Message, room string) (*chatv1.Message, error) {
	if in.GetUser() == "" {
		return nil, invalid("user is required")
	}
	typ := in.GetType()
	if typ == chatv1.MessageType_MESSAGE_TYPE_UNSPECIFIED {
		typ = chatv1.MessageType_MESSAGE_TYPE_CHAT
	}
	if typ == chatv1.MessageType_MESSAGE_TYPE_CHAT && in.GetContent() == "" {
		return nil, invalid("content is required")
	}
	id := in.GetId()
	if id == "" {
		id = newID()
	}
	return &chatv1.Message{
		Id:        id,
		User:      in.GetUser(),
		Content:   in.GetContent(),
		Room:      room,
		Timestamp: timestamppb.New(time.Now()),
		Type:      typ,
	}, nil
}

// count is how many streams are in room now.
func (h *roomHub) count(room string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.rooms[room])
}

// dropped is how many messages the members of room have missed so far.
func (h *roomHub) dropped(room string) uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var n uint64
	for m := range h.rooms[room] {
		n += m.dropped.Load()
	}
	return n
}
