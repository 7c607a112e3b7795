package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

// jobFlags adds the start-job flags to fs.
func jobFlags(fs *flag.FlagSet) func() *updatesv1.StartJobRequest {
	name := fs.String("name", "", "job name, for people")
	steps := fs.Int("steps", 0, "number of steps (0 = 10)")
	stepMS := fs.Int("step-ms", 0, "milliseconds per step (0 = 200)")
	failAt := fs.Int("fail-at", 0, "fail at this step (0 = never)")
	return func() *updatesv1.StartJobRequest {
		return &updatesv1.StartJobRequest{Name: *name, Steps: int32(*steps), StepDurationMs: int32(*stepMS), FailAtStep: int32(*failAt)}
	}
}

func runStartJob(ctx context.Context, args []string) error {
	c := newCommand("start-job")
	request := jobFlags(c.flags)
	if err := c.parse(args); err != nil {
		return err
	}
	return unary(ctx, c, updatesv1.NewStreamServiceClient, func(ctx context.Context, stub updatesv1.StreamServiceClient) (*updatesv1.StartJobResponse, error) {
		return stub.StartJob(ctx, request())
	})
}

func runCancelJob(ctx context.Context, args []string) error {
	c := newCommand("cancel-job")
	req := &updatesv1.CancelJobRequest{}
	c.flags.StringVar(&req.JobId, "job-id", "", "job id")
	if err := c.parse(args); err != nil {
		return err
	}
	return unary(ctx, c, updatesv1.NewStreamServiceClient, func(ctx context.Context, stub updatesv1.StreamServiceClient) (*updatesv1.CancelJobResponse, error) {
		return stub.CancelJob(ctx, req)
	})
}

// runWatchJob prints each progress message and draws a bar on stderr;
// it exits 0 only if the job COMPLETED.
func runWatchJob(ctx context.Context, args []string) error {
	c := newCommand("watch-job")
	jobID := c.flags.String("job-id", "", "job id")
	start := c.flags.Bool("start", false, "start a job first (with the start-job flags)")
	request := jobFlags(c.flags)
	if err := c.parse(args); err != nil {
		return err
	}
	ctx, stub, done, err := stream(ctx, c, updatesv1.NewStreamServiceClient)
	if err != nil {
		return err
	}
	defer done()
	if *start {
		startCtx, cancel := c.unaryContext(ctx)
		started, err := stub.StartJob(startCtx, request())
		cancel()
		if err != nil {
			return err
		}
		*jobID = started.GetJobId()
	}
	progress, err := stub.WatchJobProgress(ctx, &updatesv1.JobRequest{JobId: *jobID})
	if err != nil {
		return err
	}
	// A terminal gets one bar redrawn in place; a log file a line per update.
	redraw := isTerminal(os.Stderr)
	var last *updatesv1.JobProgress
	err = printStream(func() (*updatesv1.JobProgress, error) {
		p, err := progress.Recv()
		if err == nil {
			if redraw {
				fmt.Fprint(os.Stderr, "\r"+progressBar(p))
			} else {
				fmt.Fprintln(os.Stderr, progressBar(p))
			}
			last = p
		}
		return p, err
	}, 0, nil)
	if redraw && last != nil {
		fmt.Fprintln(os.Stderr)
	}
	switch {
	case err != nil:
		return err
	case last == nil:
		return fmt.Errorf("job %s ended no progress", *jobID)
	case last.GetStatus() != updatesv1.JobStatus_JOB_STATUS_COMPLETED:
		return fmt.Errorf("job %s ended %s", *jobID, last.GetStatus())
	}
	return nil
}

// progressBar draws `[#####-----]  50.0% RUNNING step 5/10`.
func progressBar(p *updatesv1.JobProgress) string {
	const width = 30
	pct := min(max(p.GetPercentage(), 0), 100)
	filled := int(width * pct / 100)
	state := strings.TrimPrefix(p.GetStatus().String(), "JOB_STATUS_")
	return fmt.Sprintf("[%s%s] %5.1f%% %s %s", strings.Repeat("#", filled), strings.Repeat("-", width-filled), pct, state, p.GetCurrentStep())
}

func isTerminal(f *os.File) bool {
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}
