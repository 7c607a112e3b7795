package events

import "fmt"

// Policy says what happens when a subscriber's queue is full
// (docs/contract.md, "Backpressure").
type Policy int

const (
	// Disconnect ends the slow subscriber's stream with RESOURCE_EXHAUSTED;
	// it resumes from its last event id. It is the default (the zero value).
	Disconnect Policy = iota
	// DropNewest refuses the new event.
	DropNewest
	// DropOldest evicts the subscriber's oldest queued event.
	DropOldest
	// Block makes the publisher wait for room, up to Config.PublishTimeout,
	// then disconnects the subscriber as Disconnect does.
	Block
)

var policyNames = map[Policy]string{
	DropNewest: "drop-newest",
	DropOldest: "drop-oldest",
	Block:      "block",
	Disconnect: "disconnect",
}

// ParsePolicy reads a --backpressure value.
func ParsePolicy(s string) (Policy, error) {
	for p, name := range policyNames {
		if name == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown backpressure policy %q (want drop-newest, drop-oldest, block or disconnect)", s)
}

func (p Policy) String() string {
	if name, ok := policyNames[p]; ok {
		return name
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}
