package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/polystream/polystream/go/chat"
	"github.com/polystream/polystream/go/events"
	"github.com/polystream/polystream/go/updates"
)

// logRingSize is how many past records TailLogs can serve (docs/contract.md).
const logRingSize = 1000

// Service names reported by the health service.
var serviceNames = []string{
	"polystream.events.v1.EventService",
	"polystream.updates.v1.StreamService",
	"polystream.chat.v1.ChatService",
}

// Server is a started polystream server.
type Server struct {
	cfg          Config
	log          *slog.Logger
	grpc         *grpc.Server
	health       *health.Server
	listener     net.Listener
	services     []io.Closer
	shuttingDown context.Context // cancelled when graceful shutdown begins
	beginStop    context.CancelFunc
	serveResult  chan error
	shutdownOnce sync.Once
	shutdownErr  error
}

// Run starts the server, prints `polystream listening on HOST:PORT` to
// stdout, and serves until ctx ends; then it shuts down gracefully within
// cfg.ShutdownGrace. Logs go to stderr.
func Run(ctx context.Context, cfg Config, stdout io.Writer) error {
	srv, err := Start(cfg, os.Stderr)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(stdout, "polystream listening on %s\n", srv.Addr()); err != nil {
		srv.Shutdown()
		return err
	}
	select {
	case <-ctx.Done():
		return srv.Shutdown()
	case err := <-srv.serveResult:
		// Serving failed on its own; still release the services.
		srv.serveResult <- err
		return errors.Join(err, srv.Shutdown())
	}
}

// Start builds the services and the grpc.Server, listens and serves in the
// background. Logs (text) go to logOutput.
func Start(cfg Config, logOutput io.Writer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, err
	}
	// Every record also feeds the ring that TailLogs serves.
	logs := updates.NewLogRing(logRingSize)
	logger := slog.New(logs.Handler(slog.NewTextHandler(logOutput, &slog.HandlerOptions{Level: level})))

	s := &Server{cfg: cfg, log: logger.With("service", "server"), serveResult: make(chan error, 1)}
	if slices.Contains(serverFaults, cfg.Fault) {
		s.log.Warn("SELF-TEST FAULT ACTIVE: this server is deliberately defective", "fault", cfg.Fault)
	}
	s.shuttingDown, s.beginStop = context.WithCancel(context.Background())
	if err := s.startServices(logger, logs); err != nil {
		s.closeServices()
		return nil, err
	}

	listener, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		s.grpc.Stop()
		s.closeServices()
		return nil, err
	}
	s.listener = listener
	go func() { s.serveResult <- s.grpc.Serve(listener) }()
	s.log.Info("listening", "addr", s.Addr())
	return s, nil
}

// startServices creates the three services and the grpc.Server that serves
// them; each service logs with its own "service" attribute.
func (s *Server) startServices(logger *slog.Logger, logs *updates.LogRing) error {
	cfg := s.cfg
	policy, err := events.ParsePolicy(cfg.Backpressure)
	if err != nil {
		return err
	}
	eventService, err := events.New(events.Config{
		DataDir:        cfg.DataDir,
		HistorySize:    cfg.HistorySize,
		QueueSize:      cfg.QueueSize,
		Policy:         policy,
		PublishTimeout: cfg.PublishTimeout,
		Logger:         logger.With("service", "events"),
		Fault:          eventsFault(cfg.Fault),
	})
	if err != nil {
		return fmt.Errorf("events service: %w", err)
	}
	s.services = append(s.services, eventService)
	updateService, err := updates.New(updates.Config{
		QueueSize: cfg.QueueSize,
		Logs:      logs,
		Logger:    logger.With("service", "updates"),
		DataDir:   cfg.DataDir,
	})
	if err != nil {
		return fmt.Errorf("updates service: %w", err)
	}
	s.services = append(s.services, updateService)

	stats := &rpcStats{}
	instance, _ := os.Hostname()
	chatService := chat.New(chat.Config{
		KeepAlive:       cfg.ChatKeepAlive,
		Logger:          logger.With("service", "chat"),
		Stats:           stats.snapshot,
		Instance:        instance,
		UploadReadDelay: cfg.UploadReadDelay,
	})
	s.services = append(s.services, chatService)

	s.grpc = grpc.NewServer(s.serverOptions(stats)...)
	eventService.Register(s.grpc)
	updateService.Register(s.grpc)
	chatService.Register(s.grpc)

	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	for _, name := range append([]string{""}, serviceNames...) {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	reflection.Register(s.grpc) // v1 and v1alpha
	return nil
}

// eventsFault is the part of --fault the events service implements.
func eventsFault(fault string) string {
	if slices.Contains(events.Faults, fault) {
		return fault
	}
	return ""
}

func (s *Server) serverOptions(stats *rpcStats) []grpc.ServerOption {
	cfg := s.cfg
	logRPC := rpcLogger{log: s.log, fault: cfg.Fault}
	// Logging is outermost so it records the final code, after the
	// shutdown interceptor has turned a cancelled stream into UNAVAILABLE.
	unary := []grpc.UnaryServerInterceptor{logRPC.unary, stats.unary}
	stream := []grpc.StreamServerInterceptor{logRPC.stream, stats.stream, shutdownInterceptor(s.shuttingDown)}
	// The echo sets header and trailer before any handler or fault runs, so
	// every status the chain ends with carries them (metadata.go).
	if echoesMetadata(cfg) {
		unary, stream = append(unary, echoMetadataUnary), append(stream, echoMetadataStream)
	}
	faultUnary, faultStream := faultInterceptors(cfg.Fault)
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(serverParameters(cfg)),
		grpc.KeepaliveEnforcementPolicy(enforcementPolicy(cfg)),
		grpc.MaxRecvMsgSize(cfg.MaxMessageSize),
		grpc.MaxSendMsgSize(cfg.MaxMessageSize),
		grpc.ChainUnaryInterceptor(append(unary, faultUnary...)...),
		grpc.ChainStreamInterceptor(append(stream, faultStream...)...),
	}
	if cfg.MaxConcurrentStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(cfg.MaxConcurrentStreams)))
	}
	if w := windowSize(cfg); w > 0 {
		// Fixed windows turn off grpc-go's BDP estimation, so flow control
		// is deterministic (the conformance suite's flow-control checks).
		opts = append(opts,
			grpc.InitialWindowSize(int32(w)),
			grpc.InitialConnWindowSize(int32(w)))
	}
	return opts
}

// Addr is the address the server listens on: the host as configured
// (`0.0.0.0` stays `0.0.0.0`, not the listener's `[::]`) with the real port.
func (s *Server) Addr() string {
	_, port, err := net.SplitHostPort(s.listener.Addr().String())
	if err != nil {
		return s.listener.Addr().String()
	}
	return net.JoinHostPort(s.cfg.Host, port)
}

// Shutdown marks every service NOT_SERVING, ends open streams with
// UNAVAILABLE, lets unary calls finish for up to cfg.ShutdownGrace, then
// stops hard and closes the services (under the abrupt-shutdown fault it
// stops hard at once). It is safe to call more than once.
func (s *Server) Shutdown() error {
	s.shutdownOnce.Do(func() {
		if stopsAbruptly(s.cfg) {
			s.log.Info("stopping at once (abrupt-shutdown fault)")
			s.grpc.Stop()
		} else {
			s.stopGracefully()
		}
		if err := <-s.serveResult; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.shutdownErr = err
		}
		s.shutdownErr = errors.Join(s.shutdownErr, s.closeServices())
		s.log.Info("stopped")
	})
	return s.shutdownErr
}

// stopGracefully marks health NOT_SERVING, ends streams through the
// shutdown interceptor and waits up to ShutdownGrace for calls to finish,
// then closes what is left.
func (s *Server) stopGracefully() {
	s.log.Info("shutting down", "grace", s.cfg.ShutdownGrace.String())
	s.health.Shutdown()
	s.beginStop()
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(s.cfg.ShutdownGrace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.log.Warn("shutdown grace expired; closing remaining connections")
		s.grpc.Stop()
		<-stopped
	}
}

func (s *Server) closeServices() error {
	var errs []error
	for i := len(s.services) - 1; i >= 0; i-- {
		errs = append(errs, s.services[i].Close())
	}
	s.services = nil
	return errors.Join(errs...)
}
