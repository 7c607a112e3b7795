// Package config reads the conformance suite's data: the implementations
// under test (implementations.yaml), the cases (cases/*.yaml), the ghz load
// profiles (load.yaml) and the known-failing list (known_failing.yaml).
// Nothing here runs anything.
package config

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as "500ms", "5s" in YAML.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML parses Go's duration syntax.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// Implementation is one image under test: a server, a client driver, or both.
type Implementation struct {
	Name   string    `yaml:"name"`
	Image  string    `yaml:"image"`
	Server *Endpoint `yaml:"server"`
	Driver *Endpoint `yaml:"driver"`
}

// Endpoint is how a container of the image is started.
type Endpoint struct {
	// Command is the container's command; "{port}" is replaced by Port.
	Command []string          `yaml:"command"`
	Port    int               `yaml:"port"`
	Env     map[string]string `yaml:"env"`
	// DataDir is a writable directory in the image for --data-dir.
	DataDir string `yaml:"data_dir"`
}

// Args returns the command with {port} filled in.
func (e *Endpoint) Args() []string {
	out := make([]string, len(e.Command))
	for i, a := range e.Command {
		out[i] = strings.ReplaceAll(a, "{port}", fmt.Sprint(e.Port))
	}
	return out
}

// Case is one named conformance check, run for every client × server pair.
type Case struct {
	// ID is "<file stem>/<name>", e.g. "ordering/server-stream-10k".
	ID       string `yaml:"-"`
	Name     string `yaml:"name"`
	Category string `yaml:"category"`
	Doc      string `yaml:"doc"`
	Server   Server `yaml:"server"`
	// Run is the ClientDriver RunRequest (protobuf JSON with proto field
	// names, target left out). $CLIENT, $CHANNEL, $ROOM, $USER, $CASE are
	// replaced per run.
	Run map[string]any `yaml:"run"`
	// Subscribers is how many Run calls the harness makes at once (fan-out);
	// session i gets $CLIENT = "<client id>-<i>".
	Subscribers int `yaml:"subscribers"`
	// Steps are the harness's own actions, in order, while the Runs go on.
	Steps   []Step   `yaml:"steps"`
	Expect  []Expect `yaml:"expect"`
	Timeout Duration `yaml:"timeout"`
	// UnderLoad: the case is also run while ghz drives the named load
	// profile against the server (as "under-load/<name>").
	UnderLoad string `yaml:"under_load"`
	// Clients/Servers limit the case to some implementations (globs); empty = all.
	Clients []string `yaml:"clients"`
	Servers []string `yaml:"servers"`
}

// Server is how the server under test is started for a case.
type Server struct {
	Flags []string `yaml:"flags"`
	// DataDir starts the server with --data-dir on the image's data dir.
	DataDir bool `yaml:"data_dir"`
	// Fresh gives the case its own server container (any case with a fault
	// gets one anyway).
	Fresh bool `yaml:"fresh"`
}

// Step is one harness action; exactly one field is set.
type Step struct {
	// WaitStreams waits until the server reports (GetConnectionStatus) this
	// many active streams for every session's client id.
	WaitStreams *int `yaml:"wait_streams"`
	// WaitReceived waits until every session has received this many log
	// events (sequence > 0) or, for other streams, messages.
	WaitReceived int `yaml:"wait_received"`
	// WaitConnected waits until every session reported connected{attempt >= N}.
	WaitConnected *int `yaml:"wait_connected"`
	// WaitDisconnected waits until every session reported this many disconnects.
	WaitDisconnected int `yaml:"wait_disconnected"`
	// WaitType waits until every session received a message of this type
	// (e.g. polystream.subscription_updated).
	WaitType string `yaml:"wait_type"`
	// WaitSent waits until every session reported sent{count >= N}.
	WaitSent     int  `yaml:"wait_sent"`
	WaitFinished bool `yaml:"wait_finished"`
	// Stop ends the client sessions (the harness cancels their Run calls;
	// the case then checks what was observed up to there).
	Stop bool `yaml:"stop"`
	// Start starts the client sessions here (default: before the first
	// step). The run may then use $PUBLISHED_ID_<n>, the id of the n-th event
	// published so far (1-based).
	Start   bool     `yaml:"start"`
	Publish *Publish `yaml:"publish"`
	Fault   *Fault   `yaml:"fault"`
	Sleep   Duration `yaml:"sleep"`
	// Within bounds a wait step (default: the case's timeout).
	Within Duration `yaml:"within"`
}

// Publish makes the harness Broadcast events to the server.
type Publish struct {
	Count       int      `yaml:"count"`
	Type        string   `yaml:"type"`
	Channels    []string `yaml:"channels"`
	DataBytes   int      `yaml:"data_bytes"`
	Concurrency int      `yaml:"concurrency"`
	// Interval between events (0 = as fast as the server answers).
	Interval Duration `yaml:"interval"`
	// Async: the step returns at once; later wait steps and the end of the
	// case wait for it.
	Async bool `yaml:"async"`
	// Metadata on every event.
	Metadata map[string]string `yaml:"metadata"`
	// ID is the publisher-supplied event id (variables allowed); only
	// with count 1.
	ID string `yaml:"id"`
	// UntilReceived publishes one event at a time (Count is then the most
	// tries) until every session received one of them, waiting Wait for
	// each: a sentinel that flushes a pending drop marker even if an
	// earlier sentinel was itself dropped.
	UntilReceived bool     `yaml:"until_received"`
	Wait          Duration `yaml:"wait"`
	// Excluded events are not meant for the subscribers (another channel, a
	// filtered-out type): they are not in the expected sequence.
	Excluded bool `yaml:"excluded"`
}

// Fault is injected into the server container.
type Fault struct {
	// Kind: restart (docker stop, then start), kill (SIGKILL, then start),
	// graceful (SIGTERM stop without restart), start, pause (for Duration,
	// then unpause), disconnect (from the run's network for Duration, then
	// reconnect).
	Kind     string   `yaml:"kind"`
	Duration Duration `yaml:"duration"`
	// Down keeps the server stopped this long before starting it again.
	Down Duration `yaml:"down"`
}

// Expect is one check: Kind names a function in package checks.
type Expect struct {
	Kind   string
	Params Params
}

// UnmarshalYAML reads `- kind: {params}` (or `- kind` alone).
func (e *Expect) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		e.Kind = n.Value
		return nil
	}
	if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
		return fmt.Errorf("line %d: an expectation is `- kind: {params}` with one kind", n.Line)
	}
	e.Kind = n.Content[0].Value
	if n.Content[1].Kind == yaml.ScalarNode && n.Content[1].Value == "" {
		return nil
	}
	// `headers: {key: value}` / `trailers: {key: value}`: the mapping is the
	// metadata itself (value "*" = any value).
	switch e.Kind {
	case "headers":
		return n.Content[1].Decode(&e.Params.Headers)
	case "trailers":
		return n.Content[1].Decode(&e.Params.Trailers)
	}
	if n.Content[1].Kind == yaml.MappingNode {
		known := map[string]bool{}
		t := reflect.TypeOf(Params{})
		for i := 0; i < t.NumField(); i++ {
			known[t.Field(i).Tag.Get("yaml")] = true
		}
		for i := 0; i < len(n.Content[1].Content); i += 2 {
			if k := n.Content[1].Content[i]; !known[k.Value] {
				return fmt.Errorf("line %d: %s: unknown parameter %q", k.Line, e.Kind, k.Value)
			}
		}
	}
	return n.Content[1].Decode(&e.Params)
}

// Params are the parameters any check may take; each check reads its own.
type Params struct {
	Code            string            `yaml:"code"`
	Codes           []string          `yaml:"codes"`
	Message         *string           `yaml:"message"`
	MessageContains string            `yaml:"message_contains"`
	Count           *int              `yaml:"count"`
	Min             *int              `yaml:"min"`
	Max             *int              `yaml:"max"`
	Streams         *int              `yaml:"streams"`
	Within          Duration          `yaml:"within"`
	AtLeast         Duration          `yaml:"at_least"`
	AtMost          Duration          `yaml:"at_most"`
	Interval        Duration          `yaml:"interval"`
	Tolerance       Duration          `yaml:"tolerance"`
	Method          string            `yaml:"method"`
	Fields          map[string]string `yaml:"fields"`
	Type            string            `yaml:"type"`
	Types           []string          `yaml:"types"`
	BaseMS          int               `yaml:"base_ms"`
	MaxMS           int               `yaml:"max_ms"`
	Multiplier      float64           `yaml:"multiplier"`
	Jitter          float64           `yaml:"jitter"`
	MaxMB           float64           `yaml:"max_mb"`
	Headers         map[string]string `yaml:"headers"`
	Trailers        map[string]string `yaml:"trailers"`
	// From is the first published event (1-based) a session must receive.
	From int `yaml:"from"`
}

// KnownFailing is one entry of known_failing.yaml.
type KnownFailing struct {
	Case   string `yaml:"case"`
	Client string `yaml:"client"`
	Server string `yaml:"server"`
	Reason string `yaml:"reason"`
}

// Matches reports whether the entry covers the case for the pair.
func (k KnownFailing) Matches(caseID, client, server string) bool {
	m := func(pat, s string) bool {
		if pat == "" {
			return true
		}
		ok, _ := path.Match(pat, s)
		return ok
	}
	return m(k.Case, caseID) && m(k.Client, client) && m(k.Server, server)
}

// LoadProfile is a ghz load profile run in the background of a case.
type LoadProfile struct {
	Name        string            `yaml:"name"`
	Call        string            `yaml:"call"`
	Data        map[string]any    `yaml:"data"`
	Metadata    map[string]string `yaml:"metadata"`
	Concurrency uint              `yaml:"concurrency"`
	Connections uint              `yaml:"connections"`
	RPS         uint              `yaml:"rps"`
	Total       uint              `yaml:"total"`
	Duration    Duration          `yaml:"duration"`
	Timeout     Duration          `yaml:"timeout"`
	// StreamCallDuration ends each streaming call after this long.
	StreamCallDuration Duration `yaml:"stream_call_duration"`
	// MaxErrorRate fails the load report when more calls fail (0..1).
	MaxErrorRate float64 `yaml:"max_error_rate"`
}

// SelfTest makes cases run against servers started with --fault <Fault>,
// or against client drivers started with --fault <ClientFault>; each case
// must fail there. Cases are case ids or "under-load/<name>" variants.
type SelfTest struct {
	Fault       string   `yaml:"fault"`
	ClientFault string   `yaml:"client_fault"`
	Cases       []string `yaml:"cases"`
}

// Name is the fault as it appears in self-test case ids.
func (t SelfTest) Name() string {
	if t.ClientFault != "" {
		return "client-" + t.ClientFault
	}
	return t.Fault
}

// Suite is everything the matrix runs.
type Suite struct {
	Implementations []Implementation
	Cases           []*Case
	KnownFailing    []KnownFailing
	LoadProfiles    map[string]*LoadProfile
	SelfTests       []SelfTest
}

// Case returns the case with this id, or nil.
func (s *Suite) Case(id string) *Case {
	for _, c := range s.Cases {
		if c.ID == id {
			return c
		}
	}
	return nil
}

// UnderLoadPrefix starts the ids of the cases' under-load variants.
const UnderLoadPrefix = "under-load/"

// UnderLoadID is the id of c's under-load variant.
func UnderLoadID(c *Case) string { return UnderLoadPrefix + c.Name }

// Lookup finds a case id or an under-load variant's id: the case and, for a
// variant, its load profile.
func (s *Suite) Lookup(id string) (*Case, *LoadProfile) {
	if c := s.Case(id); c != nil {
		return c, nil
	}
	for _, c := range s.Cases {
		if c.UnderLoad != "" && UnderLoadID(c) == id {
			return c, s.LoadProfiles[c.UnderLoad]
		}
	}
	return nil, nil
}

// RunIDs lists every id the matrix runs: each case, then each under-load variant.
func (s *Suite) RunIDs() []string {
	var ids []string
	for _, c := range s.Cases {
		ids = append(ids, c.ID)
	}
	for _, c := range s.Cases {
		if c.UnderLoad != "" {
			ids = append(ids, UnderLoadID(c))
		}
	}
	return ids
}

// Load reads the suite from dir (the conformance/ directory).
func Load(dir string) (*Suite, error) {
	s := &Suite{LoadProfiles: map[string]*LoadProfile{}}
	var impls struct {
		Implementations []Implementation `yaml:"implementations"`
	}
	if err := readYAML(filepath.Join(dir, "implementations.yaml"), &impls); err != nil {
		return nil, err
	}
	s.Implementations = impls.Implementations
	for _, im := range s.Implementations {
		if im.Name == "" || im.Image == "" {
			return nil, fmt.Errorf("implementations.yaml: every entry needs name and image")
		}
		for _, e := range []*Endpoint{im.Server, im.Driver} {
			if e != nil && (len(e.Command) == 0 && e.Port == 0) {
				return nil, fmt.Errorf("implementations.yaml: %s: endpoint needs a port", im.Name)
			}
		}
	}
	var kf struct {
		KnownFailing []KnownFailing `yaml:"known_failing"`
	}
	if err := readYAML(filepath.Join(dir, "known_failing.yaml"), &kf); err != nil {
		return nil, err
	}
	for _, k := range kf.KnownFailing {
		if k.Reason == "" || k.Case == "" {
			return nil, fmt.Errorf("known_failing.yaml: every entry needs case and reason")
		}
	}
	s.KnownFailing = kf.KnownFailing
	var lp struct {
		Profiles []*LoadProfile `yaml:"profiles"`
	}
	if err := readYAML(filepath.Join(dir, "load.yaml"), &lp); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, p := range lp.Profiles {
		s.LoadProfiles[p.Name] = p
	}
	files, _ := filepath.Glob(filepath.Join(dir, "cases", "*.yaml"))
	sort.Strings(files)
	seen := map[string]bool{}
	for _, f := range files {
		var cf struct {
			Cases []*Case `yaml:"cases"`
		}
		if err := readYAML(f, &cf); err != nil {
			return nil, err
		}
		stem := strings.TrimSuffix(filepath.Base(f), ".yaml")
		for _, c := range cf.Cases {
			if c.Name == "" {
				return nil, fmt.Errorf("%s: a case without a name", f)
			}
			c.ID = stem + "/" + c.Name
			if c.Category == "" {
				c.Category = stem
			}
			if seen[c.ID] {
				return nil, fmt.Errorf("%s: case %s defined twice", f, c.ID)
			}
			seen[c.ID] = true
			if c.Run == nil {
				return nil, fmt.Errorf("%s: case %s has no run", f, c.ID)
			}
			if len(c.Expect) == 0 {
				return nil, fmt.Errorf("%s: case %s checks nothing", f, c.ID)
			}
			if c.Timeout == 0 {
				c.Timeout = Duration(30 * time.Second)
			}
			if c.Subscribers == 0 {
				c.Subscribers = 1
			}
			if c.UnderLoad != "" && s.LoadProfiles[c.UnderLoad] == nil {
				return nil, fmt.Errorf("%s: case %s: no load profile %q in load.yaml", f, c.ID, c.UnderLoad)
			}
			s.Cases = append(s.Cases, c)
		}
	}
	if len(s.Cases) == 0 {
		return nil, fmt.Errorf("no cases under %s", filepath.Join(dir, "cases"))
	}
	var st struct {
		SelfTests []SelfTest `yaml:"selftests"`
	}
	if err := readYAML(filepath.Join(dir, "selftest.yaml"), &st); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, t := range st.SelfTests {
		if (t.Fault == "") == (t.ClientFault == "") {
			return nil, fmt.Errorf("selftest.yaml: every entry needs exactly one of fault and client_fault (%q, %q)", t.Fault, t.ClientFault)
		}
		for _, id := range t.Cases {
			if c, _ := s.Lookup(id); c == nil {
				return nil, fmt.Errorf("selftest.yaml: fault %s: no case %s", t.Name(), id)
			}
		}
	}
	s.SelfTests = st.SelfTests
	return s, nil
}

// StartStep is the index of the step that starts the sessions (0 = before
// the first step).
func (c *Case) StartStep() int {
	for i, st := range c.Steps {
		if st.Start {
			return i
		}
	}
	return 0
}

// HasFault reports whether a step injects a fault (the case then needs its
// own server container).
func (c *Case) HasFault() bool {
	for _, st := range c.Steps {
		if st.Fault != nil {
			return true
		}
	}
	return false
}

// Applies reports whether the case runs for this client and server.
func (c *Case) Applies(client, server string) bool {
	in := func(pats []string, s string) bool {
		if len(pats) == 0 {
			return true
		}
		for _, p := range pats {
			if ok, _ := path.Match(p, s); ok {
				return true
			}
		}
		return false
	}
	return in(c.Clients, client) && in(c.Servers, server)
}

func readYAML(file string, v any) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}
