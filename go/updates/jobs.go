package updates

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/lifetime"
)

const (
	defaultSteps     = 10
	maxSteps         = 1000
	defaultStepMS    = 200
	maxStepMS        = 60000
	keepFinishedJobs = 1000
	// maxRunningJobs bounds the memory and goroutines that StartJob calls
	// can pin (finished jobs are bounded by keepFinishedJobs).
	maxRunningJobs = 10000
)

// jobState is one observable state of a job; version grows on every change so a
// watcher knows whether it has already sent it.
type jobState struct {
	status  updatesv1.JobStatus
	percent float64
	step    string
	at      time.Time
	version uint64
}

func (st jobState) done() bool {
	switch st.status {
	case updatesv1.JobStatus_JOB_STATUS_COMPLETED, updatesv1.JobStatus_JOB_STATUS_FAILED, updatesv1.JobStatus_JOB_STATUS_CANCELLED:
		return true
	}
	return false
}

type job struct {
	id, name string
	steps    int
	stepDur  time.Duration
	failAt   int

	mu      sync.Mutex
	st      jobState
	changed chan struct{} // closed and replaced on every change: wakes all watchers
	stop    chan struct{} // closed when the job is cancelled
}

func (j *job) snapshot() (jobState, <-chan struct{}) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.st, j.changed
}

// jobManager runs jobs and keeps them for watching. A watcher holds no queue: it
// waits on the job's broadcast channel and sends the newest state, so a slow
// watcher skips intermediate states instead of holding memory or the job up.
type jobManager struct {
	log *slog.Logger

	mu       sync.Mutex
	jobs     map[string]*job
	finished []string // ids of finished jobs, oldest first, at most keepFinishedJobs
	next     int
	closed   bool
	wg       sync.WaitGroup
}

func newJobManager(log *slog.Logger) *jobManager {
	return &jobManager{log: log, jobs: make(map[string]*job)}
}

func (m *jobManager) start(name string, steps, stepMS, failAt int) (*job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, lifetime.ErrShuttingDown
	}
	if len(m.jobs)-len(m.finished) >= maxRunningJobs {
		return nil, status.Errorf(codes.ResourceExhausted, "too many running jobs (%d)", maxRunningJobs)
	}
	m.next++
	j := &job{
		id:      fmt.Sprintf("job-%d", m.next),
		name:    name,
		steps:   steps,
		stepDur: time.Duration(stepMS) * time.Millisecond,
		failAt:  failAt,
		st:      jobState{status: updatesv1.JobStatus_JOB_STATUS_PENDING, at: time.Now(), version: 1},
		changed: make(chan struct{}),
		stop:    make(chan struct{}),
	}
	m.jobs[j.id] = j
	m.wg.Add(1)
	go m.run(j)
	return j, nil
}

func (m *jobManager) get(id string) *job {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.jobs[id]
}

// set moves j to a new state unless it has already ended (a cancel and the
// last step may race; the first one wins). It reports whether it did.
func (m *jobManager) set(j *job, st updatesv1.JobStatus, percent float64, step string) bool {
	j.mu.Lock()
	if j.st.done() {
		j.mu.Unlock()
		return false
	}
	j.st = jobState{status: st, percent: percent, step: step, at: time.Now(), version: j.st.version + 1}
	close(j.changed)
	j.changed = make(chan struct{})
	ended := j.st.done()
	if st == updatesv1.JobStatus_JOB_STATUS_CANCELLED {
		close(j.stop)
	}
	j.mu.Unlock()
	if ended {
		m.retire(j.id)
		m.log.Info("job ended", "job_id", j.id, "status", st.String(), "current_step", step)
	}
	return true
}

// retire records a finished job, forgetting the oldest beyond keepFinishedJobs.
func (m *jobManager) retire(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finished = append(m.finished, id)
	for len(m.finished) > keepFinishedJobs {
		delete(m.jobs, m.finished[0])
		m.finished = m.finished[1:]
	}
}

func (m *jobManager) run(j *job) {
	defer m.wg.Done()
	n := j.steps
	if !m.set(j, updatesv1.JobStatus_JOB_STATUS_RUNNING, 0, fmt.Sprintf("step 0/%d", n)) {
		return
	}
	t := time.NewTimer(j.stepDur)
	defer t.Stop()
	for i := 1; i <= n; i++ {
		if i > 1 {
			t.Reset(j.stepDur)
		}
		select {
		case <-j.stop:
			return
		case <-t.C:
		}
		switch {
		case i == j.failAt:
			m.set(j, updatesv1.JobStatus_JOB_STATUS_FAILED, percent(i-1, n), fmt.Sprintf("failed at step %d/%d", i, n))
			return
		case i == n:
			m.set(j, updatesv1.JobStatus_JOB_STATUS_COMPLETED, 100, fmt.Sprintf("step %d/%d", i, n))
			return
		default:
			if !m.set(j, updatesv1.JobStatus_JOB_STATUS_RUNNING, percent(i, n), fmt.Sprintf("step %d/%d", i, n)) {
				return
			}
		}
	}
}

// percent is 100*i/n computed as Python does (integer product, then divide).
func percent(i, n int) float64 { return float64(100*i) / float64(n) }

// cancel ends j as CANCELLED unless it has already ended, and returns its
// status after the call.
func (m *jobManager) cancel(j *job) updatesv1.JobStatus {
	j.mu.Lock()
	cur := j.st
	j.mu.Unlock()
	if !cur.done() {
		m.set(j, updatesv1.JobStatus_JOB_STATUS_CANCELLED, cur.percent, cur.step)
	}
	st, _ := j.snapshot()
	return st.status
}

// close cancels every running job and waits for their goroutines.
func (m *jobManager) close() {
	m.mu.Lock()
	m.closed = true
	all := make([]*job, 0, len(m.jobs))
	for _, j := range m.jobs {
		all = append(all, j)
	}
	m.mu.Unlock()
	for _, j := range all {
		m.cancel(j)
	}
	m.wg.Wait()
}

func (s *Service) StartJob(ctx context.Context, req *updatesv1.StartJobRequest) (*updatesv1.StartJobResponse, error) {
	steps, stepMS := int(req.GetSteps()), int(req.GetStepDurationMs())
	if steps < 0 || steps > maxSteps {
		return nil, invalid("steps must be between 0 and %d, got %d", maxSteps, steps)
	}
	if stepMS < 0 || stepMS > maxStepMS {
		return nil, invalid("step_duration_ms must be between 0 and %d, got %d", maxStepMS, stepMS)
	}
	if steps == 0 {
		steps = defaultSteps
	}
	if stepMS == 0 {
		stepMS = defaultStepMS
	}
	j, err := s.jobs.start(req.GetName(), steps, stepMS, int(req.GetFailAtStep()))
	if err != nil {
		return nil, err
	}
	return &updatesv1.StartJobResponse{JobId: j.id}, nil
}

func (s *Service) findJob(id string) (*job, error) {
	if id == "" {
		return nil, invalid("job_id is required")
	}
	j := s.jobs.get(id)
	if j == nil {
		return nil, status.Errorf(codes.NotFound, "job %q not found", id)
	}
	return j, nil
}

func (s *Service) CancelJob(ctx context.Context, req *updatesv1.CancelJobRequest) (*updatesv1.CancelJobResponse, error) {
	j, err := s.findJob(req.GetJobId())
	if err != nil {
		return nil, err
	}
	return &updatesv1.CancelJobResponse{JobId: j.id, Status: s.jobs.cancel(j)}, nil
}

func (s *Service) WatchJobProgress(req *updatesv1.JobRequest, stream updatesv1.StreamService_WatchJobProgressServer) error {
	j, err := s.findJob(req.GetJobId())
	if err != nil {
		return err
	}
	ctx, done := s.life.Stream(stream.Context())
	defer done()
	var sent, seq uint64
	for {
		st, changed := j.snapshot()
		if st.version != sent {
			sent = st.version
			seq++
			if err := stream.Send(&updatesv1.JobProgress{
				JobId:       j.id,
				Percentage:  st.percent,
				Status:      st.status,
				CurrentStep: st.step,
				UpdatedAt:   timestamppb.New(st.at),
				Sequence:    seq,
			}); err != nil {
				return err
			}
		}
		if st.done() {
			return nil
		}
		select {
		case <-ctx.Done():
			return s.life.Err(ctx) // the watcher leaves; the job runs on
		case <-changed:
		}
	}
}
