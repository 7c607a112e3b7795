package events

// Self-test faults: deliberate defects for the conformance harness's
// self-test only (conformance/selftest.yaml; semantics in docs/contract.md,
// "Fault modes (self-test only)"). Each proves that a check notices the
// defect. None is active unless Config.Fault names it (`--fault`); every
// use of a fault in this package goes through this file.

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
)

// The faults this package implements.
const (
	FaultReorder       = "reorder"        // swap every 100th log event of a stream with the next one
	FaultDrop          = "drop"           // skip every 100th log event of a stream, no marker
	FaultIgnoreCancel  = "ignore-cancel"  // a stream whose context ended stays counted as active
	FaultForgetHistory = "forget-history" // the log ignores DataDir: memory store, nothing kept across restarts
	FaultNoHeartbeat   = "no-heartbeat"   // streams send no heartbeat events at all

	FaultUnknownClientNotFound = "unknown-client-not-found" // GetConnectionStatus of a client without streams is NOT_FOUND
	FaultDuplicateBroadcast    = "duplicate-broadcast"      // a repeated publisher id is appended again under a fresh id
	FaultNoReplayGap           = "no-replay-gap"            // a resume from an unknown id sends no replay_gap event
	FaultMiscountDrops         = "miscount-drops"           // every dropped marker's count is one too low
	FaultUnboundedQueue        = "unbounded-queue"          // subscriber queues ignore QueueSize: never full
)

// Faults lists the accepted Config.Fault values ("" = none).
var Faults = []string{FaultReorder, FaultDrop, FaultIgnoreCancel, FaultForgetHistory, FaultNoHeartbeat,
	FaultUnknownClientNotFound, FaultDuplicateBroadcast, FaultNoReplayGap, FaultMiscountDrops, FaultUnboundedQueue}

const (
	// faultEvery: reorder and drop act on a stream's 100th, 200th, ... log event.
	faultEvery = 100
	// reorderHoldMax: a held event with no next event within this long is
	// sent alone, so a stream's last event is late, not lost.
	reorderHoldMax = time.Second
)

// checkFault refuses an unknown fault name.
func checkFault(name string) error {
	if name == "" || slices.Contains(Faults, name) {
		return nil
	}
	return fmt.Errorf("events: fault must be one of %s; got %q", strings.Join(Faults, ", "), name)
}

// storeDataDir is the data directory the log really uses.
func storeDataDir(cfg Config) string {
	if cfg.Fault == FaultForgetHistory {
		return ""
	}
	return cfg.DataDir
}

// keepCancelled tells whether a stream whose context ended keeps its place
// in GetConnectionStatus (ignore-cancel).
func (s *Service) keepCancelled() bool { return s.fault == FaultIgnoreCancel }

// sendsHeartbeats tells whether streams send heartbeat events (not with
// no-heartbeat; everything else, the heartbeat timer included, is unchanged).
func (s *Service) sendsHeartbeats() bool { return s.fault != FaultNoHeartbeat }

// unknownClient is GetConnectionStatus's answer for st: st itself, or
// NOT_FOUND for a client without open streams under unknown-client-not-found.
func (s *Service) unknownClient(st *eventsv1.ConnectionStatus) (*eventsv1.ConnectionStatus, error) {
	if s.fault == FaultUnknownClientNotFound && !st.Connected {
		return nil, status.Errorf(codes.NotFound, "client %q not found", st.ClientId)
	}
	return st, nil
}

// appendsRepeatedIDs tells whether publish appends an event whose id is
// already in the log again, under a fresh id (duplicate-broadcast), instead
// of answering with the original.
func appendsRepeatedIDs(fault string) bool { return fault == FaultDuplicateBroadcast }

// replayGap is the gap event a resume sends: none under no-replay-gap (the
// replay itself is unchanged).
func (s *Service) replayGap(gap *replayGap) *replayGap {
	if s.fault == FaultNoReplayGap {
		return nil
	}
	return gap
}

// miscountsDrops tells whether drop markers under-count (miscount-drops).
func (s *Service) miscountsDrops() bool { return s.fault == FaultMiscountDrops }

// markerCount is the count a polystream.dropped marker reports: one less
// than the events it stands for under miscount-drops (ids, sequences and
// events_dropped unchanged).
func (d *delivery) markerCount(m *dropMarker) uint64 {
	if d.miscountDrops {
		return m.count - 1
	}
	return m.count
}

// subscriberQueueSize is the size of each subscriber's queue: unlimited
// under unbounded-queue, so it never fills and no policy ever acts (the
// queue's buffer grows on demand, it is not allocated up front).
func (s *Service) subscriberQueueSize() int {
	if s.fault == FaultUnboundedQueue {
		return math.MaxInt
	}
	return s.queueSize
}

// newFaultDelivery returns the reorder/drop state of one stream, or nil
// when neither fault is active (the normal path pays one nil check).
func newFaultDelivery(fault string) *faultDelivery {
	if fault != FaultReorder && fault != FaultDrop {
		return nil
	}
	return &faultDelivery{fault: fault}
}

// faultDelivery counts a stream's log events (replay and live) on their
// way to Send and applies reorder or drop.
type faultDelivery struct {
	fault string
	n     uint64      // log events that reached the stream's send path
	held  *record     // reorder: the event waiting for its successor
	timer *time.Timer // reorder: reorderHoldMax after held was set
}

// pass returns the records to send now, in order, for the next log event r.
func (f *faultDelivery) pass(r *record) []*record {
	f.n++
	if f.fault == FaultDrop {
		if f.n%faultEvery == 0 {
			return nil
		}
		return []*record{r}
	}
	if f.held != nil {
		held := f.release()
		return []*record{r, held}
	}
	if f.n%faultEvery == 0 {
		f.held = r
		if f.timer == nil {
			f.timer = time.NewTimer(reorderHoldMax)
		} else {
			f.timer.Reset(reorderHoldMax)
		}
		return nil
	}
	return []*record{r}
}

// release takes the held event (nil if none) and stops its timer.
func (f *faultDelivery) release() *record {
	if f == nil || f.held == nil {
		return nil
	}
	held := f.held
	f.held = nil
	f.timer.Stop()
	return held
}

// holdExpired fires when a held event has waited reorderHoldMax; nil (never
// ready) when nothing is held.
func (f *faultDelivery) holdExpired() <-chan time.Time {
	if f == nil || f.held == nil {
		return nil
	}
	return f.timer.C
}

// stop frees the timer when the stream ends.
func (f *faultDelivery) stop() {
	if f != nil && f.timer != nil {
		f.timer.Stop()
	}
}
