package runner

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/polystream/polystream/conformance/checks"
	"github.com/polystream/polystream/conformance/config"
	"github.com/polystream/polystream/conformance/driver"
	"github.com/polystream/polystream/conformance/probe"
)

// execution is one case in progress for one pair.
type execution struct {
	m        *matrix
	c        *config.Case
	srv      *serverHandle
	start    time.Time
	deadline time.Time
	ids      []string
	vars     map[string]string
	sessions []*driver.Session
	// startSessions starts the Run calls (at the case's start step).
	startSessions func() error

	mu        sync.Mutex
	wg        sync.WaitGroup
	published []probe.Published
	spans     []time.Duration
	faults    []checks.FaultWindow
	asyncErr  []string
}

func (x *execution) within(st config.Step) time.Duration {
	if st.Within > 0 {
		return st.Within.D()
	}
	if d := time.Until(x.deadline); d > 0 {
		return d
	}
	return time.Second
}

func (x *execution) sub(s string) string {
	for k, v := range x.vars {
		s = strings.ReplaceAll(s, k, v)
	}
	return s
}

// steps performs the case's steps in order; a step that fails ends them and
// is reported as a failed result (what the step waited for, what it saw).
func (x *execution) steps(ctx context.Context) []checks.Result {
	for i, st := range x.c.Steps {
		if st.Start {
			if len(x.sessions) == 0 {
				if err := x.startSessions(); err != nil {
					return []checks.Result{{Kind: "start", Expected: "the sessions start", Seen: err.Error()}}
				}
			}
			continue
		}
		r := x.step(ctx, st)
		if r != nil {
			r.Kind = fmt.Sprintf("step %d (%s)", i+1, r.Kind)
			x.wg.Wait()
			return []checks.Result{*r}
		}
	}
	x.wg.Wait()
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.asyncErr) > 0 {
		return []checks.Result{{Kind: "publish", Expected: "every Broadcast succeeds", Seen: strings.Join(x.asyncErr, "; ")}}
	}
	return nil
}

func (x *execution) step(ctx context.Context, st config.Step) *checks.Result {
	switch {
	case st.WaitStreams != nil:
		want := *st.WaitStreams
		seen, err := x.srv.probe.WaitStreams(ctx, x.ids, want, x.within(st))
		ok := err == nil
		for _, id := range x.ids {
			if seen[id] != want {
				ok = false
			}
		}
		if !ok {
			return &checks.Result{Kind: "wait_streams", Expected: fmt.Sprintf("server reports %d active streams per client", want), Seen: fmt.Sprintf("%v %v", seen, err)}
		}
	case st.WaitReceived > 0:
		return x.waitAll(ctx, st, "wait_received", fmt.Sprintf("%d messages received", st.WaitReceived),
			func(o *driver.Observations) bool { return o.LogCount() >= st.WaitReceived },
			func(o *driver.Observations) string { return fmt.Sprintf("%d received", o.LogCount()) })
	case st.WaitConnected != nil:
		n := *st.WaitConnected
		return x.waitAll(ctx, st, "wait_connected", fmt.Sprintf("connected attempt >= %d", n),
			func(o *driver.Observations) bool { return o.MaxAttempt() >= n },
			func(o *driver.Observations) string { return fmt.Sprintf("highest attempt %d", o.MaxAttempt()) })
	case st.WaitDisconnected > 0:
		n := st.WaitDisconnected
		return x.waitAll(ctx, st, "wait_disconnected", fmt.Sprintf("%d disconnections", n),
			func(o *driver.Observations) bool { return len(o.Disconnected) >= n },
			func(o *driver.Observations) string { return fmt.Sprintf("%d disconnections", len(o.Disconnected)) })
	case st.WaitType != "":
		typ := st.WaitType
		count := func(o *driver.Observations) int {
			n := 0
			for _, r := range o.Received {
				if r.GetType() == typ {
					n++
				}
			}
			return n
		}
		return x.waitAll(ctx, st, "wait_type", "a "+typ+" message received",
			func(o *driver.Observations) bool { return count(o) > 0 },
			func(o *driver.Observations) string {
				return fmt.Sprintf("%d %s, %d received in all", count(o), typ, len(o.Received))
			})
	case st.WaitSent > 0:
		n := st.WaitSent
		return x.waitAll(ctx, st, "wait_sent", fmt.Sprintf("%d messages sent", n),
			func(o *driver.Observations) bool { return o.SentCount() >= n },
			func(o *driver.Observations) string { return fmt.Sprintf("%d sent", o.SentCount()) })
	case st.WaitFinished:
		return x.waitAll(ctx, st, "wait_finished", "the call finished",
			func(o *driver.Observations) bool { return o.Finished != nil || o.RunErr != nil },
			func(o *driver.Observations) string { return fmt.Sprintf("still running, %d received", o.LogCount()) })
	case st.Publish != nil:
		p := st.Publish
		var chans []string
		for _, ch := range p.Channels {
			chans = append(chans, x.sub(ch))
		}
		spec := probe.PublishSpec{Count: p.Count, Type: p.Type, Channels: chans, DataBytes: p.DataBytes,
			Concurrency: p.Concurrency, Interval: p.Interval.D(), Metadata: p.Metadata, Tag: x.c.ID, ID: x.sub(p.ID)}
		run := func() error {
			t := time.Now()
			pubs, err := x.srv.probe.Publish(ctx, spec)
			x.mu.Lock()
			defer x.mu.Unlock()
			x.spans = append(x.spans, time.Since(t))
			if !p.Excluded {
				x.published = mergeSorted(x.published, pubs)
			}
			return err
		}
		if p.UntilReceived {
			return x.publishUntilReceived(ctx, spec, p)
		}
		if p.Async {
			x.wg.Add(1)
			go func() {
				defer x.wg.Done()
				if err := run(); err != nil {
					x.mu.Lock()
					x.asyncErr = append(x.asyncErr, err.Error())
					x.mu.Unlock()
				}
			}()
			return nil
		}
		if err := run(); err != nil {
			return &checks.Result{Kind: "publish", Expected: fmt.Sprintf("%d Broadcasts succeed", p.Count), Seen: err.Error()}
		}
	case st.Fault != nil:
		fw := checks.FaultWindow{Kind: st.Fault.Kind, Start: time.Now()}
		err := x.fault(ctx, st.Fault, &fw)
		if fw.End.IsZero() {
			fw.End = time.Now()
		}
		x.mu.Lock()
		x.faults = append(x.faults, fw)
		x.mu.Unlock()
		if err != nil {
			return &checks.Result{Kind: "fault " + st.Fault.Kind, Expected: "the fault is injected and the server comes back", Seen: err.Error()}
		}
	case st.Stop:
		for _, s := range x.sessions {
			s.Stop()
		}
		for _, s := range x.sessions {
			<-s.Done()
		}
	case st.Sleep > 0:
		select {
		case <-time.After(st.Sleep.D()):
		case <-ctx.Done():
		}
	default:
		return &checks.Result{Kind: "step", Expected: "a known step", Seen: fmt.Sprintf("%+v", st)}
	}
	return nil
}

func (x *execution) publishUntilReceived(ctx context.Context, spec probe.PublishSpec, p *config.Publish) *checks.Result {
	wait := p.Wait.D()
	if wait == 0 {
		wait = 2 * time.Second
	}
	tries := p.Count
	spec.Count = 1
	var got []string
	for try := 1; try <= tries; try++ {
		pubs, err := x.srv.probe.Publish(ctx, spec)
		if err != nil {
			return &checks.Result{Kind: "publish", Expected: "Broadcast succeeds", Seen: err.Error()}
		}
		x.mu.Lock()
		x.published = mergeSorted(x.published, pubs)
		x.mu.Unlock()
		all := true
		for _, s := range x.sessions {
			if !s.WaitFor(ctx, wait, func(o *driver.Observations) bool {
				for _, r := range o.Received {
					if r.GetType() == spec.Type {
						return true
					}
				}
				return false
			}) {
				all = false
			}
		}
		if all {
			return nil
		}
		got = append(got, fmt.Sprint(pubs[0].Sequence))
	}
	return &checks.Result{Kind: "publish until received", Expected: fmt.Sprintf("one of %d %s events reaches every session", tries, spec.Type),
		Seen: "none arrived (sequences " + strings.Join(got, ",") + ")"}
}

func (x *execution) waitAll(ctx context.Context, st config.Step, kind, exp string, cond func(*driver.Observations) bool, seen func(*driver.Observations) string) *checks.Result {
	deadline := time.Now().Add(x.within(st))
	for i, s := range x.sessions {
		if !s.WaitFor(ctx, time.Until(deadline), cond) {
			snap := s.Snapshot()
			msg := seen(&snap)
			if snap.Finished != nil {
				msg += fmt.Sprintf("; the call already finished: %s %q", snap.Finished.GetCode(), snap.Finished.GetMessage())
			} else if snap.RunErr != nil {
				msg += "; driver: " + snap.RunErr.Error()
			}
			return &checks.Result{Kind: kind, Expected: exp, Seen: fmt.Sprintf("session %d: %s", i+1, msg)}
		}
	}
	return nil
}

// fault injects f; for pause and disconnect, w.End is set when the harness
// starts undoing it (the process may run again before the call returns).
func (x *execution) fault(ctx context.Context, f *config.Fault, w *checks.FaultWindow) error {
	c := x.srv.c
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	switch f.Kind {
	case "restart":
		if err := c.Stop(ctx, 10*time.Second); err != nil {
			return err
		}
		pause(f.Down.D())
		return c.Start(ctx)
	case "kill":
		if err := c.Kill(ctx); err != nil {
			return err
		}
		pause(f.Down.D())
		return c.Start(ctx)
	case "graceful":
		return c.Stop(ctx, 10*time.Second)
	case "start":
		return c.Start(ctx)
	case "pause":
		if err := c.Pause(ctx); err != nil {
			return err
		}
		pause(f.Duration.D())
		w.End = time.Now()
		return c.Unpause(ctx)
	case "disconnect":
		if err := c.Disconnect(ctx); err != nil {
			return err
		}
		pause(f.Duration.D())
		w.End = time.Now()
		if err := c.Connect(ctx); err != nil {
			return err
		}
		return c.WaitReady(ctx, 20*time.Second)
	}
	return fmt.Errorf("unknown fault kind %q (restart, kill, graceful, start, pause, disconnect)", f.Kind)
}

func mergeSorted(a, b []probe.Published) []probe.Published {
	out := make([]probe.Published, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if a[i].Sequence <= b[j].Sequence {
			out = append(out, a[i])
			i++
		} else {
			out = append(out, b[j])
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}
