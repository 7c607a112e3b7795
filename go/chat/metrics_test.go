package chat

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

var metricNames = []string{"process_cpu_percent", "process_resident_memory_bytes", "process_threads", "server_requests_per_second", "server_active_streams"}

func TestStreamMetrics(t *testing.T) {
	e := newEnv(t, Config{Instance: "test-host", Stats: func() Stats { return Stats{Requests: 42, ActiveStreams: 3} }})
	ctx, cancel := context.WithCancel(grpctest.Context(t))
	defer cancel()
	s, err := e.client.StreamMetrics(ctx, &chatv1.MetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Two bursts: the first comes at once, the second after interval 0 = 1 s.
	var seq uint64
	for burst := range 2 {
		var ts *chatv1.Metric
		for _, name := range metricNames {
			m, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			seq++
			if m.GetName() != name || m.GetSequence() != seq || m.GetTimestamp() == nil {
				t.Fatalf("burst %d: got %v, want %s #%d", burst, m, name, seq)
			}
			if ts == nil {
				ts = m
			} else if !m.GetTimestamp().AsTime().Equal(ts.GetTimestamp().AsTime()) {
				t.Fatalf("one burst, two timestamps: %v", m)
			}
			l := m.GetLabels()
			if l["instance_id"] != "test-host" || l["language"] != "go" {
				t.Fatalf("labels %v", l)
			}
			v := m.GetValue()
			switch name {
			case "process_cpu_percent":
				if v < 0 || v > 100*float64(256) {
					t.Fatalf("cpu %v", v)
				}
			case "process_resident_memory_bytes":
				// The kernel's own figure for this (test) process.
				rss := vmRSS(t)
				if v <= 0 || v < rss/2 || v > rss*2 {
					t.Fatalf("rss %v, /proc/self/status says %v", v, rss)
				}
			case "process_threads":
				if v < 1 || l["kind"] != "goroutines" {
					t.Fatalf("goroutines %v labels %v", v, l)
				}
			case "server_requests_per_second":
				if v < 0 || (burst == 1 && v != 0) { // 42 since start, none since
					t.Fatalf("request rate %v in burst %d", v, burst)
				}
			case "server_active_streams":
				if v != 3 {
					t.Fatalf("active streams %v", v)
				}
			}
		}
	}
}

func vmRSS(t *testing.T) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb * 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// CPU time read from /proc moves when the process works.
func TestProcCPUMoves(t *testing.T) {
	before, err := readProc()
	if err != nil {
		t.Fatal(err)
	}
	if before.ageSeconds <= 0 || before.rssBytes <= 0 {
		t.Fatalf("proc %+v", before)
	}
	for {
		x := 0
		for i := range 10_000_000 {
			x += i
		}
		_ = x
		after, err := readProc()
		if err != nil {
			t.Fatal(err)
		}
		if after.cpuSeconds > before.cpuSeconds {
			return
		}
	}
}

func TestStreamMetricsBadInputAndInstance(t *testing.T) {
	e := newEnv(t, Config{})
	ctx, cancel := context.WithCancel(grpctest.Context(t))
	defer cancel()
	s, _ := e.client.StreamMetrics(ctx, &chatv1.MetricsRequest{IntervalSeconds: -1})
	_, err := grpctest.RecvAll[chatv1.Metric](s)
	grpctest.WantStatus(t, err, codes.InvalidArgument, "interval_seconds must be >= 0, got -1")

	s, _ = e.client.StreamMetrics(ctx, &chatv1.MetricsRequest{InstanceId: "mine", IntervalSeconds: 5})
	m, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if m.GetLabels()["instance_id"] != "mine" || e.svc.instance != host {
		t.Fatalf("labels %v, default instance %q", m.GetLabels(), e.svc.instance)
	}
	cancel()
	if _, err := grpctest.RecvAll[chatv1.Metric](s); err == nil {
		t.Fatal("stream did not end on cancel")
	}
}
