package events

// Self-test faults: deliberate defects for the conformance harness's
// self-test only (conformance/selftest.yaml; semantics in docs/contract.md,
// "Fault modes (self-test only)"). Each proves that a check notices the
// defect. None is active unless Config.Fault names it (`--fault`); every
// use of a fault in this package goes through this file.

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// The faults this package implements.
const (
	FaultReorder       = "reorder"        // swap every 100th log event of a stream with the next one
	FaultDrop          = "drop"           // skip every 100th log event of a stream, no marker
	FaultIgnoreCancel  = "ignore-cancel"  // a stream whose context ended stays counted as active
	FaultForgetHistory = "forget-history" // the log ignores DataDir: memory store, nothing kept across restarts
	FaultNoHeartbeat   = "no-heartbeat"   // streams send no heartbeat events at all
)

// Faults lists the accepted Config.Fault values ("" = none).
var Faults = []string{FaultReorder, FaultDrop, FaultIgnoreCancel, FaultForgetHistory, FaultNoHeartbeat}

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
