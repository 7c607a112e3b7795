package updates

import (
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

func (s *Service) TailLogs(req *updatesv1.LogRequest, stream updatesv1.StreamService_TailLogsServer) error {
	level := req.GetLogLevel()
	if level == "" {
		level = "debug"
	}
	minRank, ok := levelRank[level]
	if !ok {
		return invalid("log_level must be one of debug, info, warn, error; got %q", req.GetLogLevel())
	}
	if req.GetLines() < 0 {
		return invalid("lines must be >= 0, got %d", req.GetLines())
	}
	match := func(r *logRecord) bool {
		return levelRank[r.level] >= minRank && (req.GetServiceName() == "" || r.service == req.GetServiceName())
	}
	ctx, done := s.life.Stream(stream.Context())
	defer done()

	var seq uint64
	send := func(r *logRecord) error {
		seq++
		return stream.Send(&updatesv1.LogEntry{
			Timestamp: timestamppb.New(r.time),
			Level:     r.level,
			Message:   r.message,
			Service:   r.service,
			Fields:    r.fields,
			Sequence:  seq,
		})
	}

	// The past records and the follow cursor come from one snapshot, so
	// following continues exactly where the history ended.
	past, next, changed := s.logs.since(0)
	if n := int(req.GetLines()); n > 0 {
		var picked []*logRecord
		for i := len(past) - 1; i >= 0 && len(picked) < n; i-- {
			if match(&past[i]) {
				picked = append(picked, &past[i])
			}
		}
		for i := len(picked) - 1; i >= 0; i-- {
			if err := send(picked[i]); err != nil {
				return err
			}
		}
	}
	if !req.GetFollow() {
		return nil
	}
	// Headers tell a following client that records logged from now on reach
	// it (the first Send carried them if history was sent).
	if seq == 0 {
		if err := stream.SendHeader(metadata.MD{}); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return s.life.Err(ctx)
		case <-changed:
		}
		var recs []logRecord
		recs, next, changed = s.logs.since(next)
		for i := range recs {
			if match(&recs[i]) {
				if err := send(&recs[i]); err != nil {
					return err
				}
			}
		}
	}
}
