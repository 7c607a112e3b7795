package chat

import (
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	svc    *Service
	client chatv1.ChatServiceClient
	addr   string
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	svc := New(cfg)
	t.Cleanup(func() { svc.Close() }) // runs after the server has stopped
	_, addr := grpctest.Serve(t, svc.Register)
	return &env{svc: svc, client: chatv1.NewChatServiceClient(grpctest.Dial(t, addr)), addr: addr}
}

// dial opens another client connection to e, closed with the test.
func (e *env) dial(t *testing.T, opts ...grpc.DialOption) *env {
	t.Helper()
	return &env{svc: e.svc, client: chatv1.NewChatServiceClient(grpctest.Dial(t, e.addr, opts...)), addr: e.addr}
}
