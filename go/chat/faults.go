package chat

// Conformance faults: for the harness only (docs/contract.md, "Fault modes
// (self-test only)"). None is active unless Config.Fault names it
// (`--fault`); every use of a fault in this package goes through this file.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// FaultSlowReader is `slow-reader=<ms>`: UploadMessages waits that many
// milliseconds before reading each message, so an uploader is held back by
// HTTP/2 flow control at a steady rate.
const FaultSlowReader = "slow-reader"

// MaxSlowReader bounds slow-reader's delay.
const MaxSlowReader = 60 * time.Second

// ParseSlowReader reads `slow-reader=<ms>`: ok is false when fault is not a
// slow-reader fault at all; err says what is wrong with one that is.
func ParseSlowReader(fault string) (delay time.Duration, ok bool, err error) {
	arg, found := strings.CutPrefix(fault, FaultSlowReader+"=")
	if !found {
		if fault == FaultSlowReader {
			return 0, true, fmt.Errorf("--fault %s=<ms> needs milliseconds between 1 and %d, got %q", FaultSlowReader, MaxSlowReader.Milliseconds(), fault)
		}
		return 0, false, nil
	}
	ms, convErr := strconv.Atoi(arg)
	if convErr != nil || ms < 1 || time.Duration(ms)*time.Millisecond > MaxSlowReader {
		return 0, true, fmt.Errorf("--fault %s=<ms> needs milliseconds between 1 and %d, got %q", FaultSlowReader, MaxSlowReader.Milliseconds(), fault)
	}
	return time.Duration(ms) * time.Millisecond, true, nil
}

// slowRead waits before an upload's next read under slow-reader (at once
// otherwise); false when ctx ended first.
func (s *Service) slowRead(ctx context.Context) bool {
	if s.slowReader <= 0 {
		return true
	}
	t := time.NewTimer(s.slowReader)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
