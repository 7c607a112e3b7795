package conformancedriver

import (
	"fmt"
	"strings"
)

// Fault makes the driver deliberately defective, so that the conformance
// self-test can prove each client-side check fails against a bad client
// (docs/contract.md, "Driver faults (self-test only)"). "" = no fault.
type Fault string

const (
	// FaultNoDeadline ignores deadline_ms: every call is made without one.
	FaultNoDeadline Fault = "no-deadline"
	// FaultRetryAll makes the resilient subscriber retry every status.
	FaultRetryAll Fault = "retry-all"
	// FaultNoBackoff makes every reconnect delay exactly base_ms.
	FaultNoBackoff Fault = "no-backoff"
	// FaultBlind sends no keepalive pings and turns the heartbeat watchdog off.
	FaultBlind Fault = "blind"
)

// Faults are the names --fault accepts, in the order the refusal lists them.
var Faults = []Fault{FaultNoDeadline, FaultRetryAll, FaultNoBackoff, FaultBlind}

// FaultBanner is logged (to stderr) by a driver started with a fault.
const FaultBanner = "SELF-TEST FAULT ACTIVE: this driver is deliberately defective"

// ParseFault checks a --fault value; "" is no fault. The error is the exact
// refusal of docs/contract.md, shared with the Python driver.
func ParseFault(name string) (Fault, error) {
	if name == "" {
		return "", nil
	}
	names := make([]string, len(Faults))
	for i, f := range Faults {
		if string(f) == name {
			return f, nil
		}
		names[i] = string(f)
	}
	return "", fmt.Errorf(`--fault must be one of %s; got "%s"`, strings.Join(names, ", "), name)
}
