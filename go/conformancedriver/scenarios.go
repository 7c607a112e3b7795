package conformancedriver

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

// One function per scenario of driver.proto.

func describeEvent(e *eventsv1.Event) (uint64, string, string) {
	return e.GetSequence(), e.GetId(), e.GetType()
}

// stopAfterLogEvents stops after n log events (sequence > 0); n 0 = never.
func stopAfterLogEvents(n int32) func(*eventsv1.Event) bool {
	if n <= 0 {
		return nil
	}
	var seen int32
	return func(e *eventsv1.Event) bool {
		if e.GetSequence() > 0 {
			seen++
		}
		return seen >= n
	}
}

// subscribe is one plain EventService.Subscribe call: no retry, control events
// reported like any other.
func (r *run) subscribe(s *pb.Subscribe) error {
	cs, err := eventsv1.NewEventServiceClient(r.conn).Subscribe(r.ctx, s.GetRequest())
	if err != nil {
		return r.finish(err, nil, nil, nil)
	}
	err = recvLoop(r, cs, newEvent, describeEvent, stopAfterLogEvents(s.GetStopAfter()))
	return r.finishStream(cs, err, nil)
}

func newEvent() *eventsv1.Event { return new(eventsv1.Event) }

// subscribeMultiple sends steps[0] at once and each later step once its
// `after` log events were received since the previous step. At stop_after
// log events the client half-closes and reads until the server ends the stream.
func (r *run) subscribeMultiple(s *pb.SubscribeMultiple) error {
	cs, err := eventsv1.NewEventServiceClient(r.conn).SubscribeMultiple(r.ctx)
	if err != nil {
		return r.finish(err, nil, nil, nil)
	}
	steps := s.GetSteps()
	var sinceStep, total int32
	// sendDue sends every step whose `after` is reached (an `after` of 0 goes
	// with the step before it).
	sendDue := func() error {
		for len(steps) > 0 && sinceStep >= steps[0].GetAfter() {
			req := steps[0].GetRequest()
			steps = steps[1:]
			sinceStep = 0
			if err := cs.Send(req); err != nil {
				return err
			}
		}
		return nil
	}
	if len(steps) > 0 {
		steps[0] = &pb.SubscribeMultiple_Step{Request: steps[0].GetRequest()} // the first goes at once
		if err := sendDue(); err != nil && err != io.EOF {
			return r.finishStream(cs, err, nil)
		}
	}
	halfClosed := false
	err = recvLoop(r, cs, newEvent, describeEvent, func(e *eventsv1.Event) bool {
		if e.GetSequence() == 0 {
			return false
		}
		sinceStep++
		total++
		_ = sendDue() // a failed send: the receive that follows reports why
		if n := s.GetStopAfter(); n > 0 && total >= n && !halfClosed {
			halfClosed = true
			_ = cs.CloseSend()
		}
		return false
	})
	return r.finishStream(cs, err, nil)
}

// updates is one StreamService.SubscribeToUpdates call.
func (r *run) updates(s *pb.Updates) error {
	cs, err := updatesv1.NewStreamServiceClient(r.conn).SubscribeToUpdates(r.ctx, s.GetRequest())
	if err != nil {
		return r.finish(err, nil, nil, nil)
	}
	var seen int32
	err = recvLoop(r, cs, func() *updatesv1.Update { return new(updatesv1.Update) },
		func(u *updatesv1.Update) (uint64, string, string) { return u.GetSequence(), "", "" },
		func(*updatesv1.Update) bool { seen++; return s.GetStopAfter() > 0 && seen >= s.GetStopAfter() })
	return r.finishStream(cs, err, nil)
}

// query is one StreamService.StreamQueryResults call.
func (r *run) query(s *pb.Query) error {
	cs, err := updatesv1.NewStreamServiceClient(r.conn).StreamQueryResults(r.ctx, s.GetRequest())
	if err != nil {
		return r.finish(err, nil, nil, nil)
	}
	err = recvLoop(r, cs, func() *updatesv1.QueryResult { return new(updatesv1.QueryResult) },
		func(q *updatesv1.QueryResult) (uint64, string, string) { return q.GetSequence(), "", "" }, nil)
	return r.finishStream(cs, err, nil)
}

// watchJob starts a job first when job_id is empty (StartJob with `start`),
// then watches it with StreamService.WatchJobProgress.
func (r *run) watchJob(s *pb.WatchJob) error {
	client := updatesv1.NewStreamServiceClient(r.conn)
	jobID := s.GetJobId()
	if jobID == "" {
		var header, trailer metadata.MD
		resp, err := client.StartJob(r.ctx, s.GetStart(), grpc.Header(&header), grpc.Trailer(&trailer))
		if err != nil {
			return r.finish(err, header, trailer, nil)
		}
		jobID = resp.GetJobId()
	}
	cs, err := client.WatchJobProgress(r.ctx, &updatesv1.JobRequest{JobId: jobID})
	if err != nil {
		return r.finish(err, nil, nil, nil)
	}
	err = recvLoop(r, cs, func() *updatesv1.JobProgress { return new(updatesv1.JobProgress) },
		func(p *updatesv1.JobProgress) (uint64, string, string) {
			return p.GetSequence(), p.GetJobId(), p.GetStatus().String()
		}, nil)
	return r.finishStream(cs, err, nil)
}

// upload is one ChatService.UploadMessages call: count messages of
// content_bytes each, a sent observation after each Send returned (Send blocks
// on flow control). cancel_after counts sent messages here.
func (r *run) upload(s *pb.Upload) error {
	cs, err := chatv1.NewChatServiceClient(r.conn).UploadMessages(r.ctx)
	if err != nil {
		return r.finish(err, nil, nil, nil)
	}
	content := strings.Repeat("x", int(s.GetContentBytes()))
	for i := int32(1); i <= s.GetCount(); i++ {
		msg := &chatv1.Message{Id: newID(i), User: s.GetUser(), Room: s.GetRoom(),
			Content: content, Type: chatv1.MessageType_MESSAGE_TYPE_CHAT}
		if err := cs.Send(msg); err != nil {
			break // io.EOF: the server ended the call; the status says how
		}
		r.emitSent(i)
		if n := r.req.GetCancelAfter(); n > 0 && i >= n {
			r.cancel()
			r.cancelled = true
			break
		}
	}
	var resp *chatv1.UploadResponse
	if r.cancelled {
		// Only the status: a half-close after the cancel could reach the
		// server before the RST_STREAM and end the call OK there.
		err = cs.RecvMsg(new(chatv1.UploadResponse))
	} else {
		resp, err = cs.CloseAndRecv()
	}
	r.header, _ = cs.Header()
	return r.finishStream(cs, err, resp)
}

// chat is one ChatService.Chat call. Ping-pong: message i+1 is sent once the
// echo of message i (same id) arrived; then the client half-closes and reads
// until the server ends the stream. send_all_then_close: all messages are
// sent (while reading), then the client half-closes.
func (r *run) chat(s *pb.Chat) error {
	cs, err := chatv1.NewChatServiceClient(r.conn).Chat(r.ctx)
	if err != nil {
		return r.finish(err, nil, nil, nil)
	}
	msg := func(i int32) *chatv1.Message {
		return &chatv1.Message{Id: newID(i), User: s.GetUser(), Room: s.GetRoom(),
			Content: fmt.Sprint(i), Type: chatv1.MessageType_MESSAGE_TYPE_CHAT}
	}
	describe := func(m *chatv1.Message) (uint64, string, string) {
		return m.GetSequence(), m.GetId(), m.GetType().String()
	}
	newMsg := func() *chatv1.Message { return new(chatv1.Message) }

	if s.GetSendAllThenClose() {
		go func() {
			for i := int32(1); i <= s.GetCount(); i++ {
				if cs.Send(msg(i)) != nil {
					return
				}
				r.emitSent(i)
			}
			_ = cs.CloseSend()
		}()
		err = recvLoop(r, cs, newMsg, describe, nil)
		return r.finishStream(cs, err, nil)
	}

	next := int32(1)
	var waiting string
	sendNext := func() {
		if next > s.GetCount() {
			waiting = ""
			_ = cs.CloseSend()
			return
		}
		m := msg(next)
		waiting = m.GetId()
		if cs.Send(m) == nil {
			r.emitSent(next)
		}
		next++
	}
	sendNext()
	err = recvLoop(r, cs, newMsg, describe, func(m *chatv1.Message) bool {
		if waiting != "" && m.GetId() == waiting {
			sendNext()
		}
		return false
	})
	return r.finishStream(cs, err, nil)
}

var runID = func() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}()

var idMu sync.Mutex
var idSeq int64

// newID makes a message id that is unique across runs of this process.
func newID(i int32) string {
	idMu.Lock()
	idSeq++
	n := idSeq
	idMu.Unlock()
	return fmt.Sprintf("go-%s-%d-%d", runID, n, i)
}
