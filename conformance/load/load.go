// Package load drives a ghz load profile (conformance/load.yaml) against a
// server with ghz's runner library, from the compiled descriptors in
// proto/polystream.protoset (never server reflection), and writes ghz's own
// reports.
package load

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/bojand/ghz/printer"
	"github.com/bojand/ghz/runner"

	"github.com/polystream/polystream/conformance/config"
)

// Summary is what the matrix keeps of a load run.
type Summary struct {
	Profile   string
	Count     uint64
	Errors    int
	RPS       float64
	Average   time.Duration
	Codes     map[string]int
	Err       error
	ErrorRate float64
	// Files are the report files written (relative to the results dir).
	Files []string
}

// OK reports whether the load run stayed within the profile's error rate.
func (s *Summary) OK(p *config.LoadProfile) bool {
	return s.Err == nil && s.Count > 0 && s.ErrorRate <= p.MaxErrorRate
}

// String is a one-line description.
func (s *Summary) String() string {
	if s.Err != nil {
		return fmt.Sprintf("ghz %s: %v", s.Profile, s.Err)
	}
	var codes []string
	for k, v := range s.Codes {
		codes = append(codes, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(codes)
	return fmt.Sprintf("ghz %s: %d calls, %.0f rps, avg %v, codes %s", s.Profile, s.Count, s.RPS, s.Average.Round(time.Microsecond), strings.Join(codes, " "))
}

// Run drives profile p against addr (127.0.0.1:port) until it is done or ctx
// ends, and writes <name>.json and <name>.html under dir.
func Run(ctx context.Context, p *config.LoadProfile, addr, protoset, dir, name string) *Summary {
	s := &Summary{Profile: p.Name}
	data := p.Data
	if data == nil {
		data = map[string]any{}
	}
	opts := []runner.Option{
		runner.WithProtoset(protoset),
		runner.WithInsecure(true),
		runner.WithData(data),
		runner.WithName(name),
		runner.WithConcurrency(max(p.Concurrency, 1)),
		runner.WithConnections(max(p.Connections, 1)),
		runner.WithDialTimeout(5 * time.Second),
		runner.WithSkipFirst(0),
	}
	if p.Metadata != nil {
		opts = append(opts, runner.WithMetadata(p.Metadata))
	}
	if p.RPS > 0 {
		opts = append(opts, runner.WithRPS(p.RPS))
	}
	// Bounded in count and in time, whatever the profile says.
	total := p.Total
	if total == 0 {
		total = 20000
	}
	dur := p.Duration.D()
	if dur == 0 || dur > 60*time.Second {
		dur = 60 * time.Second
	}
	// At the end of the duration, in-flight calls finish ("wait") instead of
	// being cut off and counted as errors.
	opts = append(opts, runner.WithTotalRequests(total), runner.WithRunDuration(dur), runner.WithDurationStopAction("wait"))
	if p.Timeout > 0 {
		opts = append(opts, runner.WithTimeout(p.Timeout.D()))
	}
	if p.StreamCallDuration > 0 {
		opts = append(opts, runner.WithStreamCallDuration(p.StreamCallDuration.D()))
	}
	type res struct {
		r   *runner.Report
		err error
	}
	ch := make(chan res, 1)
	// ghz has no context option: it stops at its duration; the caller's
	// ctx only shortens the wait below (ghz then finishes in the background
	// within its own bound).
	go func() {
		r, err := runner.Run(p.Call, addr, opts...)
		ch <- res{r, err}
	}()
	var out res
	select {
	case out = <-ch:
	case <-ctx.Done():
		s.Err = ctx.Err()
		return s
	}
	if out.err != nil {
		s.Err = out.err
		return s
	}
	r := out.r
	s.Count = r.Count
	s.RPS = r.Rps
	s.Average = r.Average
	s.Codes = r.StatusCodeDist
	for code, n := range r.StatusCodeDist {
		if code != "OK" {
			s.Errors += n
		}
	}
	if r.Count > 0 {
		s.ErrorRate = float64(s.Errors) / float64(r.Count)
	}
	if dir != "" {
		_ = os.MkdirAll(dir, 0o755)
		r.Details = nil // keep the files small
		for _, f := range []struct{ ext, format string }{{"json", "json"}, {"html", "html"}} {
			fn := filepath.Join(dir, name+"."+f.ext)
			fh, err := os.Create(fn)
			if err != nil {
				continue
			}
			_ = (&printer.ReportPrinter{Out: fh, Report: r}).Print(f.format)
			fh.Close()
			s.Files = append(s.Files, fn)
		}
	}
	return s
}

// Marshal is the summary as JSON (for the results directory).
func (s *Summary) Marshal() []byte {
	b, _ := json.MarshalIndent(s, "", "  ")
	return b
}
