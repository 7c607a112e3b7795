// Package report writes the matrix's outcomes: JUnit XML for CI, a Markdown
// and an HTML matrix (client × server × check, with expected vs seen on
// failure), and the closing `N passed, N failed` line. It runs nothing.
package report

import (
	"encoding/xml"
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/polystream/polystream/conformance/runner"
)

// Totals counts outcomes: XFail counts as passed, XPass and Error as failed.
type Totals struct{ Passed, Failed, XFail, XPass, Errors int }

// Count tallies outcomes.
func Count(outs []runner.Outcome) Totals {
	var t Totals
	for _, o := range outs {
		switch o.Status {
		case runner.Pass:
			t.Passed++
		case runner.XFail:
			t.Passed++
			t.XFail++
		case runner.XPass:
			t.Failed++
			t.XPass++
		case runner.Error:
			t.Failed++
			t.Errors++
		default:
			t.Failed++
		}
	}
	return t
}

// ClosingLine is the run's last line.
func ClosingLine(outs []runner.Outcome) string {
	t := Count(outs)
	return fmt.Sprintf("%d passed, %d failed", t.Passed, t.Failed)
}

// Write writes junit.xml, matrix.md and matrix.html into dir.
func Write(dir string, outs []runner.Outcome, took time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, f := range map[string]func(io.Writer, []runner.Outcome, time.Duration) error{
		"junit.xml":   JUnit,
		"matrix.md":   Markdown,
		"matrix.html": HTML,
	} {
		fh, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		err = f(fh, outs, took)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// detail is the failure text of an outcome: each failing check, expected vs seen.
func detail(o runner.Outcome) string {
	var b strings.Builder
	if o.Error != "" {
		fmt.Fprintf(&b, "error: %s\n", o.Error)
	}
	for _, r := range o.Results {
		if !r.Pass {
			fmt.Fprintf(&b, "%s: expected %s; seen %s\n", r.Kind, r.Expected, r.Seen)
		}
	}
	if o.Status == runner.XPass {
		fmt.Fprintf(&b, "listed in known_failing.yaml (%s) but passed: remove the entry\n", o.KnownFailing)
	}
	return b.String()
}

type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Tests   int          `xml:"tests,attr"`
	Fails   int          `xml:"failures,attr"`
	Errors  int          `xml:"errors,attr"`
	Time    string       `xml:"time,attr"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name    string      `xml:"name,attr"`
	Tests   int         `xml:"tests,attr"`
	Fails   int         `xml:"failures,attr"`
	Errors  int         `xml:"errors,attr"`
	Skipped int         `xml:"skipped,attr"`
	Time    string      `xml:"time,attr"`
	Cases   []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Body    string `xml:",chardata"`
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// JUnit writes one testsuite per client × server pair, one testcase per case.
func JUnit(w io.Writer, outs []runner.Outcome, took time.Duration) error {
	idx := map[string]int{}
	root := junitSuites{Time: secs(took)}
	for _, o := range outs {
		name := o.Client + " client × " + o.Server + " server"
		i, ok := idx[name]
		if !ok {
			i = len(root.Suites)
			idx[name] = i
			root.Suites = append(root.Suites, junitSuite{Name: name})
		}
		s := &root.Suites[i]
		tc := junitCase{Name: o.CaseID, Classname: "conformance." + o.Client + "." + o.Server, Time: secs(o.Duration)}
		var lines []string
		for _, r := range o.Results {
			mark := "ok  "
			if !r.Pass {
				mark = "FAIL"
			}
			lines = append(lines, fmt.Sprintf("%s %s: expected %s; seen %s", mark, r.Kind, r.Expected, r.Seen))
		}
		if o.KnownFailing != "" {
			lines = append(lines, "known failing: "+o.KnownFailing)
		}
		tc.SystemOut = strings.Join(lines, "\n")
		switch o.Status {
		case runner.Fail, runner.XPass:
			msg := detail(o)
			tc.Failure = &junitMessage{Message: firstLine(msg), Body: msg + "\n--- server output ---\n" + o.ServerLogs}
			s.Fails++
			root.Fails++
		case runner.Error:
			tc.Error = &junitMessage{Message: firstLine(o.Error), Body: o.Error}
			s.Errors++
			root.Errors++
		}
		s.Tests++
		root.Tests++
		s.Cases = append(s.Cases, tc)
	}
	for i := range root.Suites {
		var d time.Duration
		for _, o := range outs {
			if o.Client+" client × "+o.Server+" server" == root.Suites[i].Name {
				d += o.Duration
			}
		}
		root.Suites[i].Time = secs(d)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(root); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// grid organises outcomes as case × pair.
type grid struct {
	pairs []string // "client → server"
	cases []string
	cell  map[string]map[string]runner.Outcome
	doc   map[string]string
}

func makeGrid(outs []runner.Outcome) grid {
	g := grid{cell: map[string]map[string]runner.Outcome{}, doc: map[string]string{}}
	seenPair := map[string]bool{}
	for _, o := range outs {
		p := o.Client + " → " + o.Server
		if !seenPair[p] {
			seenPair[p] = true
			g.pairs = append(g.pairs, p)
		}
		if g.cell[o.CaseID] == nil {
			g.cell[o.CaseID] = map[string]runner.Outcome{}
			g.cases = append(g.cases, o.CaseID)
			if o.Case != nil {
				g.doc[o.CaseID] = strings.TrimSpace(o.Case.Doc)
			}
		}
		g.cell[o.CaseID][p] = o
	}
	sort.Strings(g.pairs)
	return g
}

func mark(s runner.Status) string {
	switch s {
	case runner.Pass:
		return "✅ pass"
	case runner.XFail:
		return "⚠️ known failing"
	case runner.XPass:
		return "❌ passed but listed as failing"
	case runner.Error:
		return "💥 error"
	}
	return "❌ fail"
}

// Markdown writes the matrix and, below it, every failure's expected vs seen.
func Markdown(w io.Writer, outs []runner.Outcome, took time.Duration) error {
	g := makeGrid(outs)
	t := Count(outs)
	var b strings.Builder
	fmt.Fprintf(&b, "# Conformance matrix\n\n%d cases × pairs in %v: **%d passed, %d failed** (%d known failing, %d errors).\n\n",
		len(outs), took.Round(time.Second), t.Passed, t.Failed, t.XFail, t.Errors)
	b.WriteString("Rows are checks (`cases/<file>.yaml`, name); columns are client → server.\n\n")
	b.WriteString("| check | " + strings.Join(g.pairs, " | ") + " |\n|---|" + strings.Repeat("---|", len(g.pairs)) + "\n")
	for _, c := range g.cases {
		b.WriteString("| `" + c + "` |")
		for _, p := range g.pairs {
			o, ok := g.cell[c][p]
			if !ok {
				b.WriteString(" – |")
				continue
			}
			b.WriteString(" " + mark(o.Status) + " |")
		}
		b.WriteString("\n")
	}
	var fails []runner.Outcome
	for _, o := range outs {
		if o.Status != runner.Pass {
			fails = append(fails, o)
		}
	}
	if len(fails) > 0 {
		b.WriteString("\n## Failures and known failures\n\n")
		for _, o := range fails {
			fmt.Fprintf(&b, "### `%s` — %s client → %s server: %s\n\n", o.CaseID, o.Client, o.Server, mark(o.Status))
			if o.KnownFailing != "" {
				fmt.Fprintf(&b, "Known failing: %s\n\n", o.KnownFailing)
			}
			b.WriteString("```\n" + detail(o) + "```\n\n")
		}
	}
	var loads []runner.Outcome
	for _, o := range outs {
		if o.Load != nil {
			loads = append(loads, o)
		}
	}
	if len(loads) > 0 {
		b.WriteString("\n## ghz load\n\n| case | pair | load |\n|---|---|---|\n")
		for _, o := range loads {
			fmt.Fprintf(&b, "| `%s` | %s → %s | %s |\n", o.CaseID, o.Client, o.Server, o.Load.String())
		}
	}
	fmt.Fprintf(&b, "\n%s\n", ClosingLine(outs))
	_, err := io.WriteString(w, b.String())
	return err
}

// HTML writes the same matrix as a page; a cell's title and the list below
// give expected vs seen.
func HTML(w io.Writer, outs []runner.Outcome, took time.Duration) error {
	g := makeGrid(outs)
	t := Count(outs)
	var b strings.Builder
	b.WriteString(`<!doctype html><html><head><meta charset="utf-8"><title>polystream conformance matrix</title><style>
body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
td.pass{background:#dfd}td.fail,td.xpass,td.error{background:#fdd}td.xfail{background:#ffd}pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}
td.case{font-family:monospace}</style></head><body>`)
	fmt.Fprintf(&b, "<h1>Conformance matrix</h1><p>%d cases × pairs in %v: <b>%d passed, %d failed</b> (%d known failing, %d errors).</p>",
		len(outs), took.Round(time.Second), t.Passed, t.Failed, t.XFail, t.Errors)
	b.WriteString("<table><tr><th>check</th>")
	for _, p := range g.pairs {
		b.WriteString("<th>" + html.EscapeString(p) + "</th>")
	}
	b.WriteString("</tr>")
	for _, c := range g.cases {
		fmt.Fprintf(&b, `<tr><td class="case" title="%s">%s</td>`, html.EscapeString(g.doc[c]), html.EscapeString(c))
		for _, p := range g.pairs {
			o, ok := g.cell[c][p]
			if !ok {
				b.WriteString("<td>–</td>")
				continue
			}
			title := detail(o)
			if title == "" {
				var seen []string
				for _, r := range o.Results {
					seen = append(seen, r.Kind+": "+r.Seen)
				}
				title = strings.Join(seen, "\n")
			}
			fmt.Fprintf(&b, `<td class="%s" title="%s">%s</td>`, o.Status, html.EscapeString(title), html.EscapeString(mark(o.Status)))
		}
		b.WriteString("</tr>")
	}
	b.WriteString("</table>")
	first := true
	for _, o := range outs {
		if o.Status == runner.Pass {
			continue
		}
		if first {
			b.WriteString("<h2>Failures and known failures</h2>")
			first = false
		}
		fmt.Fprintf(&b, "<h3>%s — %s client → %s server: %s</h3>", html.EscapeString(o.CaseID), html.EscapeString(o.Client), html.EscapeString(o.Server), html.EscapeString(mark(o.Status)))
		if o.KnownFailing != "" {
			b.WriteString("<p>Known failing: " + html.EscapeString(o.KnownFailing) + "</p>")
		}
		b.WriteString("<pre>" + html.EscapeString(detail(o)) + "</pre>")
		if o.ServerLogs != "" {
			b.WriteString("<details><summary>server output</summary><pre>" + html.EscapeString(o.ServerLogs) + "</pre></details>")
		}
	}
	b.WriteString("<p>" + html.EscapeString(ClosingLine(outs)) + "</p></body></html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
