package config

import "testing"

func TestLoadSuite(t *testing.T) {
	s, err := Load("..")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Implementations) < 2 {
		t.Errorf("%d implementations", len(s.Implementations))
	}
	for _, c := range s.Cases {
		if c.Doc == "" {
			t.Errorf("%s has no doc", c.ID)
		}
	}
}

func TestKnownFailingMatches(t *testing.T) {
	k := KnownFailing{Case: "backpressure/*", Client: "python", Reason: "x"}
	if !k.Matches("backpressure/drop-oldest-markers", "python", "go") {
		t.Error("glob did not match")
	}
	if k.Matches("backpressure/drop-oldest-markers", "go", "go") {
		t.Error("matched another client")
	}
}

// Every case of the matrix, under-load variants included, must be shown red
// against some fault by the self-test: a check that cannot fail proves nothing.
func TestEveryCaseHasASelfTest(t *testing.T) {
	s, err := Load("..")
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, st := range s.SelfTests {
		for _, id := range st.Cases {
			covered[id] = true
		}
	}
	for _, id := range s.RunIDs() {
		if !covered[id] {
			t.Errorf("%s is in no self-test: give it a fault in conformance/selftest.yaml", id)
		}
	}
}
