// Package chat implements polystream.chat.v1.ChatService in all four RPC modes
// (unary, server, client and bidirectional streaming) plus StreamMetrics.
// Semantics: docs/contract.md and docs/patterns/{chat,metrics}.md.
package chat

import (
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	"github.com/polystream/polystream/go/internal/lifetime"
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
	// UploadReadDelay > 0 makes UploadMessages wait that long before reading
	// each message (the first included) and before noticing the half-close,
	// so HTTP/2 flow control holds the uploader back at a steady pace; 0 (the
	// default) = no wait. A testing knob (`--upload-read-delay`); the server
	// validates its range.
	UploadReadDelay time.Duration
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
	// uploadReadDelay > 0: the wait before each upload read.
	uploadReadDelay time.Duration

	// life ends with Close, and with it the open streams.
	life *lifetime.Lifetime
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

		uploadReadDelay: cfg.UploadReadDelay,
	}
	s.life = lifetime.New()
	return s
}

// Register adds the service to a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	chatv1.RegisterChatServiceServer(r, s)
}

// Close ends the streams still open; it is safe to call more than once.
func (s *Service) Close() error {
	s.life.Close()
	return nil
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// leave takes m out of room and tells the others.
func (s *Service) leave(room string, m *member) {
	s.rooms.leave(room, m)
	s.rooms.deliver(room, systemMessage(chatv1.MessageType_MESSAGE_TYPE_LEAVE, m.user, room, m.user+" left"), m)
}
