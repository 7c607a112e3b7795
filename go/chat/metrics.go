package chat

import (
	"runtime"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
)

// sampler turns cumulative counters (CPU seconds, requests) into rates over
// the time since its previous sample; the first sample of a stream averages
// over the process's whole life, so it is real from the start.
type sampler struct {
	stats   func() Stats
	started bool
	cpu     float64
	reqs    uint64
	at      time.Time
}

type sample struct {
	cpuPercent, rss, goroutines, reqRate, active float64
}

func (sp *sampler) take() (sample, error) {
	p, err := readProc()
	if err != nil {
		return sample{}, err
	}
	st := sp.stats()
	now := time.Now()
	elapsed, cpu, reqs := p.ageSeconds, p.cpuSeconds, float64(st.Requests)
	if sp.started {
		elapsed = now.Sub(sp.at).Seconds()
		cpu = p.cpuSeconds - sp.cpu
		reqs = float64(st.Requests - sp.reqs)
	}
	sp.started, sp.cpu, sp.reqs, sp.at = true, p.cpuSeconds, st.Requests, now
	var out sample
	if elapsed > 0 {
		out.cpuPercent = 100 * cpu / elapsed
		out.reqRate = reqs / elapsed
	}
	out.rss = p.rssBytes
	out.goroutines = float64(runtime.NumGoroutine())
	out.active = float64(st.ActiveStreams)
	return out, nil
}

func (s *Service) StreamMetrics(req *chatv1.MetricsRequest, stream chatv1.ChatService_StreamMetricsServer) error {
	if req.GetIntervalSeconds() < 0 {
		return invalid("interval_seconds must be >= 0, got %d", req.GetIntervalSeconds())
	}
	interval := time.Duration(max(1, req.GetIntervalSeconds())) * time.Second
	instance := req.GetInstanceId()
	if instance == "" {
		instance = s.instance
	}
	ctx, done := s.life.Stream(stream.Context())
	defer done()

	sp := &sampler{stats: s.stats}
	var seq uint64
	burst := func() error {
		smp, err := sp.take()
		if err != nil {
			return status.Errorf(codes.Internal, "read process metrics: %v", err)
		}
		ts := timestamppb.Now()
		for _, m := range []struct {
			name  string
			value float64
			extra map[string]string
		}{
			{"process_cpu_percent", smp.cpuPercent, nil},
			{"process_resident_memory_bytes", smp.rss, nil},
			{"process_threads", smp.goroutines, map[string]string{"kind": "goroutines"}},
			{"server_requests_per_second", smp.reqRate, nil},
			{"server_active_streams", smp.active, nil},
		} {
			labels := map[string]string{"instance_id": instance, "language": "go"}
			for k, v := range m.extra {
				labels[k] = v
			}
			seq++
			if err := stream.Send(&chatv1.Metric{Name: m.name, Value: m.value, Timestamp: ts, Labels: labels, Sequence: seq}); err != nil {
				return err
			}
		}
		return nil
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := burst(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return s.life.Err(ctx)
		case <-t.C:
		}
	}
}
