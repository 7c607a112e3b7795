package events

import (
	"fmt"
	"strings"
)

// filter holds a subscription's compiled type patterns; no patterns
// matches every type.
type filter struct {
	patterns [][]string // each pattern split on "."
}

// compileFilter checks and splits the patterns once, so that matching on
// the publish path does not allocate.
func compileFilter(patterns []string) (filter, error) {
	var f filter
	for _, p := range patterns {
		segs := strings.Split(p, ".")
		for _, s := range segs {
			if s == "" {
				// "" itself is one empty segment, so it gets the same message.
				return filter{}, fmt.Errorf("invalid event type pattern %q: empty segment", p)
			}
		}
		f.patterns = append(f.patterns, segs)
	}
	return f, nil
}

// match reports whether a type (already split on ".") passes the filter.
func (f filter) match(typeSegs []string) bool {
	if len(f.patterns) == 0 {
		return true
	}
	for _, p := range f.patterns {
		if matchSegments(p, typeSegs) {
			return true
		}
	}
	return false
}

// matchSegments is glob matching over segments: "*" is exactly one segment,
// "**" zero or more. It backtracks only to the last "**" (like the classic
// wildcard algorithm), so a hostile pattern costs O(len(p)*len(t)), never
// exponential time.
func matchSegments(p, t []string) bool {
	pi, ti := 0, 0
	star, mark := -1, 0 // last "**" seen in p, and where in t it started
	for ti < len(t) {
		switch {
		case pi < len(p) && p[pi] == "**":
			star, mark = pi, ti
			pi++
		case pi < len(p) && (p[pi] == "*" || p[pi] == t[ti]):
			pi++
			ti++
		case star >= 0:
			// Let the last "**" swallow one more segment and retry.
			mark++
			pi, ti = star+1, mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == "**" {
		pi++
	}
	return pi == len(p)
}
