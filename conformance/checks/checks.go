// Package checks holds one plain function per kind of expectation a case may
// list (`expect:` in cases/*.yaml). A check gets what the client sessions
// observed, what the harness published and a view of the server (what it
// reports about itself), and says pass or fail with what it expected and what
// it saw. Checks neither start containers nor write reports.
package checks

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/polystream/polystream/conformance/config"
	"github.com/polystream/polystream/conformance/driver"
	"github.com/polystream/polystream/conformance/probe"
)

// Server is what a check may ask the server under test.
type Server interface {
	// WaitStreams polls until every id has want active streams or within
	// passes; it returns the last counts seen.
	WaitStreams(ctx context.Context, ids []string, want int, within time.Duration) (map[string]int, error)
	Logs(ctx context.Context, lines int) ([]probe.LogRecord, error)
	MemoryBytes(ctx context.Context) (uint64, error)
}

// Input is everything a check may look at.
type Input struct {
	Case      *config.Case
	StartedAt time.Time
	ClientIDs []string
	Sessions  []driver.Observations
	// Published are the events the harness published, sorted by sequence.
	Published []probe.Published
	// PublishSpans is how long each publish step took.
	PublishSpans []time.Duration
	// Faults are the faults injected, with when they started and ended.
	Faults []FaultWindow
	Server Server
}

// FaultWindow is one injected fault: for pause (disconnect), from the pause
// until the harness starts the unpause (reconnect).
type FaultWindow struct {
	Kind       string
	Start, End time.Time
}

// Result is one check's outcome.
type Result struct {
	Kind     string
	Pass     bool
	Expected string
	Seen     string
}

// Func is a check.
type Func func(ctx context.Context, in *Input, p config.Params) Result

// Registry maps an expectation's kind to its check.
var Registry = map[string]Func{
	"status":          Status,
	"sequence":        Sequence,
	"server_streams":  ServerStreams,
	"server_rpc_log":  ServerRPCLog,
	"elapsed":         Elapsed,
	"reconnects":      Reconnects,
	"backoff":         Backoff,
	"no_retry":        NoRetry,
	"drops":           Drops,
	"heartbeats":      Heartbeats,
	"echo":            Echo,
	"response":        Response,
	"headers":         Headers,
	"trailers":        Trailers,
	"memory":          Memory,
	"no_disconnect":   NoDisconnect,
	"received_type":   ReceivedType,
	"received":        ReceivedCount,
	"publish_blocked": PublishBlocked,
	"query_batches":   QueryBatches,
	"disconnect":      Disconnect,
	"held_back":       HeldBack,
	"send_paced":      SendPaced,
	"job_progress":    JobProgress,
}

// Run evaluates one expectation.
func Run(ctx context.Context, in *Input, e config.Expect) Result {
	f, ok := Registry[e.Kind]
	if !ok {
		return Result{Kind: e.Kind, Expected: "a known check kind", Seen: "unknown check " + strconv.Quote(e.Kind)}
	}
	r := f(ctx, in, e.Params)
	r.Kind = e.Kind
	return r
}

func pass(exp, seen string) Result { return Result{Pass: true, Expected: exp, Seen: seen} }
func fail(exp, seen string) Result { return Result{Pass: false, Expected: exp, Seen: seen} }

// each runs f on every session and fails on the first failing one.
func each(in *Input, exp string, f func(i int, o *driver.Observations) (bool, string)) Result {
	var seen []string
	for i := range in.Sessions {
		ok, s := f(i, &in.Sessions[i])
		if len(in.Sessions) > 1 {
			s = fmt.Sprintf("session %d: %s", i+1, s)
		}
		if !ok {
			return fail(exp, s)
		}
		seen = append(seen, s)
	}
	return pass(exp, strings.Join(seen, "; "))
}

func runErr(o *driver.Observations) (bool, string) {
	if o.Finished == nil {
		if o.RunErr != nil {
			return true, "driver error: " + o.RunErr.Error()
		}
		return true, "no finished observation"
	}
	return false, ""
}

// Status: the client's final status (code, or one of codes; message exact or
// containing a text).
func Status(_ context.Context, in *Input, p config.Params) Result {
	codes := p.Codes
	if p.Code != "" {
		codes = append(codes, p.Code)
	}
	exp := "status " + strings.Join(codes, "|")
	if p.Message != nil {
		exp += fmt.Sprintf(" message %q", *p.Message)
	}
	if p.MessageContains != "" {
		exp += fmt.Sprintf(" message containing %q", p.MessageContains)
	}
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		if bad, s := runErr(o); bad {
			return false, s
		}
		f := o.Finished
		seen := fmt.Sprintf("status %s message %q", f.GetCode(), f.GetMessage())
		ok := len(codes) == 0
		for _, c := range codes {
			if c == f.GetCode() {
				ok = true
			}
		}
		if p.Message != nil && f.GetMessage() != *p.Message {
			ok = false
		}
		if p.MessageContains != "" && !strings.Contains(f.GetMessage(), p.MessageContains) {
			ok = false
		}
		return ok, seen
	})
}

// logSeqs returns the sequences (> 0) a session received, in order.
func logSeqs(o *driver.Observations) []uint64 {
	var out []uint64
	for _, r := range o.Received {
		if r.GetSequence() > 0 {
			out = append(out, r.GetSequence())
		}
	}
	return out
}

// compareSeqs checks got against want exactly: same order, no gap, no dup.
func compareSeqs(want, got []uint64) (bool, string) {
	seen := map[uint64]int{}
	dups := 0
	for _, s := range got {
		seen[s]++
		if seen[s] == 2 {
			dups++
		}
	}
	missing := 0
	firstMissing := uint64(0)
	for _, s := range want {
		if seen[s] == 0 {
			if missing == 0 {
				firstMissing = s
			}
			missing++
		}
	}
	for i := 0; i < len(want) && i < len(got); i++ {
		if want[i] != got[i] {
			return false, fmt.Sprintf("%d received; first difference at #%d: sequence %d where %d was due; %d missing (first %d), %d duplicated",
				len(got), i+1, got[i], want[i], missing, firstMissing, dups)
		}
	}
	if len(got) != len(want) {
		return false, fmt.Sprintf("%d received of %d; %d missing (first %d), %d duplicated", len(got), len(want), missing, firstMissing, dups)
	}
	if len(got) == 0 {
		return true, "0 received"
	}
	return true, fmt.Sprintf("%d in order (%d..%d), no gap, no duplicate", len(got), got[0], got[len(got)-1])
}

// Sequence: every session received exactly the published events, in
// sequence order, no gap, no duplicate. Without published events (chat,
// query, updates streams) the stream's own numbering must be 1..count.
func Sequence(_ context.Context, in *Input, p config.Params) Result {
	var want []uint64
	if len(in.Published) > 0 {
		from := 0
		if p.From > 0 {
			from = p.From - 1
		}
		if from > len(in.Published) {
			from = len(in.Published)
		}
		for _, e := range in.Published[from:] {
			want = append(want, e.Sequence)
		}
		if p.Count != nil && *p.Count != len(want) {
			return fail(fmt.Sprintf("%d events due", *p.Count), fmt.Sprintf("the harness published %d due", len(want)))
		}
	} else if p.Count != nil {
		for i := 1; i <= *p.Count; i++ {
			want = append(want, uint64(i))
		}
	}
	exp := fmt.Sprintf("the %d published sequences in order, no gap, no duplicate", len(want))
	if len(in.Published) == 0 {
		exp = fmt.Sprintf("sequences 1..%d in order, no gap, no duplicate", len(want))
	}
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		if o.Finished == nil && o.RunErr != nil {
			return false, "driver error: " + o.RunErr.Error()
		}
		return compareSeqs(want, logSeqs(o))
	})
}

// ServerStreams: the server reports `streams` (default 0) active streams for
// every session's client id within `within` (default 5s): a cancelled or
// finished call's resources are released on the server.
func ServerStreams(ctx context.Context, in *Input, p config.Params) Result {
	want := 0
	if p.Streams != nil {
		want = *p.Streams
	}
	within := p.Within.D()
	if within == 0 {
		within = 5 * time.Second
	}
	exp := fmt.Sprintf("server reports %d active streams per client within %v", want, within)
	start := time.Now()
	seen, err := in.Server.WaitStreams(ctx, in.ClientIDs, want, within)
	took := time.Since(start).Round(time.Millisecond)
	var parts []string
	ok := err == nil
	ids := append([]string(nil), in.ClientIDs...)
	sort.Strings(ids)
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%s=%d", id, seen[id]))
		if seen[id] != want {
			ok = false
		}
	}
	s := fmt.Sprintf("active_streams %s after %v", strings.Join(parts, ","), took)
	if err != nil {
		s += " (GetConnectionStatus: " + err.Error() + ")"
	}
	return Result{Pass: ok, Expected: exp, Seen: s}
}

// ServerRPCLog: the server's own log (TailLogs) has an `rpc` record for the
// method (a suffix such as "/Subscribe") with a code among codes, written
// after the case started: the server saw the call end that way.
func ServerRPCLog(ctx context.Context, in *Input, p config.Params) Result {
	codes := p.Codes
	if p.Code != "" {
		codes = append(codes, p.Code)
	}
	within := p.Within.D()
	if within == 0 {
		within = 5 * time.Second
	}
	exp := fmt.Sprintf("server logs rpc %s with code %s within %v", p.Method, strings.Join(codes, "|"), within)
	deadline := time.Now().Add(within)
	var last string
	for {
		recs, err := in.Server.Logs(ctx, 1000)
		if err != nil {
			last = "TailLogs: " + err.Error()
		} else {
			var got []string
			for _, r := range recs {
				if r.Message != "rpc" || !strings.HasSuffix(r.Fields["method"], p.Method) {
					continue
				}
				if r.At.Before(in.StartedAt.Add(-2 * time.Second)) {
					continue // an earlier case's call (2 s allow for clock skew)
				}
				got = append(got, r.Fields["code"])
				for _, c := range codes {
					if strings.EqualFold(r.Fields["code"], c) {
						return pass(exp, fmt.Sprintf("rpc %s code %s", r.Fields["method"], r.Fields["code"]))
					}
				}
			}
			last = fmt.Sprintf("rpc records for %s since the case started: codes %v", p.Method, got)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fail(exp, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Elapsed: the call finished between at_least and at_most after it started
// (deadlines, heartbeats, shutdown bounds).
func Elapsed(_ context.Context, in *Input, p config.Params) Result {
	exp := fmt.Sprintf("finished after %v..%v", p.AtLeast.D(), p.AtMost.D())
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		if bad, s := runErr(o); bad {
			return false, s
		}
		d := o.FinishedAt.Sub(o.StartedAt)
		ok := d >= p.AtLeast.D() && (p.AtMost == 0 || d <= p.AtMost.D())
		return ok, fmt.Sprintf("finished after %v", d.Round(time.Millisecond))
	})
}

// Reconnects: the number of reconnections (connected with attempt > 0) is
// between min and max.
func Reconnects(_ context.Context, in *Input, p config.Params) Result {
	exp := "reconnections " + bounds(p.Min, p.Max)
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		n := 0
		for _, c := range o.Connected {
			if c.GetAttempt() > 0 {
				n++
			}
		}
		return within(n, p.Min, p.Max), fmt.Sprintf("%d reconnections, %d disconnections", n, len(o.Disconnected))
	})
}

func bounds(min, max *int) string {
	switch {
	case min != nil && max != nil:
		return fmt.Sprintf("%d..%d", *min, *max)
	case min != nil:
		return fmt.Sprintf(">= %d", *min)
	case max != nil:
		return fmt.Sprintf("<= %d", *max)
	}
	return "any"
}

func within(n int, min, max *int) bool {
	return (min == nil || n >= *min) && (max == nil || n <= *max)
}

// Backoff: every retry delay the client announced lies within the configured
// exponential bounds — retry k (0-based, counted since the last successful
// connection) waits between base*mult^k*(1-jitter) and
// min(max, base*mult^k)*(1+jitter) — and the client really waited: its next
// observation comes no earlier than the delay (less tolerance). min (default
// 1) is how many retries must be seen: with one, only the base delay is
// checked, so a client whose delays never grow would pass.
func Backoff(_ context.Context, in *Input, p config.Params) Result {
	mult := p.Multiplier
	if mult == 0 {
		mult = 2
	}
	tol := p.Tolerance.D()
	if tol == 0 {
		tol = 50 * time.Millisecond
	}
	minRetries := 1
	if p.Min != nil {
		minRetries = *p.Min
	}
	exp := fmt.Sprintf("retry k waits min(max %dms, base %dms × %.1f^k) × (1 ± %.0f%% jitter); at least %d retries", p.MaxMS, p.BaseMS, mult, p.Jitter*100, minRetries)
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		k := 0
		retries := 0
		var delays []string
		for i, ob := range o.All {
			if ob.O.GetConnected() != nil && ob.O.GetConnected().GetAttempt() > 0 {
				k = 0
				continue
			}
			d := ob.O.GetDisconnected()
			if d == nil || !d.GetWillRetry() {
				continue
			}
			retries++
			ideal := float64(p.BaseMS) * math.Pow(mult, float64(k))
			lo := math.Min(ideal, float64(p.MaxMS)) * (1 - p.Jitter)
			hi := math.Min(ideal, float64(p.MaxMS)) * (1 + p.Jitter)
			delays = append(delays, fmt.Sprintf("%dms", d.GetDelayMs()))
			if float64(d.GetDelayMs()) < lo-1 || float64(d.GetDelayMs()) > hi+1 {
				return false, fmt.Sprintf("retry %d announced delay %dms, outside %.0f..%.0fms (delays %s)", k+1, d.GetDelayMs(), lo, hi, strings.Join(delays, ","))
			}
			if i+1 < len(o.All) {
				gap := obsTime(o.All[i+1]).Sub(obsTime(ob))
				if gap+tol < time.Duration(d.GetDelayMs())*time.Millisecond {
					return false, fmt.Sprintf("retry %d announced %dms but the next observation came after %v", k+1, d.GetDelayMs(), gap.Round(time.Millisecond))
				}
			}
			k++
		}
		if retries == 0 {
			return false, "no retry announced (no disconnected{will_retry})"
		}
		if retries < minRetries {
			return false, fmt.Sprintf("%d retries (delays %s), fewer than %d", retries, strings.Join(delays, ","), minRetries)
		}
		return true, "delays " + strings.Join(delays, ",")
	})
}

// obsTime is when the client saw it (its own clock: same kernel as the
// harness), or when the harness got it.
func obsTime(o driver.Obs) time.Time {
	if n := o.O.GetAtUnixNanos(); n > 0 {
		return time.Unix(0, n)
	}
	return o.At
}

// NoRetry: the client did not retry (a non-retryable status): no
// disconnected{will_retry: true}, no reconnection.
func NoRetry(_ context.Context, in *Input, _ config.Params) Result {
	return each(in, "no retry, no reconnection", func(_ int, o *driver.Observations) (bool, string) {
		for _, d := range o.Disconnected {
			if d.GetWillRetry() {
				return false, fmt.Sprintf("retry announced after %s %q", d.GetCode(), d.GetMessage())
			}
		}
		if o.MaxAttempt() > 0 {
			return false, fmt.Sprintf("reconnected (attempt %d)", o.MaxAttempt())
		}
		return true, fmt.Sprintf("%d disconnections, none retried", len(o.Disconnected))
	})
}

// eventJSON is the part of an Event's protobuf JSON the checks read.
type eventJSON struct {
	ID       string            `json:"id"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata"`
	Sequence json.Number       `json:"sequence"`
}

func parseEvent(s string) eventJSON {
	var e eventJSON
	_ = json.Unmarshal([]byte(s), &e)
	return e
}

// Drops: under a dropping policy, every gap in what a session received is
// announced, at the gap's place, by polystream.dropped markers whose counts
// and first/last ids and sequences cover exactly the missing published events
// (one marker, or several in a row whose ranges follow each other: a marker
// already sent cannot absorb a later drop); with min set, at least that many
// events were dropped (the consumer really was too slow). Nothing is lost
// silently.
func Drops(_ context.Context, in *Input, p config.Params) Result {
	exp := "every gap announced by polystream.dropped markers covering exactly the missing events"
	if p.Min != nil {
		exp += fmt.Sprintf("; at least %d dropped", *p.Min)
	}
	idx := map[uint64]int{}
	for i, e := range in.Published {
		idx[e.Sequence] = i
	}
	// cover checks that markers cover Published[from:to] exactly, in order.
	cover := func(ms []eventJSON, from, to int) (bool, string) {
		at := from
		for _, m := range ms {
			md := m.Metadata
			n, err := strconv.Atoi(md["count"])
			if err != nil || n <= 0 || at+n > to {
				return false, fmt.Sprintf("marker count %q does not fit the gap of %d events (sequences %d..%d)", md["count"], to-from, in.Published[from].Sequence, in.Published[to-1].Sequence)
			}
			f, l := in.Published[at], in.Published[at+n-1]
			if md["first_dropped_sequence"] != fmt.Sprint(f.Sequence) || md["last_dropped_sequence"] != fmt.Sprint(l.Sequence) ||
				md["first_dropped_id"] != f.ID || md["last_dropped_id"] != l.ID {
				return false, fmt.Sprintf("marker says count=%s sequences %s..%s ids %s..%s; due: sequences %d..%d ids %s..%s",
					md["count"], md["first_dropped_sequence"], md["last_dropped_sequence"], md["first_dropped_id"], md["last_dropped_id"], f.Sequence, l.Sequence, f.ID, l.ID)
			}
			at += n
		}
		if at != to {
			if len(ms) == 0 {
				return false, fmt.Sprintf("%d events (sequences %d..%d) missing with no polystream.dropped marker", to-from, in.Published[from].Sequence, in.Published[to-1].Sequence)
			}
			return false, fmt.Sprintf("markers account for %d of the %d missing events (sequences %d..%d)", at-from, to-from, in.Published[from].Sequence, in.Published[to-1].Sequence)
		}
		return true, ""
	}
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		next := 0 // index in Published of the next due event
		dropped, markers := 0, 0
		var pending []eventJSON
		for _, r := range o.Received {
			if r.GetType() == "polystream.dropped" {
				pending = append(pending, parseEvent(r.GetJson()))
				continue
			}
			if r.GetSequence() == 0 {
				continue
			}
			i, ok := idx[r.GetSequence()]
			if !ok {
				return false, fmt.Sprintf("received sequence %d that the harness did not publish", r.GetSequence())
			}
			if i < next {
				return false, fmt.Sprintf("sequence %d out of order or duplicated", r.GetSequence())
			}
			if i > next || len(pending) > 0 {
				if ok, why := cover(pending, next, i); !ok {
					return false, fmt.Sprintf("before sequence %d: %s", r.GetSequence(), why)
				}
				dropped += i - next
				markers += len(pending)
			}
			pending = nil
			next = i + 1
		}
		if tail := len(in.Published) - next; tail > 0 {
			// A marker comes "before the next event": a gap at the very end
			// is only announced if its markers already arrived.
			if ok, why := cover(pending, next, len(in.Published)); !ok {
				return false, "at the end: " + why
			}
			dropped += tail
			markers += len(pending)
		}
		s := fmt.Sprintf("%d received, %d dropped in %d markers, all accounted for", o.LogCount(), dropped, markers)
		if p.Min != nil && dropped < *p.Min {
			return false, s
		}
		return true, s
	})
}

// Heartbeats: heartbeat events arrive every `interval` (± tolerance,
// measured on the harness's clock), at least `min` of them, numbered 1, 2, ...
func Heartbeats(_ context.Context, in *Input, p config.Params) Result {
	tol := p.Tolerance.D()
	if tol == 0 {
		tol = 400 * time.Millisecond
	}
	min := 2
	if p.Min != nil {
		min = *p.Min
	}
	exp := fmt.Sprintf("at least %d heartbeats, every %v ± %v", min, p.Interval.D(), tol)
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		var ats []time.Time
		var gaps []string
		for _, r := range o.Received {
			if r.GetType() != "heartbeat" {
				continue
			}
			if r.GetSequence() != 0 {
				return false, fmt.Sprintf("heartbeat with Event.sequence %d (heartbeats are not in the log)", r.GetSequence())
			}
			ats = append(ats, r.At)
		}
		for i := 1; i < len(ats); i++ {
			g := ats[i].Sub(ats[i-1])
			gaps = append(gaps, g.Round(10*time.Millisecond).String())
			if g < p.Interval.D()-tol || g > p.Interval.D()+tol {
				return false, fmt.Sprintf("%d heartbeats, gaps %s", len(ats), strings.Join(gaps, ","))
			}
		}
		return len(ats) >= min, fmt.Sprintf("%d heartbeats, gaps %s", len(ats), strings.Join(gaps, ","))
	})
}

// Echo: a bidi Chat echoed the client's messages "1".."count" in order, each
// once, with the stream's sequence increasing by one.
func Echo(_ context.Context, in *Input, p config.Params) Result {
	n := 0
	if p.Count != nil {
		n = *p.Count
	}
	exp := fmt.Sprintf("echoes of \"1\"..\"%d\" in order, sequences increasing by 1", n)
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		var contents []string
		var last uint64
		for _, r := range o.Received {
			var m struct {
				Content string `json:"content"`
				User    string `json:"user"`
				Type    string `json:"type"`
			}
			_ = json.Unmarshal([]byte(r.GetJson()), &m)
			if r.GetSequence() != 0 {
				if last != 0 && r.GetSequence() != last+1 {
					return false, fmt.Sprintf("stream sequence jumped from %d to %d", last, r.GetSequence())
				}
				last = r.GetSequence()
			}
			if !strings.Contains(r.GetType(), "CHAT") && !strings.Contains(m.Type, "CHAT") {
				continue
			}
			contents = append(contents, m.Content)
		}
		for i, c := range contents {
			if c != strconv.Itoa(i+1) {
				return false, fmt.Sprintf("echo #%d was %q (echoes so far: %s)", i+1, c, short(contents))
			}
		}
		if len(contents) != n {
			return false, fmt.Sprintf("%d echoes: %s", len(contents), short(contents))
		}
		return true, fmt.Sprintf("%d echoes in order", n)
	})
}

func short(ss []string) string {
	if len(ss) > 8 {
		return strings.Join(ss[:4], ",") + ",...," + strings.Join(ss[len(ss)-3:], ",")
	}
	return strings.Join(ss, ",")
}

// Response: fields of the unary / client-stream response (protobuf JSON,
// dotted paths) have the given values ("*" = present and not empty).
func Response(_ context.Context, in *Input, p config.Params) Result {
	exp := fmt.Sprintf("response %v", p.Fields)
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		if bad, s := runErr(o); bad {
			return false, s
		}
		var v any
		if err := json.Unmarshal([]byte(o.Finished.GetResponseJson()), &v); err != nil {
			return false, fmt.Sprintf("response_json %q: %v", o.Finished.GetResponseJson(), err)
		}
		for k, want := range p.Fields {
			got, ok := lookup(v, k)
			want = substitute(want, in)
			if !ok && (want == "0" || want == "false") {
				ok, got = true, want // protobuf JSON leaves zero values out
			}
			if !ok || (want == "*" && got == "") || (want != "*" && got != want) {
				return false, fmt.Sprintf("%s = %q in %s", k, got, o.Finished.GetResponseJson())
			}
		}
		return true, o.Finished.GetResponseJson()
	})
}

func lookup(v any, dotted string) (string, bool) {
	for _, part := range strings.Split(dotted, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		v, ok = m[part]
		if !ok {
			return "", false
		}
	}
	switch x := v.(type) {
	case string:
		return x, true
	case nil:
		return "", true
	default:
		b, _ := json.Marshal(x)
		return string(b), true
	}
}

func mdCheck(kind string, want map[string]string, get func(*driver.Observations) map[string]string) func(context.Context, *Input, config.Params) Result {
	return func(_ context.Context, in *Input, _ config.Params) Result {
		exp := fmt.Sprintf("%s include %v", kind, want)
		return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
			if bad, s := runErr(o); bad {
				return false, s
			}
			got := get(o)
			for k, w := range want {
				g, ok := got[strings.ToLower(k)]
				if !ok {
					g, ok = got[k]
				}
				if !ok || (w != "*" && g != w) {
					return false, fmt.Sprintf("%s: %v", kind, got)
				}
			}
			return true, fmt.Sprintf("%s: %v", kind, got)
		})
	}
}

// Headers: the response headers the client saw include these (value "*" =
// any value).
func Headers(ctx context.Context, in *Input, p config.Params) Result {
	return mdCheck("headers", p.Headers, func(o *driver.Observations) map[string]string { return o.Finished.GetHeaders() })(ctx, in, p)
}

// Trailers: the trailers the client saw include these.
func Trailers(ctx context.Context, in *Input, p config.Params) Result {
	return mdCheck("trailers", p.Trailers, func(o *driver.Observations) map[string]string { return o.Finished.GetTrailers() })(ctx, in, p)
}

// Memory: the server container's memory (Docker's stats, less page cache),
// at its peak while the case ran (sampled by the runner), stays under max_mb.
func Memory(ctx context.Context, in *Input, p config.Params) Result {
	exp := fmt.Sprintf("server memory at its peak <= %.0f MiB", p.MaxMB)
	b, err := in.Server.MemoryBytes(ctx)
	if err != nil {
		return fail(exp, "docker stats: "+err.Error())
	}
	mb := float64(b) / (1 << 20)
	return Result{Pass: mb <= p.MaxMB, Expected: exp, Seen: fmt.Sprintf("%.1f MiB", mb)}
}

// NoDisconnect: the client never lost its connection (keepalive: no GOAWAY
// too_many_pings, no keepalive timeout).
func NoDisconnect(_ context.Context, in *Input, _ config.Params) Result {
	return each(in, "no disconnection, no reconnection", func(_ int, o *driver.Observations) (bool, string) {
		if len(o.Disconnected) > 0 {
			d := o.Disconnected[0]
			return false, fmt.Sprintf("disconnected: %s %q", d.GetCode(), d.GetMessage())
		}
		if o.MaxAttempt() > 0 {
			return false, fmt.Sprintf("reconnected (attempt %d)", o.MaxAttempt())
		}
		if o.Finished != nil && strings.Contains(strings.ToLower(o.Finished.GetMessage()), "too_many_pings") {
			return false, "finished: " + o.Finished.GetMessage()
		}
		return true, "connection held"
	})
}

// ReceivedType: messages of a type (glob) were received, count between
// min and max; with fields, the first such message's JSON has these values.
func ReceivedType(_ context.Context, in *Input, p config.Params) Result {
	exp := fmt.Sprintf("%s messages %s", p.Type, bounds(p.Min, p.Max))
	if len(p.Fields) > 0 {
		exp += fmt.Sprintf(" with %v", p.Fields)
	}
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		n := 0
		var first string
		for _, r := range o.Received {
			if ok, _ := path.Match(p.Type, r.GetType()); ok {
				if n == 0 {
					first = r.GetJson()
				}
				n++
			}
		}
		s := fmt.Sprintf("%d %s messages", n, p.Type)
		if !within(n, p.Min, p.Max) {
			return false, s
		}
		if n > 0 && len(p.Fields) > 0 {
			var v any
			_ = json.Unmarshal([]byte(first), &v)
			for k, want := range p.Fields {
				got, ok := lookup(v, k)
				want = substitute(want, in)
				if !ok || (want == "*" && got == "") || (want != "*" && got != want) {
					return false, fmt.Sprintf("%s; first: %s = %q (%s)", s, k, got, first)
				}
			}
		}
		return true, s
	})
}

// substitute fills $PUBLISHED_FIRST_ID / $PUBLISHED_LAST_ID.
func substitute(s string, in *Input) string {
	if len(in.Published) == 0 {
		return s
	}
	s = strings.ReplaceAll(s, "$PUBLISHED_FIRST_ID", in.Published[0].ID)
	s = strings.ReplaceAll(s, "$PUBLISHED_FIRST_SEQ", fmt.Sprint(in.Published[0].Sequence))
	return strings.ReplaceAll(s, "$PUBLISHED_LAST_ID", in.Published[len(in.Published)-1].ID)
}

// ReceivedCount: the number of received messages (any kind) is between min
// and max.
func ReceivedCount(_ context.Context, in *Input, p config.Params) Result {
	return each(in, "received "+bounds(p.Min, p.Max), func(_ int, o *driver.Observations) (bool, string) {
		return within(len(o.Received), p.Min, p.Max), fmt.Sprintf("%d received", len(o.Received))
	})
}

// PublishBlocked: the harness's publishing took at least at_least (BLOCK
// policy: a slow subscriber holds the publisher back).
func PublishBlocked(_ context.Context, in *Input, p config.Params) Result {
	exp := fmt.Sprintf("publishing held back for at least %v", p.AtLeast.D())
	var total time.Duration
	for _, d := range in.PublishSpans {
		total += d
	}
	return Result{Pass: total >= p.AtLeast.D(), Expected: exp, Seen: fmt.Sprintf("publishing took %v", total.Round(time.Millisecond))}
}

// QueryBatches: StreamQueryResults sent `count` batches numbered 1..count
// with total_batches = count and only the last is_last, holding `min` rows
// in all (when set).
func QueryBatches(_ context.Context, in *Input, p config.Params) Result {
	want := 0
	if p.Count != nil {
		want = *p.Count
	}
	exp := fmt.Sprintf("%d batches numbered 1..%d, is_last only on the last", want, want)
	if p.Min != nil {
		exp += fmt.Sprintf(", %d rows", *p.Min)
	}
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		rows := 0
		for i, r := range o.Received {
			var q struct {
				Rows         []json.RawMessage `json:"rows"`
				BatchNumber  int               `json:"batch_number"`
				TotalBatches int               `json:"total_batches"`
				IsLast       bool              `json:"is_last"`
			}
			_ = json.Unmarshal([]byte(r.GetJson()), &q)
			rows += len(q.Rows)
			if q.BatchNumber != i+1 || q.TotalBatches != want || q.IsLast != (i+1 == want) {
				return false, fmt.Sprintf("batch #%d: batch_number %d total_batches %d is_last %v", i+1, q.BatchNumber, q.TotalBatches, q.IsLast)
			}
		}
		s := fmt.Sprintf("%d batches, %d rows", len(o.Received), rows)
		if len(o.Received) != want || (p.Min != nil && rows != *p.Min) {
			return false, s
		}
		return true, s
	})
}

// JobProgress: WatchJobProgress numbered its updates 1, 2, ... (a watcher
// may miss intermediate states, never a sequence number), reported a
// non-decreasing percentage and ended with status `type` (e.g.
// JOB_STATUS_COMPLETED).
func JobProgress(_ context.Context, in *Input, p config.Params) Result {
	exp := "stream sequences 1, 2, ... with no gap; percentage never decreases; last status " + p.Type
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		last := -1.0
		status := ""
		for i, r := range o.Received {
			if r.GetSequence() != uint64(i+1) {
				return false, fmt.Sprintf("update #%d has stream sequence %d", i+1, r.GetSequence())
			}
			var j struct {
				Percentage float64 `json:"percentage"`
				Status     string  `json:"status"`
			}
			_ = json.Unmarshal([]byte(r.GetJson()), &j)
			if j.Percentage < last {
				return false, fmt.Sprintf("percentage went from %v to %v", last, j.Percentage)
			}
			last, status = j.Percentage, j.Status
		}
		s := fmt.Sprintf("%d updates, last %s at %v%%", len(o.Received), status, last)
		return status == p.Type, s
	})
}

// Disconnect: the client's first reported disconnection had this code (and
// message, exact or containing), e.g. UNAVAILABLE "server is shutting down".
func Disconnect(_ context.Context, in *Input, p config.Params) Result {
	codes := p.Codes
	if p.Code != "" {
		codes = append(codes, p.Code)
	}
	exp := "first disconnection " + strings.Join(codes, "|")
	if p.Message != nil {
		exp += fmt.Sprintf(" %q", *p.Message)
	}
	if p.MessageContains != "" {
		exp += fmt.Sprintf(" containing %q", p.MessageContains)
	}
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		if len(o.Disconnected) == 0 {
			return false, "no disconnection reported"
		}
		d := o.Disconnected[0]
		seen := fmt.Sprintf("%s %q (will_retry %v)", d.GetCode(), d.GetMessage(), d.GetWillRetry())
		ok := len(codes) == 0
		for _, c := range codes {
			ok = ok || c == d.GetCode()
		}
		if p.Message != nil && d.GetMessage() != *p.Message {
			ok = false
		}
		if p.MessageContains != "" && !strings.Contains(d.GetMessage(), p.MessageContains) {
			ok = false
		}
		return ok, seen
	})
}

// HeldBack: flow control holds a client-streaming sender back. While the
// server is frozen (the `pause` fault) it reads nothing, so the client can
// only fill the HTTP/2 window and the socket buffers: from `at_least` into the
// pause until the thaw, at most `max` messages are reported sent (observation
// times on the client's clock), and sending goes on after the thaw.
func HeldBack(_ context.Context, in *Input, p config.Params) Result {
	max := 0
	if p.Max != nil {
		max = *p.Max
	}
	var win *FaultWindow
	for i := range in.Faults {
		if in.Faults[i].Kind == "pause" {
			win = &in.Faults[i]
			break
		}
	}
	exp := fmt.Sprintf("at most %d messages sent from %v into the pause until the thaw", max, p.AtLeast.D())
	if win == nil {
		return fail(exp, "the case injected no pause")
	}
	from := win.Start.Add(p.AtLeast.D())
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		before, during, after := 0, 0, 0
		for _, x := range o.All {
			if x.O.GetSent() == nil {
				continue
			}
			t := obsTime(x)
			switch {
			case t.Before(from):
				before++
			case t.Before(win.End):
				during++
			default:
				after++
			}
		}
		s := fmt.Sprintf("sent %d before, %d while held, %d after the thaw", before, during, after)
		return during <= max && after > 0, s
	})
}

// SendPaced: flow control paces a client-streaming sender to a slow reader:
// from the first to the last message the client reports sent takes at least
// `at_least` (with unbounded windows it would all go at once).
func SendPaced(_ context.Context, in *Input, p config.Params) Result {
	exp := fmt.Sprintf("the sends spread over at least %v", p.AtLeast.D())
	return each(in, exp, func(_ int, o *driver.Observations) (bool, string) {
		var first, last time.Time
		n := 0
		for _, x := range o.All {
			if x.O.GetSent() == nil {
				continue
			}
			t := obsTime(x)
			if n == 0 {
				first = t
			}
			last = t
			n++
		}
		if n == 0 {
			return false, "no message reported sent"
		}
		span := last.Sub(first)
		return span >= p.AtLeast.D(), fmt.Sprintf("%d sends over %v", n, span.Round(time.Millisecond))
	})
}
