// Package runner runs the matrix: for every server image it starts server
// containers as the cases ask (shared by cases with the same flags, or a
// fresh one for a case that injects a fault), drives every client image's
// ClientDriver through each case's scenario, performs the case's steps
// (publish, wait, fault) and hands the observations to package checks. It
// returns outcomes; writing reports is package report's job.
package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/polystream/polystream/conformance/checks"
	"github.com/polystream/polystream/conformance/config"
	"github.com/polystream/polystream/conformance/docker"
	"github.com/polystream/polystream/conformance/driver"
	"github.com/polystream/polystream/conformance/load"
	"github.com/polystream/polystream/conformance/probe"
	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
)

// Status of one case for one pair.
type Status string

const (
	Pass  Status = "pass"
	Fail  Status = "fail"
	XFail Status = "xfail" // known failing and did fail: counts as passed
	XPass Status = "xpass" // known failing but passed: counts as failed
	Error Status = "error" // the harness could not run it (image missing, ...)
)

// Failed reports whether the outcome fails the run.
func (s Status) Failed() bool { return s == Fail || s == XPass || s == Error }

// Outcome is one case for one client × server pair.
type Outcome struct {
	Case     *config.Case
	CaseID   string
	Client   string
	Server   string
	Status   Status
	Results  []checks.Result
	Duration time.Duration
	// Error is why the harness could not run the case.
	Error string
	// KnownFailing is the reason from known_failing.yaml, if listed.
	KnownFailing string
	// ServerLogs is the tail of the server's output when the case failed.
	ServerLogs string
	Load       *load.Summary
}

// Options tune a run.
type Options struct {
	// Filter is a regexp on case ids; empty = all.
	Filter *regexp.Regexp
	// Clients/Servers limit the implementations (names); empty = all.
	Clients, Servers []string
	// ResultsDir receives ghz reports.
	ResultsDir string
	// Protoset for ghz.
	Protoset string
	// SelfTest runs selftest.yaml instead of the matrix: each listed case
	// against servers started with --fault, where it must fail.
	SelfTest bool
	// Parallel is how many client × server pairs are tested at once (each
	// pair's cases run one after another, on servers of its own).
	Parallel int
	// Log receives progress lines.
	Log func(format string, args ...any)
	// OnOutcome is called after each case.
	OnOutcome func(Outcome)
}

// Run runs the matrix in env and returns one outcome per case × pair.
func Run(ctx context.Context, env *docker.Env, suite *config.Suite, opt Options) []Outcome {
	if opt.Log == nil {
		opt.Log = func(string, ...any) {}
	}
	m := &matrix{env: env, suite: suite, opt: opt, drivers: map[string]*driverHandle{}}
	return m.run(ctx)
}

type matrix struct {
	env     *docker.Env
	suite   *config.Suite
	opt     Options
	drivers map[string]*driverHandle // by image name, or "name|fault"
	dmu     sync.Mutex               // guards drivers
	seq     int
	mu      sync.Mutex
	out     []Outcome
}

type driverHandle struct {
	c    *docker.Container
	conn *grpc.ClientConn
	err  error
}

func selected(names []string, n string) bool {
	if len(names) == 0 {
		return true
	}
	for _, x := range names {
		if x == n {
			return true
		}
	}
	return false
}

// caseRun is one case as run in the matrix: the case itself or its
// under-load variant.
type caseRun struct {
	c    *config.Case
	id   string
	load *config.LoadProfile
	// invert: a self-test, which passes when the case fails.
	invert bool
	fault  string
	// clientFault: the self-test's client driver runs with --fault clientFault.
	clientFault string
}

func (m *matrix) cases() []caseRun {
	var out []caseRun
	if m.opt.SelfTest {
		for _, t := range m.suite.SelfTests {
			for _, id := range t.Cases {
				orig, lp := m.suite.Lookup(id)
				c := *orig
				if t.Fault != "" {
					c.Server.Flags = append(append([]string(nil), orig.Server.Flags...), "--fault", t.Fault)
				}
				// Cases with the same fault share a server, as in the matrix
				// (a case that needs a fresh one says so itself).
				sid := "selftest/" + t.Name() + "/" + id
				if m.opt.Filter == nil || m.opt.Filter.MatchString(sid) {
					out = append(out, caseRun{c: &c, id: sid, load: lp, invert: true, fault: t.Name(), clientFault: t.ClientFault})
				}
			}
		}
		return out
	}
	for _, c := range m.suite.Cases {
		if m.opt.Filter == nil || m.opt.Filter.MatchString(c.ID) {
			out = append(out, caseRun{c: c, id: c.ID})
		}
	}
	for _, c := range m.suite.Cases {
		if c.UnderLoad == "" {
			continue
		}
		id := config.UnderLoadID(c)
		if m.opt.Filter == nil || m.opt.Filter.MatchString(id) {
			out = append(out, caseRun{c: c, id: id, load: m.suite.LoadProfiles[c.UnderLoad]})
		}
	}
	return out
}

func (m *matrix) run(ctx context.Context) []Outcome {
	var clients, servers []*config.Implementation
	for i := range m.suite.Implementations {
		im := &m.suite.Implementations[i]
		if im.Driver != nil && selected(m.opt.Clients, im.Name) {
			clients = append(clients, im)
		}
		if im.Server != nil && selected(m.opt.Servers, im.Name) {
			servers = append(servers, im)
		}
	}
	// One driver container per client image for the whole run.
	for _, cl := range clients {
		m.driver(ctx, cl, "")
	}
	defer func() {
		for _, d := range m.drivers {
			if d.conn != nil {
				d.conn.Close()
			}
		}
	}()
	cases := m.cases()
	par := m.opt.Parallel
	if par <= 0 {
		par = 1
	}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	// One track per client × server pair, each with server containers of
	// its own, so no two cases ever share a server at the same time.
	for _, sv := range servers {
		for _, cl := range clients {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				m.serverTrack(ctx, sv, []*config.Implementation{cl}, cases)
			}()
		}
	}
	wg.Wait()
	return m.out
}

// serverTrack runs every case for one server image, client after client.
func (m *matrix) serverTrack(ctx context.Context, sv *config.Implementation, clients []*config.Implementation, cases []caseRun) {
	{
		shared := map[string]*serverHandle{}
		for _, cr := range cases {
			if ctx.Err() != nil {
				break
			}
			var pairs []*config.Implementation
			for _, cl := range clients {
				if cr.c.Applies(cl.Name, sv.Name) {
					pairs = append(pairs, cl)
				}
			}
			if len(pairs) == 0 {
				continue
			}
			own := cr.c.HasFault() || cr.c.Server.Fresh || cr.load != nil
			for _, cl := range pairs {
				var srv *serverHandle
				var err error
				if own {
					srv, err = m.startServer(ctx, sv, cr.c)
				} else {
					key := serverKey(cr.c)
					srv = shared[key]
					if srv == nil || srv.err != nil {
						srv, err = m.startServer(ctx, sv, cr.c)
						shared[key] = srv
					}
				}
				o := m.runCase(ctx, cr, cl, sv, srv, err)
				if own && srv != nil && srv.c != nil {
					srv.close(ctx)
				}
				m.record(o)
			}
		}
		for _, s := range shared {
			s.close(ctx)
		}
	}
}

func (m *matrix) record(o Outcome) {
	for _, k := range m.suite.KnownFailing {
		if k.Matches(o.CaseID, o.Client, o.Server) {
			o.KnownFailing = k.Reason
			switch o.Status {
			case Fail:
				o.Status = XFail
			case Pass:
				o.Status = XPass
			}
			break
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.out = append(m.out, o)
	m.opt.Log("%-5s %s  %s → %s  (%v)", strings.ToUpper(string(o.Status)), o.CaseID, o.Client, o.Server, o.Duration.Round(10*time.Millisecond))
	if o.Status.Failed() {
		if o.Error != "" {
			m.opt.Log("      error: %s", firstLine(o.Error))
		}
		for _, r := range o.Results {
			if !r.Pass {
				m.opt.Log("      %s: expected %s; seen %s", r.Kind, r.Expected, r.Seen)
			}
		}
	}
	if m.opt.OnOutcome != nil {
		m.opt.OnOutcome(o)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// driver is the client image's driver; with a self-test client fault, a
// second driver container of that image started with --fault, once per run.
func (m *matrix) driver(ctx context.Context, im *config.Implementation, fault string) *driverHandle {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	key := im.Name
	if fault != "" {
		key += "|" + fault
	}
	if m.drivers[key] == nil {
		m.drivers[key] = m.startDriver(ctx, im, fault)
	}
	return m.drivers[key]
}

func (m *matrix) startDriver(ctx context.Context, im *config.Implementation, fault string) *driverHandle {
	args, alias := im.Driver.Args(), "client-"+im.Name
	if fault != "" {
		args, alias = append(args, "--fault", fault), alias+"-"+fault
	}
	c, err := m.env.Start(ctx, docker.Spec{
		Image: im.Image, Cmd: args, Env: im.Driver.Env,
		Alias: alias, Port: im.Driver.Port,
	})
	if err != nil {
		m.opt.Log("driver %s: %v", im.Name, err)
		return &driverHandle{err: err}
	}
	addr, err := c.Addr(ctx)
	if err != nil {
		return &driverHandle{c: c, err: err}
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	return &driverHandle{c: c, conn: cc, err: err}
}

type serverHandle struct {
	im    *config.Implementation
	c     *docker.Container
	probe *probe.Probe
	err   error
}

func (s *serverHandle) close(ctx context.Context) {
	if s.probe != nil {
		s.probe.Close()
	}
	if s.c != nil {
		_ = s.c.Remove(ctx)
	}
}

func serverKey(c *config.Case) string {
	return fmt.Sprintf("%v|%v", c.Server.Flags, c.Server.DataDir)
}

func (m *matrix) next() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	return m.seq
}

func (m *matrix) startServer(ctx context.Context, im *config.Implementation, c *config.Case) (*serverHandle, error) {
	n := m.next()
	args := im.Server.Args()
	if c.Server.DataDir {
		dir := im.Server.DataDir
		if dir == "" {
			dir = "/data"
		}
		args = append(args, "--data-dir", dir)
	}
	args = append(args, c.Server.Flags...)
	ctr, err := m.env.Start(ctx, docker.Spec{
		Image: im.Image, Cmd: args, Env: im.Server.Env,
		Alias: fmt.Sprintf("server-%s-%d", im.Name, n), Port: im.Server.Port,
	})
	if err != nil {
		return &serverHandle{im: im, err: err}, err
	}
	return &serverHandle{im: im, c: ctr, probe: probe.New(ctr.Addr)}, nil
}

// faultyParty says who runs with a self-test fault.
func faultyParty(cr caseRun) string {
	if cr.clientFault != "" {
		return "a client driver started with --fault " + cr.clientFault
	}
	return "a server started with --fault " + cr.fault
}

// serverView adapts a server container and its probe to checks.Server.
type serverView struct {
	s      *serverHandle
	follow *probe.LogFollower
	memory *peakMemory // sampled during the case when it checks memory
}

func (v serverView) WaitStreams(ctx context.Context, ids []string, want int, within time.Duration) (map[string]int, error) {
	return v.s.probe.WaitStreams(ctx, ids, want, within)
}
func (v serverView) Logs(ctx context.Context, lines int) ([]probe.LogRecord, error) {
	recs, err := v.s.probe.Logs(ctx, lines)
	if v.follow != nil {
		recs = append(v.follow.Records(), recs...)
		if len(recs) > 0 {
			err = nil
		}
	}
	return recs, err
}

// MemoryBytes is the peak sampled during the case, where it was sampled.
func (v serverView) MemoryBytes(ctx context.Context) (uint64, error) {
	if v.memory != nil {
		return v.memory.Peak(ctx, v.s.c.MemoryBytes)
	}
	return v.s.c.MemoryBytes(ctx)
}

var unsafeChars = regexp.MustCompile(`[^a-zA-Z0-9]+`)

func (m *matrix) runCase(ctx context.Context, cr caseRun, cl, sv *config.Implementation, srv *serverHandle, srvErr error) (o Outcome) {
	c := cr.c
	o = Outcome{Case: c, CaseID: cr.id, Client: cl.Name, Server: sv.Name}
	start := time.Now()
	defer func() { o.Duration = time.Since(start) }()
	d := m.driver(ctx, cl, cr.clientFault)
	if d == nil || d.err != nil {
		o.Status, o.Error = Error, fmt.Sprintf("client driver %s: %v", cl.Name, d.err)
		return o
	}
	if srvErr != nil {
		o.Status, o.Error = Error, fmt.Sprintf("server %s: %v", sv.Name, srvErr)
		return o
	}
	base := strings.Trim(unsafeChars.ReplaceAllString(fmt.Sprintf("%s-%s-%s-%d", cr.id, cl.Name, sv.Name, m.next()), "-"), "-")
	ctx, cancel := context.WithTimeout(ctx, c.Timeout.D()+30*time.Second)
	defer cancel()

	x := &execution{m: m, c: c, srv: srv, start: start, deadline: start.Add(c.Timeout.D())}
	// The server's log as it is written during the case (checks fall back
	// on its ring of recent records when this stream broke, e.g. a restart).
	follow := srv.probe.Follow(ctx)
	defer follow.Stop()
	// Background ghz load for the under-load variant.
	var loadDone chan *load.Summary
	if cr.load != nil {
		addr, err := srv.c.Addr(ctx)
		if err != nil {
			o.Status, o.Error = Error, err.Error()
			return o
		}
		loadDone = make(chan *load.Summary, 1)
		lctx, lcancel := context.WithCancel(ctx)
		defer lcancel()
		name := unsafeChars.ReplaceAllString(fmt.Sprintf("%s-%s-%s", c.Name, cl.Name, sv.Name), "-")
		go func() {
			loadDone <- load.Run(lctx, cr.load, addr, m.opt.Protoset, filepath.Join(m.opt.ResultsDir, "ghz"), name)
		}()
		time.Sleep(300 * time.Millisecond) // let the load ramp up first
	}

	x.vars = map[string]string{"$CHANNEL": "ch-" + base, "$ROOM": "room-" + base, "$USER": "user-" + base, "$CASE": c.ID}
	for i := 0; i < c.Subscribers; i++ {
		id := base
		if c.Subscribers > 1 {
			id = fmt.Sprintf("%s-%d", base, i+1)
		}
		x.ids = append(x.ids, id)
	}
	x.startSessions = func() error {
		for _, id := range x.ids {
			vars := map[string]string{"$CLIENT": id}
			for k, v := range x.vars {
				vars[k] = v
			}
			x.mu.Lock()
			for j := len(x.published) - 1; j >= 0; j-- { // longest names first
				vars[fmt.Sprintf("$PUBLISHED_ID_%d", j+1)] = x.published[j].ID
			}
			x.mu.Unlock()
			req, err := buildRequest(c.Run, vars)
			if err != nil {
				return fmt.Errorf("case %s: run: %v", c.ID, err)
			}
			req.Target = srv.c.Target()
			x.sessions = append(x.sessions, driver.Start(ctx, d.conn, req))
		}
		return nil
	}
	var memory *peakMemory
	if samplesMemory(c) {
		memory = samplePeak(ctx, srv.c.MemoryBytes)
	}
	if c.StartStep() == 0 {
		if err := x.startSessions(); err != nil {
			o.Status, o.Error = Error, err.Error()
			return o
		}
	}

	stepResults := x.steps(ctx)
	// Every session must end by itself within the case's timeout.
	var results []checks.Result
	results = append(results, stepResults...)
	if len(x.sessions) == 0 {
		results = append(results, checks.Result{Kind: "start", Expected: "the client sessions started", Seen: "no session was started"})
	}
	for i, s := range x.sessions {
		select {
		case <-s.Done():
		case <-time.After(time.Until(x.deadline)):
			snap := s.Snapshot()
			results = append(results, checks.Result{Kind: "finished", Expected: fmt.Sprintf("the call ends within the case's %v", c.Timeout.D()),
				Seen: fmt.Sprintf("session %d still running (%d received)", i+1, snap.LogCount())})
			s.Stop()
			<-s.Done()
		}
	}
	x.wg.Wait() // async publishes

	in := &checks.Input{Case: c, StartedAt: start, ClientIDs: x.ids, Published: x.published, PublishSpans: x.spans, Faults: x.faults, Server: serverView{s: srv, follow: follow, memory: memory}}
	for _, s := range x.sessions {
		in.Sessions = append(in.Sessions, s.Snapshot())
	}
	for _, e := range c.Expect {
		results = append(results, checks.Run(ctx, in, e))
	}
	if loadDone != nil {
		var ls *load.Summary
		select {
		case ls = <-loadDone:
		case <-time.After(90 * time.Second):
			ls = &load.Summary{Profile: cr.load.Name, Err: fmt.Errorf("ghz did not finish")}
		}
		o.Load = ls
		results = append(results, checks.Result{Kind: "ghz_load", Pass: ls.OK(cr.load),
			Expected: fmt.Sprintf("ghz %s ran with error rate <= %.0f%%", cr.load.Name, cr.load.MaxErrorRate*100), Seen: ls.String()})
	}
	o.Results = results
	o.Status = Pass
	for _, r := range results {
		if !r.Pass {
			o.Status = Fail
		}
	}
	if cr.invert {
		// A self-test: the case must have failed against the faulty server.
		if o.Status == Pass {
			o.Status = Fail
			o.Results = append(o.Results, checks.Result{Kind: "selftest",
				Expected: "some check fails against " + faultyParty(cr),
				Seen:     "every check passed: the harness did not notice the fault"})
		} else {
			o.Status = Pass
			o.Results = append(o.Results, checks.Result{Kind: "selftest", Pass: true,
				Expected: "some check fails against " + faultyParty(cr), Seen: "the case failed as it must"})
		}
	}
	if o.Status == Fail {
		o.ServerLogs = srv.c.Logs(ctx)
	}
	return o
}

// buildRequest fills the variables into the case's run (protobuf JSON) and
// parses it as a RunRequest.
func buildRequest(run map[string]any, vars map[string]string) (*pb.RunRequest, error) {
	b, err := json.Marshal(run)
	if err != nil {
		return nil, err
	}
	s := string(b)
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
	for _, k := range keys {
		s = strings.ReplaceAll(s, k, vars[k])
	}
	req := &pb.RunRequest{}
	if err := protojson.Unmarshal([]byte(s), req); err != nil {
		return nil, fmt.Errorf("%w in %s", err, s)
	}
	return req, nil
}
