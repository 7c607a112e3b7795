package checks

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/polystream/polystream/conformance/config"
	"github.com/polystream/polystream/conformance/driver"
	"github.com/polystream/polystream/conformance/probe"
	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
)

func published(seqs ...uint64) []probe.Published {
	var out []probe.Published
	for _, s := range seqs {
		out = append(out, probe.Published{ID: fmt.Sprintf("id-%d", s), Sequence: s})
	}
	return out
}

func recv(seq uint64, typ, json string) driver.Received {
	return driver.Received{At: time.Now(), Received: &pb.Received{Sequence: seq, Id: fmt.Sprintf("id-%d", seq), Type: typ, Json: json}}
}

func session(rs ...driver.Received) driver.Observations {
	return driver.Observations{Received: rs, Finished: &pb.Finished{Code: "OK"}}
}

func intp(i int) *int { return &i }

func TestSequence(t *testing.T) {
	in := &Input{Published: published(3, 5, 9)}
	cases := []struct {
		name string
		got  []uint64
		ok   bool
		seen string
	}{
		{"exact", []uint64{3, 5, 9}, true, "3 in order"},
		{"gap", []uint64{3, 9}, false, "1 missing (first 5)"},
		{"dup", []uint64{3, 5, 5, 9}, false, "1 duplicated"},
		{"reordered", []uint64{3, 9, 5}, false, "sequence 9 where 5 was due"},
		{"extra", []uint64{3, 5, 9, 10}, false, "4 received of 3"},
	}
	for _, c := range cases {
		var rs []driver.Received
		for _, s := range c.got {
			rs = append(rs, recv(s, "e", "{}"))
		}
		in.Sessions = []driver.Observations{session(rs...)}
		r := Sequence(context.Background(), in, config.Params{})
		if r.Pass != c.ok || !strings.Contains(r.Seen, c.seen) {
			t.Errorf("%s: pass=%v seen %q; want pass=%v containing %q", c.name, r.Pass, r.Seen, c.ok, c.seen)
		}
	}
	// from: the first due event.
	in.Sessions = []driver.Observations{session(recv(5, "e", "{}"), recv(9, "e", "{}"))}
	if r := Sequence(context.Background(), in, config.Params{From: 2, Count: intp(2)}); !r.Pass {
		t.Errorf("from 2: %+v", r)
	}
}

func marker(count, first, last int) driver.Received {
	return recv(0, "polystream.dropped", fmt.Sprintf(`{"type":"polystream.dropped","metadata":{"count":"%d","first_dropped_sequence":"%d","last_dropped_sequence":"%d","first_dropped_id":"id-%d","last_dropped_id":"id-%d"}}`, count, first, last, first, last))
}

func TestDrops(t *testing.T) {
	in := &Input{Published: published(1, 2, 3, 4, 5, 6)}
	in.Sessions = []driver.Observations{session(recv(1, "e", "{}"), marker(3, 2, 4), recv(5, "e", "{}"), recv(6, "e", "{}"))}
	if r := Drops(context.Background(), in, config.Params{Min: intp(3)}); !r.Pass {
		t.Errorf("accounted drops: %+v", r)
	}
	in.Sessions = []driver.Observations{session(recv(1, "e", "{}"), marker(2, 2, 3), recv(5, "e", "{}"), recv(6, "e", "{}"))}
	if r := Drops(context.Background(), in, config.Params{}); r.Pass {
		t.Errorf("wrong count passed: %+v", r)
	}
	// Two markers in a row whose ranges follow each other.
	in.Sessions = []driver.Observations{session(recv(1, "e", "{}"), marker(1, 2, 2), marker(2, 3, 4), recv(5, "e", "{}"), recv(6, "e", "{}"))}
	if r := Drops(context.Background(), in, config.Params{}); !r.Pass {
		t.Errorf("chained markers: %+v", r)
	}
	in.Sessions = []driver.Observations{session(recv(1, "e", "{}"), marker(1, 2, 2), marker(1, 4, 4), recv(5, "e", "{}"), recv(6, "e", "{}"))}
	if r := Drops(context.Background(), in, config.Params{}); r.Pass {
		t.Errorf("markers with a hole passed: %+v", r)
	}
	in.Sessions = []driver.Observations{session(recv(1, "e", "{}"), recv(5, "e", "{}"), recv(6, "e", "{}"))}
	if r := Drops(context.Background(), in, config.Params{}); r.Pass || !strings.Contains(r.Seen, "no polystream.dropped marker") {
		t.Errorf("silent loss passed: %+v", r)
	}
}

func TestBackoff(t *testing.T) {
	t0 := time.Now()
	obs := func(delays ...int64) driver.Observations {
		var o driver.Observations
		at := t0
		for _, d := range delays {
			o.All = append(o.All, driver.Obs{At: at, O: &pb.Observation{Kind: &pb.Observation_Disconnected{Disconnected: &pb.Disconnected{Code: "UNAVAILABLE", WillRetry: true, DelayMs: d}}}})
			at = at.Add(time.Duration(d) * time.Millisecond)
		}
		o.All = append(o.All, driver.Obs{At: at, O: &pb.Observation{Kind: &pb.Observation_Connected{Connected: &pb.Connected{Attempt: 1}}}})
		return o
	}
	p := config.Params{BaseMS: 100, MaxMS: 800, Multiplier: 2, Jitter: 0.2}
	in := &Input{Sessions: []driver.Observations{obs(90, 190, 400, 780, 800)}}
	if r := Backoff(context.Background(), in, p); !r.Pass {
		t.Errorf("in bounds: %+v", r)
	}
	in = &Input{Sessions: []driver.Observations{obs(100, 200, 400, 800, 990)}}
	if r := Backoff(context.Background(), in, p); r.Pass {
		t.Errorf("above max × (1 + jitter) passed: %+v", r)
	}
	in = &Input{Sessions: []driver.Observations{obs(100, 200, 250)}}
	if r := Backoff(context.Background(), in, p); r.Pass {
		t.Errorf("short delay passed: %+v", r)
	}
	// One retry checks only the base delay: a client that never grows its
	// delays (the no-backoff driver fault) would pass.
	two := 2
	p.Min = &two
	in = &Input{Sessions: []driver.Observations{obs(100)}}
	if r := Backoff(context.Background(), in, p); r.Pass || !strings.Contains(r.Seen, "fewer than 2") {
		t.Errorf("one retry passed with min 2: %+v", r)
	}
	in = &Input{Sessions: []driver.Observations{obs(100, 200)}}
	if r := Backoff(context.Background(), in, p); !r.Pass {
		t.Errorf("two retries in bounds failed with min 2: %+v", r)
	}
}

func TestStatus(t *testing.T) {
	msg := "client_id is required"
	in := &Input{Sessions: []driver.Observations{{Finished: &pb.Finished{Code: "INVALID_ARGUMENT", Message: msg}}}}
	if r := Status(context.Background(), in, config.Params{Code: "INVALID_ARGUMENT", Message: &msg}); !r.Pass {
		t.Errorf("%+v", r)
	}
	other := "client id is required"
	if r := Status(context.Background(), in, config.Params{Code: "INVALID_ARGUMENT", Message: &other}); r.Pass {
		t.Errorf("wrong message passed: %+v", r)
	}
	in = &Input{Sessions: []driver.Observations{{RunErr: fmt.Errorf("boom")}}}
	if r := Status(context.Background(), in, config.Params{Code: "OK"}); r.Pass {
		t.Errorf("driver error passed: %+v", r)
	}
}

func TestEcho(t *testing.T) {
	var rs []driver.Received
	for i := 1; i <= 3; i++ {
		rs = append(rs, recv(uint64(i), "MESSAGE_TYPE_CHAT", fmt.Sprintf(`{"content":"%d","type":"MESSAGE_TYPE_CHAT"}`, i)))
	}
	in := &Input{Sessions: []driver.Observations{session(rs...)}}
	if r := Echo(context.Background(), in, config.Params{Count: intp(3)}); !r.Pass {
		t.Errorf("%+v", r)
	}
	rs[1], rs[2] = rs[2], rs[1]
	if r := Echo(context.Background(), in, config.Params{Count: intp(3)}); r.Pass {
		t.Errorf("reordered echo passed: %+v", r)
	}
}

func TestEveryKindRegistered(t *testing.T) {
	s, err := config.Load("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range s.Cases {
		for _, e := range c.Expect {
			if Registry[e.Kind] == nil {
				t.Errorf("%s: unknown check %q", c.ID, e.Kind)
			}
		}
	}
	if len(s.Cases) < 40 {
		t.Errorf("%d cases; the suite aims for at least 40 per pair", len(s.Cases))
	}
}
