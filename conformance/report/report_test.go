package report

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/polystream/polystream/conformance/checks"
	"github.com/polystream/polystream/conformance/runner"
)

func outcomes() []runner.Outcome {
	return []runner.Outcome{
		{CaseID: "ordering/a", Client: "go", Server: "python", Status: runner.Pass, Results: []checks.Result{{Kind: "status", Pass: true, Expected: "OK", Seen: "OK"}}},
		{CaseID: "ordering/a", Client: "python", Server: "go", Status: runner.Fail, Results: []checks.Result{{Kind: "sequence", Expected: "1..3", Seen: "1,3"}}},
		{CaseID: "errors/b", Client: "go", Server: "go", Status: runner.XFail, KnownFailing: "not yet"},
		{CaseID: "errors/b", Client: "python", Server: "go", Status: runner.XPass, KnownFailing: "not yet"},
		{CaseID: "errors/c", Client: "python", Server: "python", Status: runner.Error, Error: "image missing"},
	}
}

func TestClosingLine(t *testing.T) {
	if got := ClosingLine(outcomes()); got != "2 passed, 3 failed" {
		t.Fatalf("closing line %q", got)
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, outcomes(), time.Second); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "junit.xml"))
	if err != nil {
		t.Fatal(err)
	}
	var s junitSuites
	if err := xml.Unmarshal(b, &s); err != nil {
		t.Fatalf("junit.xml does not parse: %v", err)
	}
	if s.Tests != 5 || s.Fails != 2 || s.Errors != 1 {
		t.Errorf("junit totals tests=%d failures=%d errors=%d", s.Tests, s.Fails, s.Errors)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "matrix.md"))
	for _, want := range []string{"| `ordering/a` |", "expected 1..3; seen 1,3", "remove the entry", "2 passed, 3 failed\n"} {
		if !bytes.Contains(md, []byte(want)) {
			t.Errorf("matrix.md lacks %q", want)
		}
	}
	h, _ := os.ReadFile(filepath.Join(dir, "matrix.html"))
	if !strings.Contains(string(h), `class="fail"`) || !strings.Contains(string(h), "image missing") {
		t.Errorf("matrix.html lacks the failure")
	}
}
