package chat

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

const (
	typChat   = chatv1.MessageType_MESSAGE_TYPE_CHAT
	typJoin   = chatv1.MessageType_MESSAGE_TYPE_JOIN
	typLeave  = chatv1.MessageType_MESSAGE_TYPE_LEAVE
	typSystem = chatv1.MessageType_MESSAGE_TYPE_SYSTEM
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// subscriber is a SubscribeMessages stream that has had its welcome, so it is
// in the room.
type subscriber struct {
	t   *testing.T
	s   chatv1.ChatService_SubscribeMessagesClient
	seq uint64
}

func subscribe(t *testing.T, ctx context.Context, e *env, room, user string) *subscriber {
	t.Helper()
	s, err := e.client.SubscribeMessages(ctx, &chatv1.SubscribeRequest{Room: room, User: user})
	if err != nil {
		t.Fatal(err)
	}
	sub := &subscriber{t: t, s: s}
	w := sub.next()
	wantRoom := room
	if wantRoom == "" {
		wantRoom = "general"
	}
	if w.GetType() != typSystem || w.GetUser() != "system" || w.GetRoom() != wantRoom ||
		w.GetContent() != fmt.Sprintf("welcome to %s, %s", wantRoom, user) || !uuidV4.MatchString(w.GetId()) || w.GetTimestamp() == nil {
		t.Fatalf("welcome: %v", w)
	}
	return sub
}

// next returns the next message and checks the stream's numbering.
func (s *subscriber) next() *chatv1.Message {
	s.t.Helper()
	m, err := s.s.Recv()
	if err != nil {
		s.t.Fatal(err)
	}
	s.seq++
	if m.GetSequence() != s.seq {
		s.t.Fatalf("sequence %d, want %d: %v", m.GetSequence(), s.seq, m)
	}
	return m
}

func TestSendMessage(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	general := subscribe(t, ctx, e, "", "alice")
	other := subscribe(t, ctx, e, "other", "carol")

	r, err := e.client.SendMessage(ctx, &chatv1.SendMessageRequest{User: "bob", Content: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	if !uuidV4.MatchString(r.GetMessageId()) || r.GetTimestamp() == nil {
		t.Fatalf("response %v", r)
	}
	m := general.next()
	if m.GetId() != r.GetMessageId() || m.GetUser() != "bob" || m.GetContent() != "hi" || m.GetRoom() != "general" ||
		m.GetType() != typChat || !m.GetTimestamp().AsTime().Equal(r.GetTimestamp().AsTime()) {
		t.Fatalf("delivered %v", m)
	}
	// The other room got nothing: the next thing it sees is its own traffic.
	if _, err := e.client.SendMessage(ctx, &chatv1.SendMessageRequest{User: "dan", Content: "x", Room: "other"}); err != nil {
		t.Fatal(err)
	}
	if m := other.next(); m.GetUser() != "dan" {
		t.Fatalf("room other got %v", m)
	}

	_, err = e.client.SendMessage(ctx, &chatv1.SendMessageRequest{Content: "hi"})
	grpctest.WantStatus(t, err, codes.InvalidArgument, "user is required")
	_, err = e.client.SendMessage(ctx, &chatv1.SendMessageRequest{User: "bob"})
	grpctest.WantStatus(t, err, codes.InvalidArgument, "content is required")
}

func TestSubscribeJoinLeave(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	s, err := e.client.SubscribeMessages(ctx, &chatv1.SubscribeRequest{Room: "r"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = grpctest.RecvAll[chatv1.Message](s)
	grpctest.WantStatus(t, err, codes.InvalidArgument, "user is required")

	alice := subscribe(t, ctx, e, "r", "alice")
	bobCtx, bobLeaves := context.WithCancel(ctx)
	bob := subscribe(t, bobCtx, e, "r", "bob")
	if m := alice.next(); m.GetType() != typJoin || m.GetUser() != "bob" || m.GetRoom() != "r" {
		t.Fatalf("alice expected bob's JOIN, got %v", m)
	}
	// Bob never sees his own JOIN: the next thing he gets is this message.
	if _, err := e.client.SendMessage(ctx, &chatv1.SendMessageRequest{User: "carol", Content: "c1", Room: "r"}); err != nil {
		t.Fatal(err)
	}
	if m := bob.next(); m.GetContent() != "c1" {
		t.Fatalf("bob got %v", m)
	}
	if m := alice.next(); m.GetContent() != "c1" {
		t.Fatalf("alice got %v", m)
	}
	bobLeaves()
	if m := alice.next(); m.GetType() != typLeave || m.GetUser() != "bob" {
		t.Fatalf("alice expected bob's LEAVE, got %v", m)
	}
	grpctest.WaitFor(t, "room r to have one member", func() bool { return e.svc.rooms.count("r") == 1 })
}

// chatStream is one bidirectional Chat stream.
type chatStream struct {
	t   *testing.T
	s   chatv1.ChatService_ChatClient
	seq uint64
}

func openChat(t *testing.T, ctx context.Context, e *env) *chatStream {
	t.Helper()
	s, err := e.client.Chat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &chatStream{t: t, s: s}
}

func (c *chatStream) send(m *chatv1.Message) {
	c.t.Helper()
	if err := c.s.Send(m); err != nil {
		c.t.Fatal(err)
	}
}

// next returns the next message that is not a keep-alive, checking numbering.
func (c *chatStream) next() *chatv1.Message {
	c.t.Helper()
	for {
		m, err := c.s.Recv()
		if err != nil {
			c.t.Fatal(err)
		}
		c.seq++
		if m.GetSequence() != c.seq {
			c.t.Fatalf("sequence %d, want %d: %v", m.GetSequence(), c.seq, m)
		}
		if m.GetType() == typSystem && m.GetContent() == "keep-alive" {
			continue
		}
		return m
	}
}

func TestChatEchoesInOrderAndBroadcasts(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	watcher := subscribe(t, ctx, e, "room1", "wendy")
	c := openChat(t, ctx, e)
	const n = 200
	go func() {
		for i := 1; i <= n; i++ {
			m := &chatv1.Message{User: "alice", Room: "room1", Content: fmt.Sprintf("m%d", i)}
			if i%2 == 0 {
				m.Id = fmt.Sprintf("client-%d", i)
			}
			if err := c.s.Send(m); err != nil {
				return
			}
		}
		c.s.CloseSend()
	}()
	before := time.Now().Add(-time.Second)
	for i := 1; i <= n; i++ {
		m := c.next()
		if m.GetContent() != fmt.Sprintf("m%d", i) || m.GetUser() != "alice" || m.GetRoom() != "room1" || m.GetType() != typChat ||
			m.GetTimestamp().AsTime().Before(before) {
			t.Fatalf("echo %d: %v", i, m)
		}
		if i%2 == 0 && m.GetId() != fmt.Sprintf("client-%d", i) {
			t.Fatalf("echo %d: client id not kept: %v", i, m)
		}
		if i%2 == 1 && !uuidV4.MatchString(m.GetId()) {
			t.Fatalf("echo %d: server id %q", i, m.GetId())
		}
	}
	// Half-close: the server ends the stream once the echoes are out.
	if _, err := c.s.Recv(); err != io.EOF {
		t.Fatalf("after half-close: %v", err)
	}
	if m := watcher.next(); m.GetType() != typJoin || m.GetUser() != "alice" {
		t.Fatalf("watcher expected alice's JOIN, got %v", m)
	}
	for i := 1; i <= n; i++ {
		if m := watcher.next(); m.GetContent() != fmt.Sprintf("m%d", i) || m.GetType() != typChat {
			t.Fatalf("watcher message %d: %v", i, m)
		}
	}
	if m := watcher.next(); m.GetType() != typLeave || m.GetUser() != "alice" {
		t.Fatalf("watcher expected alice's LEAVE, got %v", m)
	}
}

// Two chatters in a room: each sees the other's messages and JOIN, and its own
// messages only once (as the echo).
func TestChatTwoParticipants(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	a := openChat(t, ctx, e)
	a.send(&chatv1.Message{User: "a", Content: "a1"}) // room "" = general
	if m := a.next(); m.GetContent() != "a1" || m.GetRoom() != "general" {
		t.Fatalf("a's echo: %v", m)
	}
	b := openChat(t, ctx, e)
	b.send(&chatv1.Message{User: "b", Content: "b1", Room: "general"})
	if m := b.next(); m.GetContent() != "b1" {
		t.Fatalf("b's echo: %v", m)
	}
	if m := a.next(); m.GetType() != typJoin || m.GetUser() != "b" {
		t.Fatalf("a expected b's JOIN: %v", m)
	}
	if m := a.next(); m.GetContent() != "b1" || m.GetUser() != "b" {
		t.Fatalf("a expected b1: %v", m)
	}
	a.send(&chatv1.Message{User: "a", Content: "a2"})
	if m := a.next(); m.GetContent() != "a2" {
		t.Fatalf("a's second echo: %v", m)
	}
	if m := b.next(); m.GetContent() != "a2" || m.GetUser() != "a" {
		t.Fatalf("b expected a2: %v", m)
	}
	b.s.CloseSend()
	if _, err := grpctest.RecvAll[chatv1.Message](b.s); err != nil {
		t.Fatal(err)
	}
	if m := a.next(); m.GetType() != typLeave || m.GetUser() != "b" {
		t.Fatalf("a expected b's LEAVE: %v", m)
	}
}

func TestChatKeepAlive(t *testing.T) {
	e := newEnv(t, Config{KeepAlive: 20 * time.Millisecond})
	ctx := grpctest.Context(t)
	c := openChat(t, ctx, e)
	// Keep-alives come without any message sent.
	for i := 1; i <= 3; i++ {
		m, err := c.s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetType() != typSystem || m.GetUser() != "system" || m.GetContent() != "keep-alive" || m.GetSequence() != uint64(i) || m.GetTimestamp() == nil {
			t.Fatalf("keep-alive %d: %v", i, m)
		}
	}
	c.seq = 3
	c.send(&chatv1.Message{User: "u", Content: "hello", Room: "k"})
	if m := c.next(); m.GetContent() != "hello" {
		t.Fatalf("echo among keep-alives: %v", m)
	}
	// After joining, keep-alives name the stream's room.
	for {
		m, err := c.s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetContent() == "keep-alive" {
			if m.GetRoom() != "k" {
				t.Fatalf("keep-alive in room %q", m.GetRoom())
			}
			break
		}
	}
}

func TestChatBadInput(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	for _, c := range []struct {
		m   *chatv1.Message
		msg string
	}{
		{&chatv1.Message{Content: "x"}, "user is required"},
		{&chatv1.Message{User: "u"}, "content is required"},
		{&chatv1.Message{User: "u", Type: typChat}, "content is required"},
	} {
		s := openChat(t, ctx, e)
		s.send(c.m)
		_, err := grpctest.RecvAll[chatv1.Message](s.s)
		grpctest.WantStatus(t, err, codes.InvalidArgument, c.msg)
	}
	// A bad message later in the stream: earlier echoes arrive, then the error.
	s := openChat(t, ctx, e)
	s.send(&chatv1.Message{User: "u", Content: "ok"})
	s.send(&chatv1.Message{User: "u"})
	got, err := grpctest.RecvAll[chatv1.Message](s.s)
	grpctest.WantStatus(t, err, codes.InvalidArgument, "content is required")
	if len(got) != 1 || got[0].GetContent() != "ok" {
		t.Fatalf("before the error: %v", got)
	}
	grpctest.WaitFor(t, "rooms empty", func() bool { return e.svc.rooms.count("general") == 0 })
}

func TestUploadMessages(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	watcher := subscribe(t, ctx, e, "up", "w")
	u, err := e.client.UploadMessages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if err := u.Send(&chatv1.Message{User: "bulk", Room: "up", Content: fmt.Sprintf("u%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.Send(&chatv1.Message{User: "bulk", Room: "up", Type: typJoin}); err != nil { // non-CHAT: content optional
		t.Fatal(err)
	}
	r, err := u.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetMessageCount() != 4 || !r.GetSuccess() {
		t.Fatalf("upload response %v", r)
	}
	for i := 1; i <= 3; i++ {
		if m := watcher.next(); m.GetContent() != fmt.Sprintf("u%d", i) || m.GetUser() != "bulk" || !uuidV4.MatchString(m.GetId()) {
			t.Fatalf("uploaded message %d: %v", i, m)
		}
	}
	if m := watcher.next(); m.GetType() != typJoin {
		t.Fatalf("uploaded JOIN: %v", m)
	}

	// Empty upload: zero messages, success.
	u, _ = e.client.UploadMessages(ctx)
	if r, err := u.CloseAndRecv(); err != nil || r.GetMessageCount() != 0 || !r.GetSuccess() {
		t.Fatalf("empty upload: %v %v", r, err)
	}
	for _, c := range []struct {
		m   *chatv1.Message
		msg string
	}{
		{&chatv1.Message{Content: "x"}, "user is required"},
		{&chatv1.Message{User: "u"}, "content is required"},
	} {
		u, _ := e.client.UploadMessages(ctx)
		u.Send(c.m)
		_, err := u.CloseAndRecv()
		grpctest.WantStatus(t, err, codes.InvalidArgument, c.msg)
	}
}

// A subscriber that stops reading loses room messages (counted) while the
// sender and the other subscribers carry on.
func TestSlowSubscriberDoesNotHoldUpRoom(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	// Its own connection with static HTTP/2 windows, so what the transport
	// can buffer for it is bounded and its queue must fill.
	stalledConn := e.dial(t, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	subscribe(t, ctx, stalledConn, "busy", "stalled") // never read again
	fast := subscribe(t, ctx, e, "busy", "fast")
	big := string(make([]byte, 32<<10))
	for i := range 400 { // far more than its queue (256) and windows hold
		big = big[:len(big)-1] + "x"
		if _, err := e.client.SendMessage(ctx, &chatv1.SendMessageRequest{User: "p", Room: "busy", Content: big}); err != nil {
			t.Fatal(err)
		}
		if m := fast.next(); m.GetUser() != "p" {
			t.Fatalf("message %d: %v", i, m)
		}
	}
	if e.svc.rooms.dropped("busy") == 0 {
		t.Fatal("the stalled subscriber dropped nothing: its queue is not bounded")
	}
}

func TestCloseEndsChatStreams(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	sub := subscribe(t, ctx, e, "", "a")
	c := openChat(t, ctx, e)
	c.send(&chatv1.Message{User: "b", Content: "x"})
	c.next()
	e.svc.Close()
	_, err := grpctest.RecvAll[chatv1.Message](sub.s)
	grpctest.WantStatus(t, err, codes.Unavailable, "server is shutting down")
	_, err = grpctest.RecvAll[chatv1.Message](c.s)
	grpctest.WantStatus(t, err, codes.Unavailable, "server is shutting down")
}
