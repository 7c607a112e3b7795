package updates

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
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
	t.Cleanup(func() { // runs after the server has stopped
		if err := svc.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	_, addr := grpctest.Serve(t, svc.Register)
	return &env{svc: svc, client: updatesv1.NewStreamServiceClient(grpctest.Dial(t, addr)), addr: addr, root: root}
}

// dial opens another client connection to e, closed with the test.
func (e *env) dial(t *testing.T, opts ...grpc.DialOption) updatesv1.StreamServiceClient {
	t.Helper()
	return updatesv1.NewStreamServiceClient(grpctest.Dial(t, e.addr, opts...))
}

func statusOf(err error) *status.Status {
	st, _ := status.FromError(err)
	return st
}
