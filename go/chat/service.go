// Package chat implements polystream.chat.v1.ChatService in all four RPC modes
// (unary, server, client and bidirectional streaming) plus StreamMetrics.
// Semantics: docs/contract.md and docs/patterns/{chat,metrics}.md.
package chat

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
)

// Stats are the server-wide counters StreamMetrics reports.
type Stats struct {
	Requests      uint64
	ActiveStreams int64
}

// Config configures a Service.
type Config struct {
	KeepAlive time.Duration // SYSTEM keep-alive interval in Chat, default 15s
	Logger    *slog.Logger
	Stats     func() Stats // server-wide counters for metrics; may be nil (then zeros)
	Instance  string       // default instance_id label (hostname)
	// Fault is a conformance fault (faults.go): `slow-reader=<ms>` or ""
	// (the default: none). The server validates it; anything else is ignored.
	Fault string
}

// queueSize bounds each subscriber's room queue; a full queue drops (and
// counts) so one slow reader never holds up the room.
const queueSize = 256

// Service is the ChatService implementation.
type Service struct {
	chatv1.UnimplementedChatServiceServer

	keepAlive time.Duration
	log       *slog.Logger
	stats     func() Stats
	instance  string
	rooms     *roomHub
	// slowReader > 0: the slow-reader fault's delay before each upload read.
	slowReader time.Duration

	// base is cancelled by Close so open streams end instead of outliving
	// the service.
	base      context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
}

// New returns a ready service.
func New(cfg Config) *Service {
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Stats == nil {
		cfg.Stats = func() Stats { return Stats{} }
	}
	if cfg.Instance == "" {
		cfg.Instance, _ = os.Hostname()
	}
	s := &Service{
		keepAlive: cfg.KeepAlive,
		log:       cfg.Logger,
		stats:     cfg.Stats,
		instance:  cfg.Instance,
		rooms:     newRoomHub(),
	}
	if d, ok, err := ParseSlowReader(cfg.Fault); ok && err == nil {
		s.slowReader = d
		s.log.Warn("SELF-TEST FAULT ACTIVE: this server is deliberately defective", "fault", cfg.Fault)
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	return s
}

// Register adds the service to a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	chatv1.RegisterChatServiceServer(r, s)
}

// Close ends the streams still open; it is safe to call more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(s.cancel)
	return nil
}

// streamCtx returns the stream's context, also cancelled when the service
// closes; call the returned func when the handler ends.
func (s *Service) streamCtx(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.base, cancel)
	return ctx, func() { stop(); cancel() }
}

// endErr turns a context ending into the status the client should see.
func (s *Service) endErr(ctx context.Context) error {
	if s.base.Err() != nil {
		return status.Error(codes.Unavailable, "server is shutting down")
	}
	return status.FromContextError(ctx.Err()).Err()
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// leave takes m out of room and tells the others.
func (s *Service) leave(room string, m *member) {
	s.rooms.leave(room, m)
	s.rooms.deliver(room, systemMessage(chatv1.MessageType_MESSAGE_TYPE_LEAVE, m.user, room, m.user+" left"), m)
}
