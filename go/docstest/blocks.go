// Package docstest runs the shell examples of the docs: every ```sh block of
// docs/*.md and docs/patterns/*.md, against a fresh server per page, once
// with the Go server and CLI and once with the Python ones.
package docstest

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// block is one ```sh fenced block of a page.
type block struct {
	line   int // of the opening fence, 1-based
	script string
}

// page is a docs page with its shell blocks.
type page struct {
	path   string // relative to the repository root
	blocks []block
}

// findPages returns the pages under repo's docs/ and docs/patterns/ that
// have at least one ```sh block, in name order.
func findPages(repo string) ([]page, error) {
	var pages []page
	for _, pattern := range []string{"docs/*.md", "docs/patterns/*.md"} {
		paths, err := filepath.Glob(filepath.Join(repo, pattern))
		if err != nil {
			return nil, err
		}
		for _, path := range paths {
			blocks, err := shellBlocks(path)
			if err != nil {
				return nil, err
			}
			if len(blocks) > 0 {
				rel, _ := filepath.Rel(repo, path)
				pages = append(pages, page{path: rel, blocks: blocks})
			}
		}
	}
	return pages, nil
}

// shellBlocks extracts the ```sh blocks of a Markdown file. Other fences
// (```text, ```go, ...) are documentation only.
func shellBlocks(path string) ([]block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var blocks []block
	var current *block
	var body strings.Builder
	lines := bufio.NewScanner(f)
	for n := 1; lines.Scan(); n++ {
		text := lines.Text()
		trimmed := strings.TrimSpace(text)
		switch {
		case current == nil && trimmed == "```sh":
			current = &block{line: n}
			body.Reset()
		case current != nil && trimmed == "```":
			current.script = body.String()
			blocks = append(blocks, *current)
			current = nil
		case current != nil:
			body.WriteString(text)
			body.WriteByte('\n')
		}
	}
	return blocks, lines.Err()
}
