package updates

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

const (
	pending   = updatesv1.JobStatus_JOB_STATUS_PENDING
	running   = updatesv1.JobStatus_JOB_STATUS_RUNNING
	completed = updatesv1.JobStatus_JOB_STATUS_COMPLETED
	failed    = updatesv1.JobStatus_JOB_STATUS_FAILED
	cancelled = updatesv1.JobStatus_JOB_STATUS_CANCELLED
)

func startJob(t *testing.T, e *env, req *updatesv1.StartJobRequest) string {
	t.Helper()
	r, err := e.client.StartJob(grpctest.Context(t), req)
	if err != nil {
		t.Fatal(err)
	}
	return r.GetJobId()
}

func watch(t *testing.T, ctx context.Context, e *env, id string) updatesv1.StreamService_WatchJobProgressClient {
	t.Helper()
	s, err := e.client.WatchJobProgress(ctx, &updatesv1.JobRequest{JobId: id})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkProgress checks one watcher's view: numbered 1..n, never going back,
// ending in the wanted final state.
func checkProgress(t *testing.T, id string, got []*updatesv1.JobProgress, final updatesv1.JobStatus, pct float64, step string) {
	t.Helper()
	if len(got) == 0 {
		t.Fatal("no progress")
	}
	for i, p := range got {
		if p.GetJobId() != id || p.GetSequence() != uint64(i+1) || p.GetUpdatedAt() == nil {
			t.Fatalf("message %d: %v", i, p)
		}
		if i > 0 && (p.GetPercentage() < got[i-1].GetPercentage() || p.GetStatus() < got[i-1].GetStatus()) {
			t.Fatalf("progress went back: %v after %v", p, got[i-1])
		}
		if i < len(got)-1 && p.GetStatus() != pending && p.GetStatus() != running {
			t.Fatalf("message %d of %d is final: %v", i, len(got), p)
		}
	}
	last := got[len(got)-1]
	if last.GetStatus() != final || last.GetPercentage() != pct || last.GetCurrentStep() != step {
		t.Fatalf("last = %v %v %q, want %v %v %q", last.GetStatus(), last.GetPercentage(), last.GetCurrentStep(), final, pct, step)
	}
}

func TestJobCompletes(t *testing.T) {
	e := newEnv(t, Config{})
	id := startJob(t, e, &updatesv1.StartJobRequest{Name: "demo", Steps: 4, StepDurationMs: 20})
	if id != "job-1" {
		t.Fatalf("first job id %q, want job-1", id)
	}
	got, err := grpctest.RecvAll[updatesv1.JobProgress](watch(t, grpctest.Context(t), e, id))
	if err != nil {
		t.Fatal(err)
	}
	checkProgress(t, id, got, completed, 100, "step 4/4")
	for _, p := range got {
		if p.GetStatus() == running && p.GetCurrentStep() == "step 2/4" && p.GetPercentage() != 50 {
			t.Fatalf("step 2/4 at %v%%", p.GetPercentage())
		}
	}
	// Watching a finished job: its final state, then the end.
	again, err := grpctest.RecvAll[updatesv1.JobProgress](watch(t, grpctest.Context(t), e, id))
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 {
		t.Fatalf("finished job sent %d messages", len(again))
	}
	checkProgress(t, id, again, completed, 100, "step 4/4")
	// Cancelling a finished job reports its status, no error.
	r, err := e.client.CancelJob(grpctest.Context(t), &updatesv1.CancelJobRequest{JobId: id})
	if err != nil || r.GetStatus() != completed || r.GetJobId() != id {
		t.Fatalf("CancelJob of a completed job: %v %v", r, err)
	}
	if id2 := startJob(t, e, &updatesv1.StartJobRequest{Steps: 1, StepDurationMs: 1}); id2 != "job-2" {
		t.Fatalf("second job id %q", id2)
	}
}

func TestJobFails(t *testing.T) {
	e := newEnv(t, Config{})
	id := startJob(t, e, &updatesv1.StartJobRequest{Steps: 3, StepDurationMs: 10, FailAtStep: 2})
	got, err := grpctest.RecvAll[updatesv1.JobProgress](watch(t, grpctest.Context(t), e, id))
	if err != nil {
		t.Fatal(err)
	}
	checkProgress(t, id, got, failed, float64(100)/3, "failed at step 2/3")
}

// Several watchers see the same progress; one leaving does not cancel the job.
func TestJobSeveralWatchers(t *testing.T) {
	e := newEnv(t, Config{})
	// Steps long enough that every change reaches every watcher: a watcher
	// that falls behind skips to the newest state by design.
	id := startJob(t, e, &updatesv1.StartJobRequest{Steps: 4, StepDurationMs: 300})
	ctx := grpctest.Context(t)
	leaving, leave := context.WithCancel(ctx)
	quitter := watch(t, leaving, e, id)
	if _, err := quitter.Recv(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	views := make([][]*updatesv1.JobProgress, 3)
	errs := make([]error, 3)
	for i := range views {
		s := watch(t, ctx, e, id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			views[i], errs[i] = grpctest.RecvAll[updatesv1.JobProgress](s)
		}()
	}
	leave()
	if _, err := grpctest.RecvAll[updatesv1.JobProgress](quitter); statusOf(err).Code() != codes.Canceled {
		t.Fatalf("quitter ended with %v", err)
	}
	wg.Wait()
	// The watchers opened a moment apart, so one may have started a step
	// later; from there on they saw the same states.
	longest := views[0]
	for i, v := range views {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		checkProgress(t, id, v, completed, 100, "step 4/4")
		if len(v) > len(longest) {
			longest = v
		}
	}
	all := states(longest)
	for i, v := range views {
		got := states(v)
		if fmt.Sprint(got) != fmt.Sprint(all[len(all)-len(got):]) {
			t.Fatalf("watcher %d saw %v, another saw %v", i, got, all)
		}
	}
	// Every step was pushed: running steps 1..3, then the end.
	if want := []string{
		"JOB_STATUS_RUNNING/25/step 1/4", "JOB_STATUS_RUNNING/50/step 2/4", "JOB_STATUS_RUNNING/75/step 3/4", "JOB_STATUS_COMPLETED/100/step 4/4",
	}; len(all) < len(want) || fmt.Sprint(all[len(all)-len(want):]) != fmt.Sprint(want) {
		t.Fatalf("progress %v, want it to end with %v", all, want)
	}
}

func states(ps []*updatesv1.JobProgress) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fmt.Sprintf("%v/%v/%s", p.GetStatus(), p.GetPercentage(), p.GetCurrentStep())
	}
	return out
}

func TestJobCancel(t *testing.T) {
	e := newEnv(t, Config{})
	id := startJob(t, e, &updatesv1.StartJobRequest{Steps: 1000, StepDurationMs: 60000})
	s := watch(t, grpctest.Context(t), e, id)
	// Wait for RUNNING (PENDING may come first) so the final step is known.
	var seen []*updatesv1.JobProgress
	for len(seen) == 0 || seen[len(seen)-1].GetStatus() != running {
		p, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, p)
	}
	r, err := e.client.CancelJob(grpctest.Context(t), &updatesv1.CancelJobRequest{JobId: id})
	if err != nil || r.GetStatus() != cancelled {
		t.Fatalf("CancelJob: %v %v", r, err)
	}
	rest, err := grpctest.RecvAll[updatesv1.JobProgress](s)
	if err != nil {
		t.Fatal(err)
	}
	checkProgress(t, id, append(seen, rest...), cancelled, 0, "step 0/1000")
	r, err = e.client.CancelJob(grpctest.Context(t), &updatesv1.CancelJobRequest{JobId: id})
	if err != nil || r.GetStatus() != cancelled {
		t.Fatalf("second CancelJob: %v %v", r, err)
	}
}

func TestJobBadInput(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := grpctest.Context(t)
	for _, c := range []struct {
		req *updatesv1.StartJobRequest
		msg string
	}{
		{&updatesv1.StartJobRequest{Steps: 5000}, "steps must be between 0 and 1000, got 5000"},
		{&updatesv1.StartJobRequest{Steps: -1}, "steps must be between 0 and 1000, got -1"},
		{&updatesv1.StartJobRequest{StepDurationMs: -1}, "step_duration_ms must be between 0 and 60000, got -1"},
		{&updatesv1.StartJobRequest{StepDurationMs: 60001}, "step_duration_ms must be between 0 and 60000, got 60001"},
	} {
		_, err := e.client.StartJob(ctx, c.req)
		grpctest.WantStatus(t, err, codes.InvalidArgument, c.msg)
	}
	_, err := e.client.CancelJob(ctx, &updatesv1.CancelJobRequest{})
	grpctest.WantStatus(t, err, codes.InvalidArgument, "job_id is required")
	_, err = e.client.CancelJob(ctx, &updatesv1.CancelJobRequest{JobId: "abc"})
	grpctest.WantStatus(t, err, codes.NotFound, `job "abc" not found`)
	_, err = grpctest.RecvAll[updatesv1.JobProgress](watch(t, ctx, e, ""))
	grpctest.WantStatus(t, err, codes.InvalidArgument, "job_id is required")
	_, err = grpctest.RecvAll[updatesv1.JobProgress](watch(t, ctx, e, "abc"))
	grpctest.WantStatus(t, err, codes.NotFound, `job "abc" not found`)
}

// Defaults: steps 0 = 10, step_duration_ms 0 = 200.
func TestJobDefaults(t *testing.T) {
	e := newEnv(t, Config{})
	id := startJob(t, e, &updatesv1.StartJobRequest{})
	j := e.svc.jobs.get(id)
	if j.steps != 10 || j.stepDur.Milliseconds() != 200 {
		t.Fatalf("defaults: %d steps of %v", j.steps, j.stepDur)
	}
}

// The 1000 most recently finished jobs stay watchable; older ones are gone.
func TestJobRetention(t *testing.T) {
	e := newEnv(t, Config{})
	m := e.svc.jobs
	var jobs []*job
	for range keepFinishedJobs + 2 {
		j, err := m.start("", 1, maxStepMS, 0)
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, j)
	}
	for _, j := range jobs {
		m.cancel(j)
	}
	ctx := grpctest.Context(t)
	for _, id := range []string{"job-1", "job-2"} {
		_, err := grpctest.RecvAll[updatesv1.JobProgress](watch(t, ctx, e, id))
		grpctest.WantStatus(t, err, codes.NotFound, fmt.Sprintf("job %q not found", id))
	}
	got, err := grpctest.RecvAll[updatesv1.JobProgress](watch(t, ctx, e, "job-3"))
	if err != nil || len(got) != 1 || got[0].GetStatus() != cancelled {
		t.Fatalf("job-3: %v %v", got, err)
	}
}

// Closing the service cancels running jobs, and their watchers see it.
func TestJobCloseCancels(t *testing.T) {
	e := newEnv(t, Config{})
	id := startJob(t, e, &updatesv1.StartJobRequest{Steps: 10, StepDurationMs: 60000})
	s := watch(t, grpctest.Context(t), e, id)
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	e.svc.Close()
	got, err := grpctest.RecvAll[updatesv1.JobProgress](s)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || got[len(got)-1].GetStatus() != cancelled {
		t.Fatalf("after Close: %v", got)
	}
}

// Running jobs are bounded; finishing one makes room.
func TestJobRunningLimit(t *testing.T) {
	e := newEnv(t, Config{})
	m := e.svc.jobs
	var first *job
	for i := range maxRunningJobs {
		j, err := m.start("", 1, maxStepMS, 0)
		if err != nil {
			t.Fatalf("job %d: %v", i+1, err)
		}
		if first == nil {
			first = j
		}
	}
	_, err := e.client.StartJob(grpctest.Context(t), &updatesv1.StartJobRequest{})
	grpctest.WantStatus(t, err, codes.ResourceExhausted, "too many running jobs (10000)")
	m.cancel(first)
	if _, err := e.client.StartJob(grpctest.Context(t), &updatesv1.StartJobRequest{}); err != nil {
		t.Fatal(err)
	}
}
