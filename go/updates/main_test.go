package updates

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

// sharedDataDir holds one seeded database for the tests that do not test
// seeding itself, so each test does not pay for a rebuild.
var sharedDataDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "polystream-updates-test-")
	if err != nil {
		panic(err)
	}
	sharedDataDir = dir
	defer os.RemoveAll(dir)
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { os.RemoveAll(dir) }))
}

// env is one service on a real listener with a real client.
type env struct {
	svc    *Service
	client updatesv1.StreamServiceClient
	addr   string
	root   *slog.Logger // the server's logger, before "service" is added
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	if cfg.Logs == nil {
		cfg.Logs = NewLogRing(1000)
	}
	root := slog.New(cfg.Logs.Handler(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug})))
	cfg.Logger = root.With("service", "updates")
	if cfg.DataDir == "" {
		cfg.DataDir = sharedDataDir
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	svc.Register(srv)
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		if err := svc.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &env{svc: svc, client: updatesv1.NewStreamServiceClient(conn), addr: lis.Addr().String(), root: root}
}

// dial opens another client connection to e, closed with the test.
func (e *env) dial(t *testing.T, opts ...grpc.DialOption) updatesv1.StreamServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return updatesv1.NewStreamServiceClient(conn)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds; the deadline is a hang guard, not a
// speed requirement.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || st.Message() != msg {
		t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), code, msg)
	}
}

// recvAll reads a stream to its end and returns the messages and the final
// error (nil on a clean end).
func recvAll[T any](s interface{ Recv() (*T, error) }) ([]*T, error) {
	var out []*T
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func statusOf(err error) *status.Status {
	st, _ := status.FromError(err)
	return st
}
