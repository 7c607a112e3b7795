// Command matrix runs every client image against every server image
// (conformance/implementations.yaml) through the cases in conformance/cases,
// writes the reports to conformance/results and ends with `N passed, N failed`.
// It exits 1 when a case failed (or a known-failing one passed).
//
//	go run ./conformance/cmd/matrix [-run REGEXP] [-clients go,python] [-servers go] [-list]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	tclog "github.com/testcontainers/testcontainers-go/log"

	"github.com/polystream/polystream/conformance/config"
	"github.com/polystream/polystream/conformance/docker"
	"github.com/polystream/polystream/conformance/report"
	"github.com/polystream/polystream/conformance/runner"
)

func main() {
	dir := flag.String("dir", "conformance", "the conformance directory (implementations.yaml, cases/, ...)")
	results := flag.String("results", "conformance/results", "where reports go")
	protoset := flag.String("protoset", "proto/polystream.protoset", "descriptors for ghz")
	run := flag.String("run", "", "only cases whose id matches this regexp")
	clients := flag.String("clients", "", "comma-separated client implementations (default all)")
	servers := flag.String("servers", "", "comma-separated server implementations (default all)")
	selftest := flag.Bool("selftest", false, "run selftest.yaml: cases against servers started with --fault, where they must fail")
	parallel := flag.Int("parallel", 4, "client × server pairs tested at once")
	list := flag.Bool("list", false, "list the cases and exit")
	budget := flag.Duration("budget", 14*time.Minute, "stop starting cases after this long (the rest are reported as errors)")
	flag.Parse()

	suite, err := config.Load(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "matrix:", err)
		os.Exit(2)
	}
	var filter *regexp.Regexp
	if *run != "" {
		if filter, err = regexp.Compile(*run); err != nil {
			fmt.Fprintln(os.Stderr, "matrix: -run:", err)
			os.Exit(2)
		}
	}
	if *list {
		for _, c := range suite.Cases {
			if filter == nil || filter.MatchString(c.ID) {
				fmt.Printf("%-45s %s\n", c.ID, firstSentence(c.Doc))
			}
			if c.UnderLoad != "" && (filter == nil || filter.MatchString("under-load/"+c.Name)) {
				fmt.Printf("%-45s %s (while ghz runs %s)\n", "under-load/"+c.Name, firstSentence(c.Doc), c.UnderLoad)
			}
		}
		return
	}

	verbose := os.Getenv("CONFORMANCE_VERBOSE") != ""
	if !verbose {
		tclog.SetDefault(quiet{})
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Printf("[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	runID := fmt.Sprintf("polystream-conformance-%d", time.Now().UnixNano())
	env, err := docker.NewEnv(ctx, runID)
	if err != nil {
		fmt.Fprintln(os.Stderr, "matrix:", err)
		fmt.Println("0 passed, 1 failed")
		os.Exit(1)
	}
	logf("network %s", env.NetworkName())
	rctx, cancelBudget := context.WithTimeout(ctx, *budget)
	outs := runner.Run(rctx, env, suite, runner.Options{
		Filter: filter, Clients: split(*clients), Servers: split(*servers),
		ResultsDir: *results, Protoset: *protoset, Log: logf, Parallel: *parallel, SelfTest: *selftest,
	})
	budgetUsed := errors.Is(rctx.Err(), context.DeadlineExceeded)
	cancelBudget()
	if cerr := env.Close(context.Background()); cerr != nil {
		logf("cleanup: %v", cerr)
	}
	if budgetUsed && ctx.Err() == nil {
		logf("time budget of %v used up: cases not run are missing from the report", *budget)
		outs = append(outs, runner.Outcome{CaseID: "harness/time-budget", Client: "-", Server: "-", Status: runner.Error,
			Error: fmt.Sprintf("the run exceeded its budget of %v", *budget)})
	}
	if ctx.Err() != nil {
		outs = append(outs, runner.Outcome{CaseID: "harness/interrupted", Client: "-", Server: "-", Status: runner.Error, Error: "interrupted"})
	}
	took := time.Since(start)
	if err := report.Write(*results, outs, took); err != nil {
		fmt.Fprintln(os.Stderr, "matrix: reports:", err)
	}
	logf("reports in %s (junit.xml, matrix.md, matrix.html, ghz/)", *results)
	line := report.ClosingLine(outs)
	fmt.Println(line)
	if report.Count(outs).Failed > 0 || len(outs) == 0 {
		os.Exit(1)
	}
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func firstSentence(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if i := strings.Index(s, ". "); i >= 0 {
		return s[:i+1]
	}
	return s
}

// quiet drops testcontainers' own progress lines (CONFORMANCE_VERBOSE=1 keeps them).
type quiet struct{}

func (quiet) Printf(string, ...any) {}
