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
