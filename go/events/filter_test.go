package events

import (
	"strings"
	"testing"
)

func TestFilterMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, typ string
		want         bool
	}{
		{"user.*", "user.created", true},
		{"user.*", "user", false},
		{"user.*", "user.created.late", false},
		{"*", "user", true},
		{"*", "user.created", false},
		{"**", "anything.at.all", true},
		{"**", "x", true},
		{"**.error", "error", true},
		{"**.error", "system.db.error", true},
		{"**.error", "system.db.errors", false},
		{"system.**", "system", true},
		{"system.**", "system.db.error", true},
		{"system.**", "systems.db", false},
		{"a.**.z", "a.z", true},
		{"a.**.z", "a.b.c.z", true},
		{"a.**.z", "a.b.c.y", false},
		{"a.*.**.z", "a.z", false},
		{"a.*.**.z", "a.b.z", true},
		{"**.b.**", "a.b.c", true},
		{"**.b.**", "b", true},
		{"**.b.**", "a.c", false},
		{"User.*", "user.created", false}, // case-sensitive
		{"user.created", "user.created", true},
		{"**.**.**.**.**.x", strings.Repeat("a.", 60) + "y", false}, // no exponential blow-up
	} {
		f, err := compileFilter([]string{tc.pattern})
		if err != nil {
			t.Fatal(err)
		}
		if got := f.match(strings.Split(tc.typ, ".")); got != tc.want {
			t.Errorf("%q matches %q = %v, want %v", tc.pattern, tc.typ, got, tc.want)
		}
	}
}

func TestFilterEmptyMatchesAllAndAnyPatternMatches(t *testing.T) {
	f, _ := compileFilter(nil)
	if !f.match([]string{"whatever"}) {
		t.Error("empty filter must match everything")
	}
	f, _ = compileFilter([]string{"a.*", "b"})
	if !f.match([]string{"b"}) || !f.match([]string{"a", "x"}) || f.match([]string{"c"}) {
		t.Error("a filter matches when any of its patterns does")
	}
}

func TestFilterRejectsEmptySegments(t *testing.T) {
	for pattern, want := range map[string]string{
		"a..b": `invalid event type pattern "a..b": empty segment`,
		"":     `invalid event type pattern "": empty segment`,
		".a":   `invalid event type pattern ".a": empty segment`,
		"a.":   `invalid event type pattern "a.": empty segment`,
	} {
		_, err := compileFilter([]string{"ok", pattern})
		if err == nil || err.Error() != want {
			t.Errorf("%q: got %v, want %s", pattern, err, want)
		}
	}
}
