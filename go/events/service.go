// Package events is the EventService pattern: SSE-style pub/sub over a
// sequenced, retained (optionally durable) event log, with resume,
// wildcard filters, heartbeats and per-subscriber backpressure.
//
// An event's path is one straight line: Broadcast → hub.publish → log
// (sequence, retention, store) → each subscriber's bounded queue (filter,
// policy) → that subscriber's stream. See docs/patterns/events.md.
package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// Config configures the service; zero values take the defaults of
// docs/contract.md.
type Config struct {
	DataDir        string        // "" = in-memory log; else SQLite file DataDir/events.db (durable; resume across restarts)
	HistorySize    int           // retention, default 1000
	QueueSize      int           // per-subscriber queue, default 256
	Policy         Policy        // default Disconnect
	PublishTimeout time.Duration // for Block, default 5s
	Logger         *slog.Logger  // may be nil
	// Fault is a deliberate defect for the conformance self-test only
	// (faults.go); "" (the default) = none.
	Fault string
}

// Service implements polystream.events.v1.EventService.
type Service struct {
	eventsv1.UnimplementedEventServiceServer
	hub       *hub
	queueSize int
	log       *slog.Logger
	fault     string // self-test fault, "" = none (faults.go)
}

var (
	errLogClosed  = errors.New("event log is closed")
	errStreamDone = errors.New("stream ended")
)

// New opens the event log (the SQLite file when cfg.DataDir is set).
func New(cfg Config) (*Service, error) {
	if cfg.HistorySize < 0 || cfg.QueueSize < 0 || cfg.PublishTimeout < 0 {
		return nil, fmt.Errorf("events: history size, queue size and publish timeout must not be negative")
	}
	if _, ok := policyNames[cfg.Policy]; !ok {
		return nil, fmt.Errorf("events: unknown policy %v", cfg.Policy)
	}
	if err := checkFault(cfg.Fault); err != nil {
		return nil, err
	}
	cfg.HistorySize = cmpOr(cfg.HistorySize, 1000)
	cfg.QueueSize = cmpOr(cfg.QueueSize, 256)
	cfg.PublishTimeout = cmpOr(cfg.PublishTimeout, 5*time.Second)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	if cfg.Fault != "" {
		logger.Warn("SELF-TEST FAULT ACTIVE: this server is deliberately defective", "fault", cfg.Fault)
	}
	var st store = memoryStore{}
	if dir := storeDataDir(cfg); dir != "" {
		sq, err := openSQLite(dir)
		if err != nil {
			return nil, fmt.Errorf("events: open store: %w", err)
		}
		st = sq
	}
	l, err := openLog(st, cfg.HistorySize)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("events: load log: %w", err)
	}
	logger.Info("event log open", "data_dir", cfg.DataDir, "retained", len(l.window), "last_sequence", l.lastSeq,
		"history_size", cfg.HistorySize, "queue_size", cfg.QueueSize, "backpressure", cfg.Policy.String())
	return &Service{
		hub: &hub{
			policy:         cfg.Policy,
			publishTimeout: cfg.PublishTimeout,
			clients:        newClients(),
			log:            l,
			repeatIDs:      appendsRepeatedIDs(cfg.Fault),
		},
		queueSize: cfg.QueueSize,
		log:       logger,
		fault:     cfg.Fault,
	}, nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Register registers the EventService on r.
func (s *Service) Register(r grpc.ServiceRegistrar) { eventsv1.RegisterEventServiceServer(r, s) }

// Close closes the store; later Broadcasts fail with UNAVAILABLE. Open
// streams are not ended (the server does that).
func (s *Service) Close() error { return s.hub.close() }

// Subscribe streams the replay, then live events.
func (s *Service) Subscribe(req *eventsv1.SubscribeRequest, stream grpc.ServerStreamingServer[eventsv1.Event]) error {
	return s.serve(stream, req, nil)
}

// SubscribeMultiple subscribes with the first request; later ones replace
// filters and channel.
func (s *Service) SubscribeMultiple(stream grpc.BidiStreamingServer[eventsv1.SubscribeRequest, eventsv1.Event]) error {
	first, err := stream.Recv()
	if err == io.EOF {
		return nil // half-closed without subscribing
	}
	if err != nil {
		return err
	}
	return s.serve(stream, first, stream.Recv)
}

// Broadcast publishes one event.
func (s *Service) Broadcast(_ context.Context, req *eventsv1.BroadcastRequest) (*eventsv1.BroadcastResponse, error) {
	ev := req.GetEvent()
	if ev == nil {
		return nil, status.Error(codes.InvalidArgument, "event is required")
	}
	if ev.GetType() == "" {
		return nil, status.Error(codes.InvalidArgument, "event.type is required")
	}
	// The caller's context is not used: once in the log the event must
	// reach every queue (Block waits are bounded by PublishTimeout).
	res, err := s.hub.publish(newRecord(ev, normalizeChannels(req.GetTargetChannels())))
	if errors.Is(err, errLogClosed) {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if err != nil {
		s.log.Error("broadcast failed", "error", err)
		return nil, status.Errorf(codes.Internal, "event log: %v", err)
	}
	return &eventsv1.BroadcastResponse{Recipients: int32(res.recipients), EventId: res.id, Sequence: res.seq}, nil
}

// GetConnectionStatus reports one client's streams and counters.
func (s *Service) GetConnectionStatus(_ context.Context, req *eventsv1.SubscribeRequest) (*eventsv1.ConnectionStatus, error) {
	if req.GetClientId() == "" {
		return nil, errClientIDRequired
	}
	return s.unknownClient(s.hub.clients.status(req.GetClientId()))
}

var errClientIDRequired = status.Error(codes.InvalidArgument, "client_id is required")

// subscribeRequest is a checked SubscribeRequest.
type subscribeRequest struct {
	filter    filter
	channel   string
	heartbeat time.Duration
}

// parseSubscribeRequest checks a request in the order of docs/contract.md's
// table: client_id, heartbeat_interval, event_types.
func parseSubscribeRequest(req *eventsv1.SubscribeRequest) (subscribeRequest, error) {
	if req.GetClientId() == "" {
		return subscribeRequest{}, errClientIDRequired
	}
	if hb := req.GetHeartbeatInterval(); hb < 0 {
		return subscribeRequest{}, status.Errorf(codes.InvalidArgument, "heartbeat_interval must be >= 0, got %d", hb)
	}
	f, err := compileFilter(req.GetEventTypes())
	if err != nil {
		return subscribeRequest{}, status.Error(codes.InvalidArgument, err.Error())
	}
	hb := time.Duration(req.GetHeartbeatInterval()) * time.Second
	return subscribeRequest{
		filter:    f,
		channel:   cmpOr(req.GetChannel(), "default"),
		heartbeat: cmpOr(hb, 30*time.Second),
	}, nil
}

// normalizeChannels maps "" to "default" and removes repeats; an empty
// list stays empty (every channel).
func normalizeChannels(chs []string) []string {
	if len(chs) == 0 {
		return nil
	}
	out := make([]string, 0, len(chs))
	for _, c := range chs {
		out = append(out, cmpOr(c, "default"))
	}
	slices.Sort(out)
	return slices.Compact(out)
}
