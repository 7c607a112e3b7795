package updates

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

func tail(t *testing.T, ctx context.Context, e *env, req *updatesv1.LogRequest) updatesv1.StreamService_TailLogsClient {
	t.Helper()
	s, err := e.client.TailLogs(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTailLogsBadInput(t *testing.T) {
	e := newEnv(t, Config{})
	_, err := grpctest.RecvAll[updatesv1.LogEntry](tail(t, grpctest.Context(t), e, &updatesv1.LogRequest{LogLevel: "verbose"}))
	grpctest.WantStatus(t, err, codes.InvalidArgument, `log_level must be one of debug, info, warn, error; got "verbose"`)
	_, err = grpctest.RecvAll[updatesv1.LogEntry](tail(t, grpctest.Context(t), e, &updatesv1.LogRequest{Lines: -1}))
	grpctest.WantStatus(t, err, codes.InvalidArgument, "lines must be >= 0, got -1")
}

func TestTailLogsHistoryFilters(t *testing.T) {
	e := newEnv(t, Config{})
	chat := e.root.With("service", "chat")
	chat.Debug("d1")
	chat.Info("i1", "user", "alice", slog.Group("req", "id", 7))
	chat.Warn("w1")
	e.root.With("service", "server").Error("e1")
	chat.WithGroup("g").With("a", 1).Error("e2", "b", true)

	ctx := grpctest.Context(t)
	got, err := grpctest.RecvAll[updatesv1.LogEntry](tail(t, ctx, e, &updatesv1.LogRequest{ServiceName: "chat", Lines: 10}))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for i, l := range got {
		msgs = append(msgs, l.GetMessage())
		if l.GetService() != "chat" || l.GetSequence() != uint64(i+1) || l.GetTimestamp() == nil {
			t.Fatalf("entry %d: %v", i, l)
		}
	}
	if want := []string{"d1", "i1", "w1", "e2"}; !equal(msgs, want) {
		t.Fatalf("chat records %v, want %v", msgs, want)
	}
	if f := got[1].GetFields(); got[1].GetLevel() != "info" || f["user"] != "alice" || f["req.id"] != "7" || len(f) != 2 {
		t.Fatalf("i1: level %q fields %v", got[1].GetLevel(), f)
	}
	if f := got[3].GetFields(); got[3].GetLevel() != "error" || f["g.a"] != "1" || f["g.b"] != "true" {
		t.Fatalf("e2: level %q fields %v", got[3].GetLevel(), f)
	}

	// Minimum level across services, the last N only, oldest first.
	got, err = grpctest.RecvAll[updatesv1.LogEntry](tail(t, ctx, e, &updatesv1.LogRequest{LogLevel: "warn", Lines: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].GetMessage() != "e1" || got[0].GetService() != "server" || got[0].GetLevel() != "error" || got[1].GetMessage() != "e2" {
		t.Fatalf("warn, 2 lines: %v", got)
	}
	// lines 0 without follow: nothing, and the stream ends.
	got, err = grpctest.RecvAll[updatesv1.LogEntry](tail(t, ctx, e, &updatesv1.LogRequest{}))
	if err != nil || len(got) != 0 {
		t.Fatalf("lines 0: %v %v", got, err)
	}
}

// The service's own records (a job's end) feed the tail, with service
// "updates" and their attributes as fields.
func TestTailLogsServiceRecords(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	s := tail(t, ctx, e, &updatesv1.LogRequest{ServiceName: "updates", LogLevel: "info", Follow: true})
	if _, err := s.Header(); err != nil {
		t.Fatal(err)
	}
	id := startJob(t, e, &updatesv1.StartJobRequest{Name: "nightly", Steps: 1, StepDurationMs: 1})
	l, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	f := l.GetFields()
	if l.GetMessage() != "job ended" || l.GetService() != "updates" || l.GetLevel() != "info" || l.GetSequence() != 1 ||
		f["job_id"] != id || f["status"] != "JOB_STATUS_COMPLETED" || f["current_step"] != "step 1/1" {
		t.Fatalf("record %v", l)
	}
}

func TestTailLogsFollow(t *testing.T) {
	e := newEnv(t, Config{})
	chat := e.root.With("service", "chat")
	chat.Info("before")
	ctx, cancel := context.WithCancel(grpctest.Context(t))
	s := tail(t, ctx, e, &updatesv1.LogRequest{ServiceName: "chat", Lines: 1, Follow: true, LogLevel: "info"})
	first, err := s.Recv()
	if err != nil || first.GetMessage() != "before" {
		t.Fatalf("history: %v %v", first, err)
	}
	chat.Debug("too low")
	e.root.With("service", "server").Info("other service")
	chat.Info("after", "n", 1)
	next, err := s.Recv()
	if err != nil || next.GetMessage() != "after" || next.GetSequence() != 2 || next.GetFields()["n"] != "1" {
		t.Fatalf("followed: %v %v", next, err)
	}
	cancel()
	if _, err := grpctest.RecvAll[updatesv1.LogEntry](s); statusOf(err).Code() != codes.Canceled {
		t.Fatalf("after cancel: %v", err)
	}
}

// With no history asked for, the headers say the follower is in place.
func TestTailLogsFollowWithoutHistory(t *testing.T) {
	e := newEnv(t, Config{})
	s := tail(t, grpctest.Context(t), e, &updatesv1.LogRequest{Follow: true, ServiceName: "x"})
	if _, err := s.Header(); err != nil {
		t.Fatal(err)
	}
	e.root.Info("new", "service", "x")
	l, err := s.Recv()
	if err != nil || l.GetMessage() != "new" || l.GetService() != "x" || l.GetSequence() != 1 {
		t.Fatalf("%v %v", l, err)
	}
}

func TestLogRingKeepsLastN(t *testing.T) {
	r := NewLogRing(3)
	log := slog.New(r.Handler(slog.NewTextHandler(io.Discard, nil))) // info and up
	log.Debug("not recorded")
	for _, m := range []string{"a", "b", "c", "d", "e"} {
		log.Info(m)
	}
	recs, next, _ := r.since(0)
	var got []string
	for _, rec := range recs {
		got = append(got, rec.message)
	}
	if !equal(got, []string{"c", "d", "e"}) || next != 6 {
		t.Fatalf("ring holds %v, next %d", got, next)
	}
	recs, _, _ = r.since(5)
	if len(recs) != 1 || recs[0].message != "e" {
		t.Fatalf("since(5) = %v", recs)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
