// Package updates implements polystream.updates.v1.StreamService: topic
// updates, batched query results over SQLite, job progress and log tailing.
// Semantics: docs/contract.md and docs/patterns/{updates,query,jobs,logs}.md.
package updates

import (
	"errors"
	"log/slog"
	"os"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/lifetime"
)

// Config configures a Service.
type Config struct {
	QueueSize int          // per-subscriber queue for topic updates, default 256 (drop-only, drops counted)
	Logs      *LogRing     // required: TailLogs source
	Logger    *slog.Logger // may be nil
	DataDir   string       // where to put the seeded query DB; "" = a temp dir removed on Close
}

// Service is the StreamService implementation.
type Service struct {
	updatesv1.UnimplementedStreamServiceServer

	log    *slog.Logger
	logs   *LogRing
	topics *topicHub
	query  *queryDB
	jobs   *jobManager

	// life ends with Close, and with it the long-lived streams.
	life      *lifetime.Lifetime
	closeOnce sync.Once
	tmpDir    string
}

// New seeds (or reuses) the query database and returns a ready service.
func New(cfg Config) (*Service, error) {
	if cfg.Logs == nil {
		return nil, errors.New("updates: Config.Logs is required")
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 256
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		log:    log,
		logs:   cfg.Logs,
		topics: newTopicHub(cfg.QueueSize),
	}
	s.life = lifetime.New()
	dir := cfg.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "polystream-query-")
		if err != nil {
			return nil, err
		}
		dir, s.tmpDir = d, d
	}
	q, err := openQueryDB(dir)
	if err != nil {
		s.life.Close()
		if s.tmpDir != "" {
			os.RemoveAll(s.tmpDir)
		}
		return nil, err
	}
	s.query = q
	s.jobs = newJobManager(log)
	return s, nil
}

// Register adds the service to a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	updatesv1.RegisterStreamServiceServer(r, s)
}

// Close cancels running jobs, ends open streams and closes the database.
func (s *Service) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.life.Close()
		s.jobs.close()
		err = s.query.close()
		if s.tmpDir != "" {
			if rerr := os.RemoveAll(s.tmpDir); err == nil {
				err = rerr
			}
		}
	})
	return err
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
